"""Scale-out on CPU with gloo: a 2-process DDP fit, a 2-node run on localhost, and a SLURM requeue.

Every run goes through `python -m hftrain fit` in a subprocess, as a user (or `srun`) starts it, so
Lightning's own launcher and cluster environments are what is tested. FSDP needs a GPU in Lightning
(`accelerator="gpu"` is enforced), so only its preset is checked here.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from helpers import classification_config, run_cli
from lightning.pytorch import Callback, Trainer

from hftrain.core.callbacks import read_results

TESTS = Path(__file__).resolve().parent
CPU_DDP = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.precision", "32-true"]


def hftrain(*args, env: dict[str, str] | None = None, wait: bool = True):
    """Start `python -m hftrain <args>` with one thread per process (the machine is shared)."""
    command = [sys.executable, "-m", "hftrain", *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config(tiny_bert, sentiment_files, tmp_path) -> Path:
    """96 training and 32 validation rows in batches of 8: both split evenly over 2 ranks, so
    DistributedSampler pads nothing and a 2-process validation sees exactly the 1-process examples."""
    return classification_config(
        tmp_path / "scale.yaml",
        tiny_bert,
        {split: sentiment_files[split] for split in ("train", "validation")},
        data__batch_size=8,
        data__eval_batch_size=8,
    )


def test_two_process_ddp_fit_writes_one_run_and_validates_like_one_process(config, tmp_path):
    output = hftrain("fit", "--config", config, *CPU_DDP, "--trainer.devices", 2)
    runs = tmp_path / "runs" / "scale"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    run = runs / "version_0"
    results = read_results(run)
    assert results["global_step"] == 2 * 96 // (2 * 8)  # each rank took half of every epoch
    assert len(list((run / "checkpoints").iterdir())) == 2  # best + last, written once
    assert (run / "hf_model" / "model.safetensors").is_file() and not list(run.glob("*.partial"))
    for line in ("Tokenized data cached", "LOAD REPORT", "Exported the best model", "Run folder:"):
        assert output.count(line) == 1, f"{line!r} printed {output.count(line)} times:\n{output}"

    # the fit's last validation scored, over 2 processes, the weights of the last checkpoint
    assert run_cli("validate", "--config", config, "--ckpt_path", "last") == 0
    one_process = read_results(run)["validate"]
    assert {"val/accuracy", "val/f1", "val/loss"} <= set(one_process)
    two_processes = {k: v for k, v in results["final"].items() if k in one_process}
    assert two_processes == pytest.approx(one_process)


def test_two_nodes_on_localhost_form_one_world_of_two(config, tmp_path):
    """What each node of a cluster without SLURM runs: the same command with its NODE_RANK."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    args = ["fit", "--config", config, *CPU_DDP, "--trainer.num_nodes", 2, "--trainer.devices", 1]
    args += ["--trainer.max_epochs", 1]
    nodes = [hftrain(*args, env={**env, "NODE_RANK": str(rank)}, wait=False) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    runs = tmp_path / "runs" / "scale"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    assert read_results(runs / "version_0")["global_step"] == 96 // (2 * 8)


class PauseForSignal(Callback):
    """Test scaffolding: at step `PAUSE_AT_STEP`, touch `PAUSE_READY_FILE` and wait, like a job still
    training when SLURM warns it of the end; the test then sends SIGUSR1 and, as SLURM does, kills it."""

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        ready = os.environ.get("PAUSE_READY_FILE")
        if ready and trainer.global_step == int(os.environ["PAUSE_AT_STEP"]):
            Path(ready).write_text("paused")
            time.sleep(600)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not (path.is_file() and path.stat().st_size > 0):
        if process.poll() is not None:
            raise AssertionError(f"hftrain exited before {path.name} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {seconds} s")
        time.sleep(0.2)


def test_slurm_requeue_saves_a_checkpoint_and_the_requeued_job_resumes_from_it(config, tmp_path):
    """One faked SLURM task; only `scontrol` is mocked. The job is signalled mid-epoch 2 of 2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol_log = tmp_path / "scontrol.log"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {scontrol_log}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "hftrain",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["callbacks"] = [{"class_path": "test_distributed.PauseForSignal"}]
    config.write_text(yaml.safe_dump(settings))
    preset = REPO / "configs" / "trainer" / "slurm.yaml"
    # exactly what scripts/slurm/fit.sbatch runs, with the GPU settings of the preset swapped for CPU ones
    args = ["fit", "--config", config, "--config", preset, *CPU_DDP, "--trainer.num_nodes", 1]
    args += ["--trainer.devices", 1, "--trainer.strategy", "auto"]
    steps_per_epoch = 96 // 8
    run = tmp_path / "runs" / "scale" / "version_4242"  # the job id names the run folder

    ready = tmp_path / "paused"
    pause = {"PAUSE_READY_FILE": str(ready), "PAUSE_AT_STEP": str(steps_per_epoch + 3)}
    job = hftrain(*args, env={**slurm, **pause}, wait=False)
    try:
        wait_for(ready, job)
        job.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=SIGUSR1@90` sends before the time limit
        wait_for(scontrol_log, job)  # Lightning asks SLURM to requeue once the checkpoint is saved
        job.kill()  # SLURM ends the job after the requeue
        output = job.communicate(timeout=60)[0]
    finally:
        job.kill()
    assert "SLURM auto-requeueing enabled" in output and "Handling auto-requeue signal" in output
    assert scontrol_log.read_text().split() == ["requeue", "4242"]
    assert (run / "hpc_ckpt_1.ckpt").is_file()
    assert not (run / "hf_model").exists()

    # the requeued job: same job id, same command, no flag changed
    output = hftrain(*args, env=slurm)
    assert "Restoring states from the checkpoint path at runs/scale/version_4242/hpc_ckpt_1.ckpt" in output
    assert [p.name for p in run.parent.iterdir()] == ["version_4242"]
    results = read_results(run)
    assert results["global_step"] == 2 * steps_per_epoch  # an uninterrupted run's count
    assert [h["epoch"] for h in results["history"]] == [0, 1]
    assert (run / "hf_model" / "model.safetensors").is_file()


def test_fsdp_preset_wraps_each_transformer_block():
    """The preset's strategy builds (its import paths resolve); running it needs a GPU."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy, Strategy
    from transformers.models.bert.modeling_bert import BertLayer

    preset = yaml.safe_load((REPO / "configs" / "trainer" / "fsdp.yaml").read_text())["trainer"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate(parser.parse_object({"strategy": preset["strategy"]})).strategy
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {BertLayer}
    assert strategy._state_dict_type == "sharded"
    assert preset["precision"].endswith("-mixed")
