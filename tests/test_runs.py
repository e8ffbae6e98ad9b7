"""The run-folder functions on hand-made folders: naming, finding runs and checkpoints, never overwriting."""

import json
import os

import pytest
import torch

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
