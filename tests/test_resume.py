"""Fault tolerance: a run killed at any step resumes to the very weights of an uninterrupted run, a kill
during a checkpoint write leaves the previous checkpoint loadable, a NaN loss stops with a clear error, a full
disk stops the run with a paragraph and loses nothing."""

import os
import random
import shutil
import subprocess

import pytest
import torch
import yaml
from conftest import FILLER, sentiment_rows, write_csv
from helpers import classification_config, hftrain, run_cli

from hftrain.core.errors import HFTrainError
from hftrain.core.length_split import PARTS
from hftrain.core.runs import read_results, update_results
from hftrain.tasks.text_classification import TextClassification, TextClassificationData

STEPS_PER_EPOCH = 12  # 96 training rows, batch 8


def resumable_config(path, model, files, fault=None):
    config = classification_config(
        path, model, files, data__batch_size=8, trainer__max_epochs=2, checkpoint__every_n_train_steps=3
    )
    if fault:
        content = yaml.safe_load(config.read_text())
        content["trainer"]["callbacks"] = [fault]
        config.write_text(yaml.safe_dump(content))
    return config


def weights(checkpoint) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture
def uneven_files(tiny_bert, sentiment_files, tmp_path) -> dict[str, str]:
    """The sentiment files with 20 filler words added to about half of the training sentences, so that on CPU
    hftrain's default split by length cuts most batches into parts (checked here): a resumed run must
    replay those parts as the uninterrupted run trained them."""
    rng = random.Random(5)
    rows = [
        {**row, "text": " ".join([row["text"], *rng.choices(FILLER, k=20)])} if rng.random() < 0.5 else row
        for row in sentiment_rows(96, seed=1)
    ]
    files = {**sentiment_files, "train": str(write_csv(tmp_path / "uneven.csv", rows))}
    data = TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=files["train"],
        validation_file=files["validation"],
        batch_size=8,
        split_by_length=True,
    )
    data.setup("fit")
    split = sum(PARTS in batch for batch in data.train_dataloader())
    assert split >= STEPS_PER_EPOCH // 2, f"only {split} of {STEPS_PER_EPOCH} batches split"
    return files


@pytest.mark.processes  # runs killed and resumed as processes
def test_killed_run_resumes_to_the_uninterrupted_weights(tiny_bert, uneven_files, tmp_path):
    straight = resumable_config(tmp_path / "straight.yaml", tiny_bert, uneven_files)
    assert hftrain("fit", "--config", straight).returncode == 0

    kill_step = random.Random().randint(4, 2 * STEPS_PER_EPOCH - 1)  # after the first last.ckpt (step 3)
    killer = {"class_path": "faults.KillAtStep", "init_args": {"step": kill_step}}
    killed = resumable_config(tmp_path / "killed.yaml", tiny_bert, uneven_files, fault=killer)
    first = hftrain("fit", "--config", killed)
    assert first.returncode == -9, (kill_step, first.stderr[-2000:])
    run = tmp_path / "runs" / "killed" / "version_0"
    saved_step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert saved_step == (kill_step - 1) // 3 * 3  # the kill comes before that step's own save

    resumed = resumable_config(tmp_path / "killed.yaml", tiny_bert, uneven_files)
    second = hftrain("fit", "--config", resumed, "--ckpt_path", "last")
    assert second.returncode == 0, second.stderr[-2000:]

    reference = weights(tmp_path / "runs" / "straight" / "version_0" / "checkpoints" / "last.ckpt")
    result = weights(run / "checkpoints" / "last.ckpt")
    assert reference.keys() == result.keys()
    worst = max((reference[k].float() - result[k].float()).abs().max().item() for k in reference)
    assert worst <= 1e-5, f"killed at step {kill_step}: max weight difference {worst}"
    expected, got = read_results(tmp_path / "runs" / "straight" / "version_0"), read_results(run)
    assert got["global_step"] == expected["global_step"] == 2 * STEPS_PER_EPOCH
    for key, value in expected["final"].items():
        assert abs(got["final"][key] - value) <= 1e-5, key


@pytest.mark.processes  # runs killed and resumed as processes
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tiny_bert, sentiment_files, tmp_path):
    torn = {"class_path": "faults.KillDuringSave", "init_args": {"save": 2}}
    config = resumable_config(tmp_path / "torn.yaml", tiny_bert, sentiment_files, fault=torn)
    assert hftrain("fit", "--config", config).returncode == -9
    checkpoints = tmp_path / "runs" / "torn" / "version_0" / "checkpoints"
    assert (checkpoints / "last.ckpt.partial").is_file()  # the write really was cut off
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 3
    clean = resumable_config(tmp_path / "torn.yaml", tiny_bert, sentiment_files)
    resumed = hftrain("fit", "--config", clean, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_results(checkpoints.parent)["global_step"] == 2 * STEPS_PER_EPOCH


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_good_checkpoints(
    tiny_bert, sentiment_files, tmp_path, capsys
):
    config = classification_config(
        tmp_path / "nan.yaml",
        tiny_bert,
        sentiment_files,
        data__batch_size=8,
        model__learning_rate=1e12,
        checkpoint__every_n_train_steps=1,
        trainer__max_epochs=3,
    )
    assert run_cli("fit", "--config", config) == 2
    err = capsys.readouterr().err
    assert "loss became NaN or infinite at step" in err and "learning_rate" in err
    last = tmp_path / "runs" / "nan" / "version_0" / "checkpoints" / "last.ckpt"
    if last.exists():  # every checkpoint on disk holds finite weights
        assert all(torch.isfinite(t).all() for t in weights(last).values() if t.is_floating_point())


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs mounted in the test folder (as root, as the Slurm tests run); skipped where mount is refused."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount refused: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_stops_with_a_paragraph_and_the_run_continues_once_there_is_room(
    tiny_bert, sentiment_files, tmp_path, small_disk, capsys
):
    ballast = small_disk / "ballast"
    fault = {"class_path": "faults.FillDisk", "init_args": {"step": 4, "ballast": str(ballast), "leave": 100_000}}
    config = resumable_config(tmp_path / "full.yaml", tiny_bert, sentiment_files, fault=fault)
    runs_dir = ["--trainer.logger.init_args.save_dir", small_disk / "runs"]
    assert run_cli("fit", "--config", config, *runs_dir) == 2  # the checkpoint of step 6 did not fit
    err = capsys.readouterr().err
    run = small_disk / "runs" / "full" / "version_0"
    (paragraph,) = [line for line in err.splitlines() if "disk is full" in line]
    assert paragraph.startswith(f"hftrain: error: The disk is full: writing last.ckpt to {run / 'checkpoints'} needed ")
    assert "(the previous last.ckpt included)" in paragraph and "--ckpt_path last" in paragraph
    assert "Traceback" not in err
    assert not list(small_disk.rglob("*.partial"))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3

    # the run's other writes fail alike, through the same writer: results.json and the hf_model/ export
    (small_disk / "ballast-2").write_bytes(b"\0" * shutil.disk_usage(small_disk).free)
    results = (run / "results.json").read_text() if (run / "results.json").exists() else None
    with pytest.raises(HFTrainError, match=r"The disk is full: writing results\.json to .* needed 10\.\d kB"):
        update_results(run, {"history": ["x" * 10_000]})
    assert ((run / "results.json").read_text() if (run / "results.json").exists() else None) == results
    module = TextClassification(model_name_or_path=tiny_bert, label_names=["neg", "pos"])
    with pytest.raises(HFTrainError, match=r"The disk is full: writing hf_model to .* needed \d+\.\d kB"):
        module.export(run / "hf_model")
    assert not list(small_disk.rglob("*.partial")) and not (run / "hf_model").exists()

    ballast.unlink()
    (small_disk / "ballast-2").unlink()
    clean = resumable_config(tmp_path / "full.yaml", tiny_bert, sentiment_files)
    assert run_cli("fit", "--config", clean, *runs_dir, "--ckpt_path", "last") == 0
    assert read_results(run)["global_step"] == 2 * STEPS_PER_EPOCH
    assert (run / "hf_model" / "model.safetensors").is_file()
