"""The benchmarks' capped runs (scripts/bench_common.py `run_child(timeout=...)`): the streaming benchmark caps the
HF Trainer's resume at 15 minutes and reports it as taking longer, so a cut-off run must end with its dataloader
workers and keep what the child noted before the cut."""

import os
import sys
import textwrap
import time

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench_common import run_child  # noqa: E402

CHILD = """
import argparse, json, subprocess, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--child")
parser.add_argument("--started", type=float)
parser.add_argument("--result")
parser.add_argument("--sleep", type=float)
parser.add_argument("--pid-file")
args = parser.parse_args()
# a dataloader worker's stand-in
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **quiet)
Path(args.pid_file).write_text(str(worker.pid))
Path(args.result).write_text(json.dumps({"variant": args.child, "noted": 1}))
time.sleep(args.sleep)
Path(args.result).write_text(json.dumps({"variant": args.child, "done": True}))
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.processes
def test_a_capped_run_is_cut_off_with_its_workers_and_keeps_its_note(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    pid_file = tmp_path / "worker.pid"
    start = time.time()
    run = run_child(script, ["--sleep", "60", "--pid-file", str(pid_file)], "slow", threads=1, timeout=3)
    assert time.time() - start < 30
    assert run["timed_out"] == 3 and run["noted"] == 1 and "done" not in run
    worker = int(pid_file.read_text())
    deadline = time.time() + 5
    while alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(worker)


@pytest.mark.processes
def test_a_run_within_its_cap_returns_its_result(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    pid_file = tmp_path / "worker.pid"
    run = run_child(script, ["--sleep", "0", "--pid-file", str(pid_file)], "quick", threads=1, timeout=60)
    os.kill(int(pid_file.read_text()), 9)
    assert run["done"] is True and run["variant"] == "quick" and "timed_out" not in run
