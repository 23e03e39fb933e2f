"""Never lose or silently reuse the user's work: every fault is one line and exit 2, before any training."""

import json
import os
import resource
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from sftscope.config import AnalysisSettings

from sftscope.cli import main
from sftscope.store import RunFolder, load_effects


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama, word_tokenizer):
    root = tmp_path_factory.mktemp("safety")
    model = root / "tiny-model"
    tiny_llama.save_pretrained(model)
    word_tokenizer.save_pretrained(model)
    rows = [{"prompt": f"classify emotion : we won the game today {w}", "completion": "joy"} for w in ("so", "very")]
    rows += [{"prompt": f"classify emotion : my flight got cancelled again {w}", "completion": "anger"}
             for w in ("so", "today")]
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root, model, data


def train_raw(setup, **overrides):
    root, model, data = setup
    raw = {"model": str(model), "batch_size": 2, "max_steps": 2, "checkpoint_every": 2, "max_length": 64,
           "lora": {"r": 2, "alpha": 4}, "data": {"train": str(data), "test_ratio": 0.5, "max_train_examples": None}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def write_yaml(path, raw):
    import yaml

    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
    return path


def run_cli(args, capsys, cwd=None):
    here = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        status = main(args)
    finally:
        os.chdir(here)
    captured = capsys.readouterr()
    run_cli.stdout = captured.out
    return status, captured.err.strip().splitlines()


# Each case: (name, builds (args, folder that must stay untrained) from (tmp_path, setup), message fragment)
def case_run_into_user_folder(tmp, setup):
    out = tmp / "u"
    (out / "target").mkdir(parents=True)
    (out / "target" / "main.rs").write_text("user file")
    config = write_yaml(tmp / "c.yaml", {"train": train_raw(setup), "baseline": None, "analysis": {"n_players": 3}})
    return ["run", str(config), "--output-dir", str(out)], out


def case_train_into_cwd_with_config(tmp, setup):
    write_yaml(tmp / "config.yaml", train_raw(setup))
    return ["train", "config.yaml", "--output-dir", "."], tmp


def train_case(**overrides):
    def build(tmp, setup):
        out = tmp / "out"
        return ["train", str(write_yaml(tmp / "c.yaml", train_raw(setup, output_dir=str(out), **overrides)))], out
    return build


def run_case(analysis=None, **train_overrides):
    def build(tmp, setup):
        out = tmp / "out"
        raw = {"output_dir": str(out), "train": train_raw(setup, **train_overrides), "baseline": None,
               "analysis": {"n_players": 3, **(analysis or {})}}
        return ["run", str(write_yaml(tmp / "c.yaml", raw))], out
    return build


def raw_config_case(text):
    def build(tmp, setup):
        return ["run", str(write_yaml(tmp / "c.yaml", text))], tmp / "never"
    return build


def data_case(content: bytes):
    def build(tmp, setup):
        data = tmp / "d.jsonl"
        data.write_bytes(content)
        out = tmp / "out"
        raw = train_raw(setup, output_dir=str(out), data={"train": str(data)})
        return ["train", str(write_yaml(tmp / "c.yaml", raw))], out
    return build


def extract_case(players, prompt="classify emotion : we won the game today so"):
    def build(tmp, setup):
        return ["extract", "--model", str(setup[1]), "--prompt", prompt, "--response", "joy",
                "--players", str(players)], tmp / "never"
    return build


def hub_case(tmp, setup):
    out = tmp / "out"
    return ["train", str(write_yaml(tmp / "c.yaml", train_raw(setup, output_dir=str(out), model="nobody/no-model")))], out


def analyze_not_a_run(tmp, setup):
    (tmp / "notes.txt").write_text("mine")
    return ["analyze", str(tmp)], tmp


def yaml_case(text):
    def build(tmp, setup):
        return ["train", str(write_yaml(tmp / "c.yaml", text))], tmp / "never"
    return build


def alias_bomb(tmp, setup):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]"
                                                     for i in range(8)]
    return ["train", str(write_yaml(tmp / "c.yaml", "\n".join(lines) + "\n"))], tmp / "never"


def device_zero_data(tmp, setup):
    link = tmp / "d.jsonl"
    link.symlink_to("/dev/zero")
    out = tmp / "out"
    return ["train", str(write_yaml(tmp / "c.yaml", train_raw(setup, output_dir=str(out), data={"train": str(link)})))], out


def pickled_model(tmp, setup):
    model = tmp / "bin-model"
    model.mkdir()
    (model / "config.json").write_text((setup[1] / "config.json").read_text())
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    out = tmp / "out"
    return ["train", str(write_yaml(tmp / "c.yaml", train_raw(setup, output_dir=str(out), model=str(model))))], out


def extract_device_case(device):
    def build(tmp, setup):
        return ["extract", "--model", str(setup[1]), "--prompt", "we won the game today", "--response", "joy",
                "--players", "2", "--device", device], tmp / "never"
    return build


def data_rows_case(rows, **overrides):
    def build(tmp, setup):
        data = tmp / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out = tmp / "out"
        raw = {"output_dir": str(out), "baseline": None, "analysis": {"n_players": 2, "samples_per_split": 1,
                                                                      "allow_fewer": True},
               "train": train_raw(setup, data={"train": str(data)}, **overrides)}
        return ["run", str(write_yaml(tmp / "c.yaml", raw))], out
    return build


def path_typo_case(tmp, setup):
    (tmp / "data").mkdir()
    out = tmp / "out"
    return ["train", str(write_yaml(tmp / "c.yaml", train_raw(setup, output_dir=str(out), data={"train": "data/small"})))], out


def analyze_job_folder(tmp, setup):
    from sftscope.store import write_json

    job = tmp / "job"
    (job / "target").mkdir(parents=True)
    write_json(job / "sftscope-run.json", {"tool": "sftscope", "kind": "job"})
    write_json(job / "target" / "sftscope-run.json", {"tool": "sftscope", "kind": "run"})
    return ["analyze", str(job)], job


def huge_value_case(tmp, setup):
    out = tmp / "out"  # a value just under the file limit, echoed by the error about it
    return ["train", str(write_yaml(tmp / "c.yaml", train_raw(setup, output_dir=str(out), model="x" * 900_000)))], out


GOOD_LINE = b'{"prompt": "classify emotion : we won the game today so", "completion": "joy"}\n'
WORDY = [{"prompt": "classify emotion : we won the game today so very", "completion": "joy"},
         {"prompt": "classify emotion : my flight got cancelled again so", "completion": "anger"}] * 2
CASES = [
    ("output folder holds user files", case_run_into_user_folder, "already holds files sftscope did not write"),
    ("train into a folder with the user's config", case_train_into_cwd_with_config, "already holds files"),
    ("max_steps 0", train_case(max_steps=0), "max_steps: must be a positive number of steps"),
    ("max_steps -5", train_case(max_steps=-5), "max_steps: must be a positive number of steps"),
    ("stage_rule bogus", run_case({"stage_rule": "bogus"}), "analysis.stage_rule: must be cumulative or crossover"),
    ("n_players 0", run_case({"n_players": 0}), "n_players: must be at least 1"),
    ("n_players 30", run_case({"n_players": 30}), "exact extraction stops at 14"),
    ("samples_per_split 0", run_case({"samples_per_split": 0}), "samples_per_split: must be at least 1"),
    ("stop_rule bogus", run_case({"stop_rule": "bogus"}), "stop_rule: must be one of"),
    ("tau 0", run_case({"tau": 0}), "tau: must be in (0, 1]"),
    ("prompts shorter than n_players", run_case({"n_players": 12}), "have fewer usable words"),
    ("extract 30 players", extract_case(30), "1,073,741,824 masked prompts"),
    ("extract 20 players", extract_case(20), "exact extraction stops at 14"),
    ("extract empty prompt", extract_case(3, prompt="  "), "--prompt is empty"),
    ("a 2 MB line", data_case(GOOD_LINE + b'{"prompt": "' + b"x" * 2_000_000 + b'", "completion": "joy"}\n'),
     "d.jsonl:2: line longer than 1000000 bytes"),
    ("non-UTF-8 data", data_case(GOOD_LINE + b'{"prompt": "caf\xe9 ok", "completion": "joy"}\n'), "d.jsonl:2: not UTF-8"),
    ("malformed JSON line", data_case(GOOD_LINE + b'{"prompt": \n'), "d.jsonl:2: malformed JSON"),
    ("missing data file", train_case(data={"train": "/nonexistent/d.jsonl"}), "data file not found"),
    ("hub id, no connection", hub_case, "did not answer within 3 s"),
    ("unknown model", train_case(model="no-such-model"), "unknown model 'no-such-model'"),
    ("hub id with a space", train_case(model="owner/bad name"), "not a valid hub id"),
    ("shipped set and a test source", train_case(data={"train": "emotions", "test": "emotions:validation"}),
     "data.test 'emotions:validation' would be ignored"),
    ("config is a list", raw_config_case("- 1\n- 2\n"), "expected a mapping of settings, got list"),
    ("config is a string", raw_config_case("just words\n"), "expected a mapping of settings, got str"),
    ("config is a number", raw_config_case("42\n"), "expected a mapping of settings, got int"),
    ("baseline is a string", raw_config_case("baseline: gemma3-270m\n"), ".baseline: expected a mapping of settings"),
    ("malformed YAML", raw_config_case("train: [unclosed\n"), "malformed YAML"),
    ("unknown key", raw_config_case("trian: {}\n"), "unknown key 'trian'"),
    ("batch_size 0", train_case(batch_size=0), "batch_size: must be at least 1"),
    ("lora rank 0", train_case(lora={"r": 0}), "lora.r: the LoRA rank must be at least 1"),
    ("negative learning rate", train_case(learning_rate=-1e-3), "learning_rate: must be positive"),
    ("unknown scheduler", train_case(lr_scheduler="bogus"), "lr_scheduler: must be one of"),
    ("multi_label maybe", train_case(data={"multi_label": "maybe"}), "multi_label: must be skip, first or join"),
    ("analyze a folder that is no run", analyze_not_a_run, "is not an sftscope run folder"),
    # the hostile trial of issue 24: bombs, values that fail late, misleading answers
    ("YAML alias bomb", alias_bomb, "expands to more than 100,000 values through YAML aliases"),
    ("data file linked to /dev/zero", device_zero_data, "not a regular file"),
    ("template width bomb", train_case(data={"template": "{prompt:>999999999999}", "response_column": "completion"}),
     "asks for a width over 1000 characters"),
    ("seed -1", train_case(seed=-1), "seed: must be in 0 .. 2^32 - 1"),
    ("epochs .inf", yaml_case("epochs: .inf\n"), "epochs: must be a finite number"),
    ("learning_rate .inf", yaml_case("learning_rate: .inf\n"), "learning_rate: must be a finite number"),
    ("LoRA target bogus", train_case(lora={"target_modules": "bogus"}), "lora.target_modules 'bogus' matches no module"),
    ("LoRA targets [bogus]", train_case(lora={"target_modules": ["bogus"]}), "'bogus' not in the model"),
    ("report_to wandb, not installed", train_case(report_to=["wandb"]), "wandb is not installed"),
    ("report_to bogus", train_case(report_to=["bogus"]), "unknown tracker 'bogus'"),
    ("extract on cuda without CUDA", extract_device_case("cuda"), "CUDA is not available"),
    ("extract on a bogus device", extract_device_case("bogus"), "unknown device 'bogus'"),
    ("every prompt over max_length", train_case(max_length=8), "tokens long, over max_length 8"),
    ("one prompt over max_length", data_case(GOOD_LINE * 3 + b'{"prompt": "classify emotion : ' + b"so " * 80 + b'", '
                                              b'"completion": "joy"}\n'), "over max_length 64 (1 of"),
    ("data.labels missing a label", run_case(data={"labels": ["joy"]}), "response 'anger' is not in data.labels"),
    ("data.labels empty", run_case(data={"labels": []}), "data.labels: must list the labels"),
    ("punctuation-only prompts with allow_fewer", data_rows_case([{"prompt": "?! ...", "completion": "joy"},
                                                                  {"prompt": "!!", "completion": "anger"}] * 2),
     "has no usable word"),
    ("model folder with pytorch_model.bin only", pickled_model, "no *.safetensors weights (it has pytorch_model.bin"),
    ("a path typo without extension", path_typo_case, "data file not found"),
    ("a key given twice", yaml_case("batch_size: 2\nbatch_size: 4\n"), "key 'batch_size' is given twice"),
    ("test_ratio 0.99", train_case(data={"test_ratio": 0.99}), "of its 4 examples, test_ratio 0.99 puts 4 in the test split"),
    ("output_dir: ~ (null)", raw_config_case("output_dir: ~\n"), "a bare ~ means null"),
    ("a huge value is not echoed whole", huge_value_case, "characters cut"),
    ("a 10 MB config file", yaml_case("a: " + "x" * 10_000_000 + "\n"), "a settings file is at most 1,000,000"),
    ("a JSON array in a .json file", data_case(b'[{"prompt": "a b c", "completion": "joy"}]\n'), "one JSON object per line"),
    ("analyze a job folder", analyze_job_folder, "analyze its run folder"),
]


@pytest.mark.parametrize("name, build, fragment", CASES, ids=[c[0] for c in CASES])
def test_every_fault_is_one_line_and_exit_2_before_training(name, build, fragment, tmp_path, setup, capsys,
                                                            monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    args, untouched = build(tmp_path, setup)
    started = time.perf_counter()
    status, err = run_cli(args, capsys, cwd=tmp_path)
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("sftscope: error: ") and fragment in err[0], err
    assert len(err[0]) < 2000  # a user's value is cut, never echoed whole
    assert not list(untouched.rglob("checkpoint-*")) if untouched.exists() else True  # nothing was trained
    assert time.perf_counter() - started < 30


def test_damaged_files_name_the_path(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis", "report", ".sftscope.lock"))
    adapter = RunFolder(run).checkpoint(2) / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])  # truncated
    status, err = run_cli(["analyze", str(run), "--samples", "1", "--players", "3", "--quiet"], capsys)
    assert status == 2 and len(err) == 1 and "checkpoint-2: cannot read the adapter" in err[0], err


def test_read_only_folder_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    """Root ignores file modes, so the operating system's answer is simulated at the one place we create files."""
    import errno
    import tempfile

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis", "report", ".sftscope.lock"))
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and str(run) in str(dir):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    status, err = run_cli(["analyze", str(run), "--samples", "1", "--players", "3", "--quiet"], capsys)
    assert status == 2 and len(err) == 1 and "Permission denied" in err[0] and str(run) in err[0], err


def test_full_disk_during_analyze_is_one_line_and_keeps_what_was_written(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis", "report", ".sftscope.lock"))

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # `ulimit -f 4`: a file may not grow past 4 KB

    done = subprocess.run([sys.executable, "-m", "sftscope.cli", "analyze", str(run), "--samples", "1",
                           "--players", "3", "--quiet"], capture_output=True, text=True, preexec_fn=small_files,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "File too large" in err[0], done.stderr[-2000:]
    assert not list(run.rglob("*.tmp"))
    again = subprocess.run([sys.executable, "-m", "sftscope.cli", "analyze", str(run), "--samples", "1",
                            "--players", "3", "--quiet"], capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_truncated_unit_is_recomputed_with_a_note(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis", "report", ".sftscope.lock"))
    args = ["analyze", str(run), "--samples", "1", "--players", "3"]
    assert run_cli(args, capsys)[0] == 0
    folder = RunFolder(run)
    unit = folder.units()[0]
    clean = pd.read_parquet(unit)
    unit.write_bytes(unit.read_bytes()[:50])
    status, _ = run_cli(args, capsys)
    assert status == 0
    assert "recomputing stored results whose inputs changed: unreadable file (1)" in run_cli.stdout
    pd.testing.assert_frame_equal(pd.read_parquet(unit), clean)


def test_changed_settings_never_reuse_earlier_numbers(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis", "report", ".sftscope.lock"))
    assert run_cli(["analyze", str(run), "--samples", "1", "--players", "4", "--quiet"], capsys)[0] == 0
    first = json.loads(RunFolder(run).summary.read_text())
    assert run_cli(["analyze", str(run), "--samples", "2", "--players", "3"], capsys)[0] == 0
    second = json.loads(RunFolder(run).summary.read_text())
    assert (second["settings"]["n_players"], second["settings"]["samples_per_split"]) == (3, 2)
    manifest = json.loads(RunFolder(run).manifest.read_text())["complete_units"]
    effects = load_effects(run, [RunFolder(run).unit(u["model"], u["step"], u["sample"]) for u in manifest])
    per_split = effects.groupby("split")["sample"].nunique().to_dict()  # 2 per task split, 3 players: new units
    # (the tiny run has one validation example)
    assert per_split == {"train": 2, "validation": 1, "general": AnalysisSettings().general_samples}
    assert effects["order"].max() <= 3
    assert second["checkpoints"] == first["checkpoints"]
    # a retrained checkpoint (new adapter weights) is recomputed; the others are not
    from safetensors.torch import load_file, save_file

    adapter = RunFolder(run).checkpoint(4) / "adapter_model.safetensors"
    save_file({k: v * 1.5 for k, v in load_file(adapter).items()}, adapter)
    stamps = {p: p.stat().st_mtime_ns for p in RunFolder(run).units()}
    status, _ = run_cli(["analyze", str(run), "--samples", "2", "--players", "3"], capsys)
    assert status == 0
    changed = {p for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert changed and all("step-000004" in str(p) for p in changed)


def test_user_files_are_never_touched(setup, tmp_path, capsys):
    from sftscope.config import run_config_from_dict
    from sftscope.pipeline import run

    out = tmp_path / "out"
    raw = {"output_dir": str(out), "train": train_raw(setup), "baseline": None,
           "analysis": {"samples_per_split": 1, "n_players": 3}}
    run(run_config_from_dict(raw), say=lambda _m: None)
    places = [out, out / "target", out / "target" / "analysis", out / "target" / "report",
              out / "target" / "checkpoint-2", out / "target" / "analysis" / "effects"]
    mine = {}
    for place in places:
        path = place / "my-notes.txt"
        path.write_text(f"user data in {place.name}")
        mine[path] = path.read_bytes()
    (out / "target" / "DONE").unlink()  # force a retrain: an unfinished run is restarted from step 0
    run(run_config_from_dict(raw), say=lambda _m: None)
    config = write_yaml(tmp_path / "bad.yaml", {**raw, "train": train_raw(setup, batch_size=0)})
    assert run_cli(["run", str(config)], capsys)[0] == 2  # a failing command on the same folder
    assert {p: p.read_bytes() for p in mine} == mine
    assert not (out / "config.yaml").exists() and (out / "target" / "sftscope-config.yaml").exists()


def test_a_finished_training_is_not_reused_under_other_settings(setup, tmp_path, capsys):
    from sftscope.config import run_config_from_dict
    from sftscope.pipeline import run

    out = tmp_path / "out"
    raw = {"output_dir": str(out), "train": train_raw(setup), "baseline": None,
           "analysis": {"samples_per_split": 1, "n_players": 3}}
    run(run_config_from_dict(raw), say=lambda _m: None)
    weights = (out / "target" / "checkpoint-2" / "adapter_model.safetensors").read_bytes()
    changed = write_yaml(tmp_path / "lr.yaml", {**raw, "train": train_raw(setup, learning_rate=3e-4, report_to=["none"])})
    status, err = run_cli(["run", str(changed)], capsys)
    assert status == 2 and "holds a training with other settings (learning_rate differ)" in err[0], err
    assert (out / "target" / "checkpoint-2" / "adapter_model.safetensors").read_bytes() == weights
    said = []
    run(run_config_from_dict(raw), say=said.append)  # the same settings: reused
    assert "target: training already done, skipped" in said


def test_files_get_the_users_umask(tiny_run):
    import stat

    from sftscope.store import LOCK_NAME, UMASK, run_lock, write_text

    path = write_text(tiny_run / "analysis" / "mode-check.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK
    path.unlink()
    with run_lock(tiny_run):
        assert stat.S_IMODE((tiny_run / LOCK_NAME).stat().st_mode) == 0o666 & ~UMASK  # not executable


def test_no_solver_banner_on_stdout(capfd):
    import numpy as np

    from sftscope.decompose import and_or_interactions

    code = "import numpy as np; from sftscope import and_or_interactions; and_or_interactions(np.arange(16.0))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "HiGHS" not in done.stdout and "Copyright" not in done.stdout
    assert and_or_interactions(np.arange(16.0)).matching_error < 1e-9


# --------------------------------------------------------------------------- files sftscope did not write (issue 24)


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(tmp):
    mine = tmp / "my-model"
    mine.mkdir()
    for name in ("vocab.json", "merges.txt", "README.md", "tokenizer.json", "generation_config.json"):
        (mine / name).write_text(f"the user's {name}")
    return mine


@pytest.fixture
def finished(setup, tmp_path, capsys):
    """A finished `sftscope train` run folder."""
    out = tmp_path / "finished"
    config = write_yaml(tmp_path / "first.yaml", train_raw(setup, output_dir=str(out)))
    assert run_cli(["train", str(config), "--quiet"], capsys)[0] == 0
    return out


def test_a_tilde_means_the_home_folder_everywhere(setup, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    (home / "runs" / "busy").mkdir(parents=True)
    (home / "runs" / "busy" / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    config = write_yaml(tmp_path / "c.yaml", train_raw(setup, output_dir="~/runs/x"))
    assert run_cli(["train", str(config), "--quiet"], capsys, cwd=tmp_path)[0] == 0
    assert (home / "runs" / "x" / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "~").exists()
    # a tilde that names a folder holding the user's files is refused like any other such folder
    status, err = run_cli(["train", str(config), "--quiet", "--output-dir", "~/runs/busy"], capsys, cwd=tmp_path)
    assert status == 2 and "already holds files sftscope did not write (notes.txt)" in err[0], err
    assert (home / "runs" / "busy" / "notes.txt").read_text() == "mine"
    status, err = run_cli(["extract", "--model", str(setup[1]), "--prompt",
                           "we won the game today", "--response", "joy", "--players", "2", "--out", "~/r.parquet",
                           "--quiet"], capsys, cwd=tmp_path)
    assert status == 0 and (home / "r.parquet").exists() and not (tmp_path / "~").exists(), err


@pytest.mark.parametrize("where", ["train: checkpoint-2", "run: target/checkpoint-2", "run: target", "analyze: analysis"])
def test_a_link_in_the_layout_is_refused_and_what_it_points_to_is_untouched(where, setup, tmp_path, capsys):
    command, name = where.split(": ")
    out = tmp_path / "out"
    raw = train_raw(setup, output_dir=str(out))
    if command == "train":
        config = write_yaml(tmp_path / "c.yaml", raw)
        args = ["train", str(config), "--quiet"]
        root = out
    else:
        config = write_yaml(tmp_path / "c.yaml", {"output_dir": str(out), "train": raw, "baseline": None,
                                                  "analysis": {"n_players": 3, "samples_per_split": 1}})
        args = ["run", str(config), "--quiet"]
        root = out
    assert run_cli(args, capsys)[0] == 0  # a finished job; then a link appears where sftscope writes
    if command == "analyze":
        args = ["analyze", str(out / "target"), "--samples", "1", "--players", "3", "--quiet"]
        root = out / "target"
    mine = _user_folder(tmp_path)
    before = _snapshot(mine)
    place = root / name
    if place.exists():
        shutil.rmtree(place)
    place.symlink_to(mine, target_is_directory=True)
    if (root / "target" / "DONE").exists():
        (root / "target" / "DONE").unlink()  # an unfinished training: a retrain would write into the link
    if (root / "DONE").exists():
        (root / "DONE").unlink()
    status, err = run_cli(args, capsys)
    assert status == 2 and "is a link to" in err[0] and "does not write through links" in err[0], err
    assert _snapshot(mine) == before


def test_train_never_replaces_a_finished_run_of_other_settings(finished, setup, tmp_path, capsys):
    before = _snapshot(finished)
    other = write_yaml(tmp_path / "other.yaml", train_raw(setup, learning_rate=3e-4, seed=3))
    status, err = run_cli(["train", str(other), "--output-dir", str(finished), "--quiet"], capsys)
    assert status == 2 and "holds a training with other settings (learning_rate, seed differ)" in err[0], err
    assert _snapshot(finished) == before
    # the same settings again: nothing to do, nothing rewritten
    same = write_yaml(tmp_path / "same.yaml", train_raw(setup, output_dir=str(finished)))
    assert run_cli(["train", str(same), "--quiet"], capsys)[0] == 0
    assert _snapshot(finished) == before


@pytest.mark.parametrize("kind", ["a user's file", "a folder", "a link"])
def test_extract_out_never_replaces_what_is_not_its_own(kind, setup, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    if kind == "a user's file":
        target.write_text("my notes")
    elif kind == "a folder":
        target.mkdir()
    else:
        (tmp_path / "real.txt").write_text("my notes")
        target.symlink_to(tmp_path / "real.txt")
    args = ["extract", "--model", str(setup[1]), "--prompt", "we won the game today", "--response", "joy",
            "--players", "2", "--out", str(target), "--quiet"]
    started = time.perf_counter()
    status, err = run_cli(args, capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith("sftscope: error: --out"), err  # before any work
    assert time.perf_counter() - started < 30
    assert (tmp_path / "real.txt" if kind == "a link" else target).exists()
    if kind != "a folder":
        assert (tmp_path / "real.txt" if kind == "a link" else target).read_text() == "my notes"
    # its own earlier result may be replaced
    ours = tmp_path / "ours.parquet"
    args[-2] = str(ours)
    assert run_cli(args, capsys)[0] == 0 and run_cli(args, capsys)[0] == 0


def test_checkpoint_files_get_the_users_umask(finished):
    import stat

    from sftscope.store import UMASK

    files = [p for p in finished.glob("checkpoint-*/*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~UMASK for p in files)


@pytest.mark.parametrize("args", [["--help"], ["run", "{bad}"], ["run", "{bad_data}"], ["run", "{dry}", "--dry-run"]],
                         ids=["help", "config error", "data error", "dry run"])
def test_quick_answers_import_neither_torch_nor_transformers(args, tmp_path):
    """What a user waits for on --help, a one-line config or data error and a dry run: no torch, transformers, TRL."""
    import subprocess
    import sys

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a"}\n', encoding="utf-8")
    files = {"bad": "output_dir: x\ntrain: {learning_rate: -1}\n",
             "bad_data": f"output_dir: {tmp_path / 'o'}\ntrain: {{data: {{train: {data}}}}}\n",
             "dry": f"output_dir: {tmp_path / 'o'}\n"}
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text, encoding="utf-8")
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    code = ("import sys\nfrom sftscope.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:] + out.stderr[-500:]


@pytest.mark.parametrize("args, fragment", [
    (["extract", "--model", "m", "--prompt", "p", "--response", "r", "--top", "-3"], "argument --top: must be at least 1"),
    (["analyze", ".", "--samples-per-job", "0"], "argument --samples-per-job: must be at least 1"),
    (["analyze", ".", "--samples", "0"], "argument --samples: must be at least 1"),
], ids=["--top -3", "--samples-per-job 0", "--samples 0"])
def test_out_of_range_options_are_refused_by_the_parser(args, fragment, capsys):
    from sftscope.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and fragment in capsys.readouterr().err.strip().splitlines()[-1]


def test_what_the_trial_found_refused_or_wrong_is_now_read_right(tmp_path):
    """The trial's misreadings: YAML 1e-4, a JSON number label, decomposed accents, a test split repeating training."""
    from sftscope.config import load_config
    from sftscope.data import Splits, load_pairs, split_notes

    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-4\n", encoding="utf-8")  # YAML 1.1 reads a string; TRL reads a float
    assert load_config(config).learning_rate == 1e-4
    rows = tmp_path / "d.jsonl"
    rows.write_text('{"prompt": "rate this", "completion": 3}\n{"prompt": "un cafe\\u0301 e\\u0301tait", "completion": "x"}\n',
                    encoding="utf-8")
    pairs = load_pairs(rows)
    assert pairs[0].response == "3"
    assert pairs[1].prompt == "un caf\u00e9 \u00e9tait" and len(pairs[1].prompt) == 13  # composed (NFC)
    same = load_pairs(rows)[:1] * 12
    notes = split_notes(Splits(same, same, same))
    assert any("12 of 12 test examples repeat a training prompt" in n for n in notes)
