"""Scale-out on CPU with gloo: a 2-process DDP fit, a 2-node run on localhost, and a SLURM requeue.

Every run goes through `python -m hftrain fit` in a subprocess, as a user (or `srun`) starts it, so
Lightning's own launcher and cluster environments are what is tested. Lightning and torch run FSDP on
GPUs only, so here only its preset and the export of a sharded checkpoint are checked.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from helpers import CPU_DDP, classification_config, free_port, hftrain_ok, run_cli, two_nodes_on_localhost
from lightning.pytorch import Callback, Trainer

from hftrain.core.runs import read_results

TESTS = Path(__file__).resolve().parent


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


@pytest.mark.processes  # several hftrain processes at once
def test_two_process_ddp_fit_writes_one_run_and_validates_like_one_process(config, tmp_path):
    output = hftrain_ok("fit", "--config", config, *CPU_DDP, "--trainer.devices", 2)
    runs = tmp_path / "runs" / "scale"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    run = runs / "version_0"
    results = read_results(run)
    assert results["global_step"] == 2 * 96 // (2 * 8)  # each rank took half of every epoch
    assert len(list((run / "checkpoints").iterdir())) == 2  # best + last, written once
    assert (run / "hf_model" / "model.safetensors").is_file() and not list(run.glob("*.partial"))
    for line in ("Tokenized data cached", "Model: BertForSequence", "Exported the best model", "(best val/accuracy"):
        assert output.count(line) == 1, f"{line!r} printed {output.count(line)} times:\n{output}"

    # the fit's last validation scored, over 2 processes, the weights of the last checkpoint
    assert run_cli("validate", "--config", config, "--ckpt_path", "last") == 0
    one_process = read_results(run)["validate"]
    assert {"val/accuracy", "val/f1", "val/loss"} <= set(one_process)
    two_processes = {k: v for k, v in results["final"].items() if k in one_process}
    assert two_processes == pytest.approx(one_process)


@pytest.mark.processes  # several hftrain processes at once
def test_ddp_averages_a_token_level_loss_over_every_ranks_tokens(tiny_gpt2, tmp_path):
    """2 ranks of 4 documents take the steps 1 process takes with batches of 8 (Lightning deals a batch's rows
    to ranks by stride): the LM's loss is averaged over all the predicted tokens of a step, as the HF
    Trainer's `average_tokens_across_devices`, not rank by rank. Dropout is off, so only averaging differs."""
    import json
    import shutil

    from conftest import counting
    from safetensors.torch import load_file
    from test_language_modeling import write_paragraphs

    model = tmp_path / "gpt2"
    shutil.copytree(tiny_gpt2, model)
    settings = json.loads((model / "config.json").read_text())
    settings.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    (model / "config.json").write_text(json.dumps(settings))
    common = [
        "--model", "hftrain.tasks.language_modeling.LanguageModeling", "--model.model_name_or_path", model,
        "--model.learning_rate", "3e-3", "--data", "hftrain.tasks.language_modeling.LanguageModelingData",
        "--data.train_file", write_paragraphs(tmp_path / "train.txt", counting(64, seed=1)),
        "--data.validation_file", write_paragraphs(tmp_path / "valid.txt", counting(8, seed=2)),
        "--data.packing", "false", "--trainer.max_steps", "6", "--trainer.precision", "32-true",
    ]  # fmt: skip
    # the one-process reference in this process (no DDP), the two ranks as a user starts them
    name = "--trainer.logger.init_args.name"
    assert run_cli("fit", *common, "--trainer.accelerator", "cpu", "--data.batch_size", 8, name, "one") == 0
    hftrain_ok("fit", *common, *CPU_DDP, "--trainer.devices", 2, "--data.batch_size", 4, name, "two")
    weights = []
    for run in ("one", "two"):
        (exported,) = (tmp_path / "runs" / run).glob("version_*/hf_model/model.safetensors")
        weights.append(load_file(exported))
    start = load_file(model / "model.safetensors")
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-4, atol=1e-4)
    assert not torch.equal(weights[0]["transformer.wte.weight"], start["transformer.wte.weight"])


@pytest.mark.slow  # a cluster's nodes joining over the network: tests/test_slurm.py runs it on a real cluster
def test_two_nodes_on_localhost_form_one_world_of_two(config, tmp_path):
    """What each node of a cluster without SLURM runs: the same command with its NODE_RANK."""
    outputs = two_nodes_on_localhost(config, "--trainer.max_epochs", 1)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    runs = tmp_path / "runs" / "scale"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    assert read_results(runs / "version_0")["global_step"] == 96 // (2 * 8)


@pytest.mark.slow
def test_torchrun_script_runs_two_processes(config, tmp_path):
    """scripts/torchrun_fit.sh with 2 CPU processes on one node (slow: a third DDP start-up)."""
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the script is run from the repository root
    done = subprocess.run(
        ["bash", REPO / "scripts" / "torchrun_fit.sh", config.name, *CPU_DDP, "--trainer.max_epochs", "1"],
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "NPROC_PER_NODE": "2",
            "MASTER_PORT": str(free_port()),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_results(tmp_path / "runs" / "scale" / "version_0")["global_step"] == 96 // (2 * 8)


class PauseForSignal(Callback):
    """Test scaffolding: at step `PAUSE_AT_STEP`, write this process's id to `PAUSE_READY_FILE` and wait a few
    seconds, like a job still training when SLURM warns it; the test signals it meanwhile."""

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        ready = os.environ.get("PAUSE_READY_FILE")
        if ready and trainer.global_step == int(os.environ["PAUSE_AT_STEP"]):
            Path(ready).write_text(str(os.getpid()))
            time.sleep(5)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> str:
    """The text of `path` once it has some, failing early if `process` ends first."""
    deadline = time.monotonic() + seconds
    while not (path.is_file() and path.stat().st_size > 0):
        if process.poll() is not None:
            raise AssertionError(f"the job ended before {path.name} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {seconds} s")
        time.sleep(0.2)
    return path.read_text()


@pytest.mark.slow  # where Slurm is not installed; CI requeues on a real cluster (tests/test_slurm.py)
def test_slurm_requeue_saves_a_checkpoint_and_the_requeued_job_resumes_from_it(config, tmp_path):
    """scripts/slurm/fit.sbatch as one faked SLURM task on CPU, signalled mid-epoch 2 of 2. `srun` passes
    its command through (one task) and `scontrol` records its arguments; nothing of Lightning is mocked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol_log = tmp_path / "scontrol.log"
    for name, body in {"srun": '"$@"', "scontrol": f'echo "$@" >> {scontrol_log}'}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    slurm = {
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "hftrain",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["callbacks"] = [{"class_path": "test_distributed.PauseForSignal"}]
    config.write_text(yaml.safe_dump(settings))
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the script is run from the repository root
    # the slurm preset's GPU settings swapped for CPU ones
    job = [REPO / "scripts" / "slurm" / "fit.sbatch", config.name, *CPU_DDP, "--trainer.strategy", "auto"]
    steps_per_epoch = 96 // 8
    run = tmp_path / "runs" / "scale" / "version_4242"  # the job id names the run folder

    ready = tmp_path / "paused"
    pause = {"PAUSE_READY_FILE": str(ready), "PAUSE_AT_STEP": str(steps_per_epoch + 3)}
    first = sbatch(job, env={**slurm, **pause})
    try:
        # what `#SBATCH --signal=SIGUSR1@90` makes SLURM send to the tasks before the time limit
        os.kill(int(wait_for(ready, first)), signal.SIGUSR1)
        output = first.communicate(timeout=120)[0]  # the step ends, the checkpoint is saved, the job requeued
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, output
    assert f"Stopped by SIGUSR1 at step {steps_per_epoch + 3}" in output and "Requeued SLURM job 4242" in output
    assert scontrol_log.read_text().split() == ["requeue", "4242"]
    assert (run / "hpc_ckpt_1.ckpt").is_file()
    assert not (run / "hf_model").exists()

    # the requeued job: same job id, same script, nothing changed
    requeued = sbatch(job, env=slurm)
    output = requeued.communicate(timeout=600)[0]
    assert requeued.returncode == 0, output
    assert "Restored all states from the checkpoint at runs/scale/version_4242/hpc_ckpt_1.ckpt" in output
    assert [p.name for p in run.parent.iterdir()] == ["version_4242"]
    results = read_results(run)
    assert results["global_step"] == 2 * steps_per_epoch  # an uninterrupted run's count
    assert [h["epoch"] for h in results["history"]] == [0, 1]
    assert (run / "hf_model" / "model.safetensors").is_file()


def sbatch(command: list, env: dict[str, str]) -> subprocess.Popen:
    """Run a batch script as SLURM would on the first node, in its own process group."""
    return subprocess.Popen(
        ["bash", *map(str, command)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


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


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_export_gathers_a_sharded_best_checkpoint(tiny_bert, tmp_path):
    """FSDP's sharded checkpoints (folders of torch.distributed.checkpoint shards, weights under `model`)
    still become one hf_model/; written here by one process, as Lightning's FSDP writes them on a GPU."""
    from types import SimpleNamespace

    import torch
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForSequenceClassification

    from hftrain.core.callbacks import ExportHFModel
    from hftrain.tasks.text_classification import TextClassification

    module = TextClassification(model_name_or_path=tiny_bert, label_names=["neg", "pos"])
    best = {k: v.clone() for k, v in module.state_dict().items()}
    dcp.save({"model": best}, checkpoint_id=tmp_path / "best.ckpt")
    with torch.no_grad():  # the weights in memory move on after the best checkpoint
        module.model.classifier.weight.add_(1.0)
    trainer = SimpleNamespace(
        loggers=[],  # no logger: the run folder is the trainer's root folder
        default_root_dir=str(tmp_path),
        is_global_zero=True,
        checkpoint_callback=SimpleNamespace(best_model_path=str(tmp_path / "best.ckpt")),
        datamodule=None,
    )
    ExportHFModel().on_fit_end(trainer, module)
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf_model")
    torch.testing.assert_close(exported.classifier.weight, best["model.classifier.weight"])
