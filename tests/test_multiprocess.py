"""Two-process data-parallel training (torchrun, gloo on CPU): one run folder, one shared stop decision."""

import json
import shutil
import subprocess
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys
    from sftscope.data import Pair
    from sftscope.stopping import StageRule
    from sftscope.models import load_model_and_tokenizer
    from sftscope.monitor import InteractionMonitor
    from sftscope.config import config_from_dict
    from sftscope.train import build_trainer

    out, model_dir, data = sys.argv[1:4]
    model, tok = load_model_and_tokenizer(model_dir)
    config = config_from_dict({"output_dir": out, "model": model_dir, "batch_size": 2, "max_steps": 8,
        "checkpoint_every": 100, "learning_rate": 0.05, "max_length": 64, "lora": {"r": 2, "alpha": 4},
        "data": {"train": data, "test_ratio": 0.25, "max_train_examples": None}})
    probes = [Pair("classify emotion : we won the game today so", "joy")]
    monitor = InteractionMonitor(tok, probes, steps=range(9), n_players=3, stop_early=True, patience=1,
                                 rule=StageRule("cumulative", 0.0), stop_rule="cumulative_live")
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    monitor.attach(trainer)
    trainer.train()
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump({"step": trainer.state.global_step, "extracted": len(monitor.frames)}, f)
''')


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="needs torchrun")
def test_two_ranks_stop_at_the_same_step(tmp_path, tiny_llama, word_tokenizer):
    model_dir = tmp_path / "model"
    tiny_llama.save_pretrained(model_dir)
    word_tokenizer.save_pretrained(model_dir)
    rows = [{"prompt": f"classify emotion : we won the game today {w}", "completion": "joy"} for w in ("so", "very", "!")]
    rows += [{"prompt": f"classify emotion : my flight got cancelled {w}", "completion": "anger"} for w in ("so", "today", "!")]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT, encoding="utf-8")
    out = tmp_path / "run"
    out.mkdir()
    done = subprocess.run(
        [shutil.which("torchrun"), "--nproc_per_node", "2", str(script), str(out), str(model_dir), str(data)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] < 8  # stopped early, together
    assert ranks[0]["extracted"] > 0 and ranks[1]["extracted"] == 0  # only rank 0 extracts
    assert not (out / ".sftscope.lock").exists()
