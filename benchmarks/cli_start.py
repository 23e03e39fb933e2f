"""CLI start-up: ``sftscope --help`` and a one-line config error, median of 5 runs each, for two checkouts.

Each command runs in a fresh interpreter (what a user waits for). ``--before``
names another checkout's ``src`` folder (e.g. a ``git worktree`` of an earlier
commit), run with the same interpreter and packages::

    git worktree add /tmp/before 979dc4b
    python benchmarks/cli_start.py --before /tmp/before/src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def timed(src: Path, args: list[str], runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import sys; from sftscope.cli import main; sys.exit(main(sys.argv[1:]))"
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the src folder of the checkout to compare with")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    bad = Path(tempfile.mkdtemp()) / "bad.yaml"
    bad.write_text("output_dir: x\ntrain: {learning_rate: -1}\n", encoding="utf-8")
    data = bad.with_name("bad.jsonl")
    data.write_text('{"prompt": "a"}\n', encoding="utf-8")
    bad_data = bad.with_name("bad-data.yaml")
    bad_data.write_text(f"output_dir: {bad.parent / 'out'}\ntrain: {{data: {{train: {data}}}}}\n", encoding="utf-8")
    dry = bad.with_name("dry.yaml")
    dry.write_text(f"output_dir: {bad.parent / 'out'}\n", encoding="utf-8")
    cases = {"sftscope --help": ["--help"], "a config error (run BAD.yaml)": ["run", str(bad)],
             "a data error (a line without its completion)": ["run", str(bad_data)],
             "run --dry-run (the default config)": ["run", str(dry), "--dry-run"]}
    for name, cli_args in cases.items():
        before = timed(args.before, cli_args, args.runs)
        after = timed(HERE.parent / "src", cli_args, args.runs)
        print(f"{name}: before {before:.2f} s, now {after:.2f} s (median of {args.runs}): {before / after:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
