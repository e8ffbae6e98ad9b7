"""The run folder: the functions on hand-made folders (naming, finding runs and checkpoints, never overwriting),
then through the command line: runs started together each get their own, and a command acts on the run its
files name."""

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import classification_config, hftrain, run_cli

from hftrain.core import runs
from hftrain.core.errors import HFTrainError


def test_run_name_is_the_task_config_even_with_presets_after_it():
    files = [("configs/glue/mrpc.yaml", {"model": {}, "data": {}}), ("configs/trainer/gpu.yaml", {"trainer": {}})]
    assert runs.run_name(files, "hftrain.tasks.text_classification.TextClassification") == "mrpc"
    assert runs.run_name([("a/only_trainer.yaml", {"trainer": {}})], "x.Task") == "only_trainer"
    assert runs.run_name([("empty.yaml", None)], "x.Task") == "empty"
    assert runs.run_name([], "hftrain.tasks.seq2seq.Seq2Seq") == "seq2seq"


def test_version_dir_names_numbers_as_tensorboard_does(tmp_path):
    assert runs.version_dir(tmp_path, 3) == tmp_path / "version_3"
    assert runs.version_dir(tmp_path, "version_12345") == tmp_path / "version_12345"


def test_fit_runs_are_the_folders_with_checkpoints_in_numeric_order(tmp_path):
    assert runs.fit_runs(tmp_path) == []
    for version, with_checkpoints in ((2, True), (10, True), (11, False)):  # 11: a `validate` without a fit
        (tmp_path / f"version_{version}" / ("checkpoints" if with_checkpoints else "events")).mkdir(parents=True)
    (tmp_path / "version_x" / "checkpoints").mkdir(parents=True)
    assert runs.fit_runs(tmp_path) == [tmp_path / "version_2", tmp_path / "version_10"]  # not by name
    assert runs.next_version(tmp_path) == 12


def _checkpoint_with_best(path, best):
    torch.save({"callbacks": {"ModelCheckpoint{'monitor': 'val/accuracy'}": {"best_model_path": str(best)}}}, path)


def test_find_checkpoint_reads_results_then_the_callback_state_in_last(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    best = checkpoints / "epoch=1-step=8.ckpt"
    best.write_bytes(b"x")
    _checkpoint_with_best(checkpoints / "last.ckpt", best)
    assert runs.find_checkpoint(tmp_path, "last") == checkpoints / "last.ckpt"
    assert runs.find_checkpoint(tmp_path, "best") == best  # a run killed before results.json

    other = checkpoints / "epoch=0-step=4.ckpt"
    other.write_bytes(b"x")
    runs.update_results(tmp_path, {"best_checkpoint": str(other)})
    assert runs.find_checkpoint(tmp_path, "best") == other  # results.json wins


def test_last_is_the_newer_of_last_and_a_requeue_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    last, requeue = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_2.ckpt"
    for path, mtime in ((last, 100), (requeue, 200)):
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    assert runs.find_checkpoint(tmp_path, "last") == requeue
    os.utime(last, (300, 300))
    assert runs.find_checkpoint(tmp_path, "last") == last


def test_find_checkpoint_names_the_run_and_the_other_runs_when_nothing_is_there(tmp_path):
    for version in (0, 1):
        (tmp_path / f"version_{version}" / "checkpoints").mkdir(parents=True)
    interrupted = tmp_path / "version_1"
    with pytest.raises(HFTrainError, match=r"version_1 has no last checkpoint.*others here: version_0"):
        runs.find_checkpoint(interrupted, "last")
    runs.update_results(interrupted, {"best_checkpoint": str(tmp_path / "gone.ckpt")})
    with pytest.raises(HFTrainError, match="version_1 has no best checkpoint"):
        runs.find_checkpoint(interrupted, "best")


def test_a_runs_own_config_or_checkpoint_names_it_and_a_choice_between_runs_is_said(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = (tmp_path / "runs" / "sst" / f"version_{n}" for n in (0, 1))
    for run in (first, second):
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("{}")
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "checkpoints").mkdir()  # a folder of the user's own, not a run
    (tmp_path / "config.yaml").write_text("{}")
    assert runs.run_of(first / "config.yaml") == first
    assert runs.run_of(second / "checkpoints" / "last.ckpt") == second
    assert runs.run_of(tmp_path / "config.yaml") is runs.run_of(tmp_path / "checkpoints" / "x.ckpt") is None

    own = Path("runs/sst/version_0/config.yaml")  # relative, as typed
    assert runs.run_named([tmp_path / "sst.yaml", own], None) == (own.parent, None)
    assert runs.run_named([own, first / "config-1.yaml"], first / "checkpoints" / "last.ckpt")[1] is None
    taken, note = runs.run_named([own], second / "checkpoints" / "last.ckpt")
    assert taken == second and note.startswith(f"The command names 2 runs ({second}, {own.parent}); it acts on")
    assert runs.run_named([own], tmp_path / "elsewhere.ckpt") == (None, None)


def test_claim_version_never_hands_out_a_folder_twice(tmp_path):
    (tmp_path / "version_0").mkdir()
    assert runs.claim_version(tmp_path / "new") == tmp_path / "new" / "version_0"
    assert [runs.claim_version(tmp_path).name for _ in range(2)] == ["version_1", "version_2"]
    runs.release_version(tmp_path / "version_2")  # nothing written: given back
    (tmp_path / "version_1" / "config.yaml").write_text("{}")
    runs.release_version(tmp_path / "version_1")  # written into: kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "version_0", "version_1"]
    fresh = runs.claim_version(tmp_path / "runs" / "refused")  # a command refused before it wrote anything
    runs.release_version(fresh)
    assert not (tmp_path / "runs").exists()  # leaves no empty runs/<name>/ behind
    assert runs.claim_version(tmp_path / "new") == tmp_path / "new" / "version_1"
    runs.release_version(tmp_path / "new" / "version_1")
    assert (tmp_path / "new" / "version_0").is_dir()  # folders that were there before are kept


def test_a_claim_never_written_into_is_released_when_the_process_ends(tmp_path):
    """A `Run` never fitted, `hftrain.trainer()` unused, a CLI built with run=False: their claimed version_N went
    with the process instead of staying behind empty."""
    code = (
        "import sys; from hftrain.core import runs; "
        "unused = runs.claim_version(sys.argv[1] + '/runs/never'); "
        "used = runs.claim_version(sys.argv[1] + '/runs/written'); (used / 'config.yaml').write_text('{}')"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "runs",
        "runs/written",
        "runs/written/version_0",
        "runs/written/version_0/config.yaml",
    ]


def test_free_path_never_overwrites(tmp_path):
    first = runs.free_path(tmp_path, "config", ".yaml")
    assert first == tmp_path / "config.yaml"
    first.write_text("a")
    (tmp_path / "config-1.yaml").write_text("b")
    assert runs.free_path(tmp_path, "config", ".yaml") == tmp_path / "config-2.yaml"


def test_update_results_merges_and_leaves_no_partial_file(tmp_path):
    run = tmp_path / "new" / "version_0"
    assert runs.read_results(run) == {}
    runs.update_results(run, {"best": {"val/accuracy": 0.5}, "test": {}})
    runs.update_results(run, {"test": {"test/accuracy": 0.75}})
    assert runs.read_results(run) == {"best": {"val/accuracy": 0.5}, "test": {"test/accuracy": 0.75}}
    assert [p.name for p in run.iterdir()] == ["results.json"]
    assert json.loads((run / "results.json").read_text())["test"] == {"test/accuracy": 0.75}


SHORT = {"trainer__max_epochs": 1, "trainer__limit_train_batches": 2}  # a fit of 2 steps, then one validation


@pytest.mark.processes  # several hftrain processes at once
def test_runs_started_together_each_claim_their_own_folder(tiny_bert, sentiment_files, tmp_path):
    """Four `hftrain fit` of one config go on at one moment (a barrier after the model loads), as a job array's
    tasks do: four folders, each complete and holding its own run's seed."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    ready.mkdir()
    barrier = {"class_path": "faults.StartTogether", "init_args": {"ready_dir": str(ready), "go": str(go)}}
    files = {split: sentiment_files[split] for split in ("train", "validation")}
    config = classification_config(tmp_path / "sweep.yaml", tiny_bert, files, **SHORT, trainer__callbacks=[barrier])
    seeds = [11, 12, 13, 14]
    processes = [hftrain("fit", "--config", config, "--seed_everything", s, wait=False) for s in seeds]
    while len(list(ready.iterdir())) < len(seeds) and all(p.poll() is None for p in processes):
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * len(seeds), outputs
    folders = sorted((tmp_path / "runs" / "sweep").iterdir())
    assert [f.name for f in folders] == [f"version_{n}" for n in range(len(seeds))], outputs
    printed = sorted(re.search(r"Run folder: (\S+) ", out).group(1) for out in outputs)
    assert printed == [str(Path("runs") / "sweep" / f.name) for f in folders]
    got = []
    for folder in folders:
        assert sorted(p.name for p in folder.glob("config*.yaml")) == ["config.yaml"]
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        assert runs.read_results(folder)["global_step"] == 2
        assert (folder / "hf_model" / "model.safetensors").is_file()
        got.append(yaml.safe_load((folder / "config.yaml").read_text())["seed_everything"])
    assert sorted(got) == seeds


def test_a_command_acts_on_the_run_its_config_or_checkpoint_names(tiny_bert, sentiment_files, tmp_path, caplog):
    config = classification_config(tmp_path / "sst.yaml", tiny_bert, sentiment_files, **SHORT)
    assert run_cli("fit", "--config", config) == 0
    assert run_cli("fit", "--config", config) == 0
    first, newest = (tmp_path / "runs" / "sst" / f"version_{n}" for n in (0, 1))
    newest_before = runs.read_results(newest)

    # the first run's own config: its best checkpoint is scored, and the metrics go into its results
    assert run_cli("validate", "--config", first / "config.yaml", "--ckpt_path", "best") == 0
    assert runs.read_results(first)["validate"]["val/accuracy"] >= 0
    # a checkpoint of the first run by path, with the config it was made from: scored into that run too
    assert run_cli("test", "--config", config, "--ckpt_path", first / "checkpoints" / "last.ckpt") == 0
    assert "test/accuracy" in runs.read_results(first)["test"]
    assert runs.read_results(newest) == newest_before
    assert sorted(p.name for p in first.parent.iterdir()) == ["version_0", "version_1"]  # no new folder

    # `best` of the config alone takes the newest run, and says so
    with caplog.at_level(logging.INFO):
        assert run_cli("validate", "--config", config, "--ckpt_path", "best") == 0
    assert "validate" in runs.read_results(newest)
    assert "holds 2 runs of this config; using the newest, version_1" in caplog.text
