"""What a fit leaves in TensorBoard, read back with TensorBoard's own reader: a curve for every run, readable
tags, the hparams view tied to the monitored metric, validation examples, no extra events files."""

import warnings

import pytest
import torch
from helpers import classification_config, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from hftrain.core.runs import read_results
from hftrain.core.training_log import best_tag, log_interval


def events(run) -> EventAccumulator:
    return EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0}).Reload()


@pytest.fixture
def short_run(tiny_bert, sentiment_files, tmp_path):
    """A 12-step fit (96 rows, batch 16, 2 epochs) with the CLI's defaults: its config and run folder."""
    files = {k: v for k, v in sentiment_files.items() if k != "test"}
    config = classification_config(tmp_path / "short.yaml", tiny_bert, files)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_cli("fit", "--config", config) == 0
    assert not [w for w in caught if "log_every_n_steps" in str(w.message)]  # fixed at the cause: the interval
    return config, tmp_path / "runs" / "short" / "version_0"


def test_a_short_run_has_curves_under_readable_tags(short_run):
    _, run = short_run
    scalars = {tag: events(run).Scalars(tag) for tag in events(run).Tags()["scalars"]}
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_sec", "train/tokens_per_sec"):
        assert [e.step for e in scalars[tag]] == list(range(12)), tag  # every step of a 12-step run
    assert not [tag for tag in scalars if tag.startswith("lr-") or tag == "hp_metric"]
    lr = [e.value for e in scalars["train/lr"]]
    assert lr[0] == pytest.approx(1e-2) and lr == sorted(lr, reverse=True)  # the linear decay
    assert all(e.value > 0 for e in scalars["train/grad_norm"] + scalars["train/tokens_per_sec"])
    tokens, samples = scalars["train/tokens_per_sec"], scalars["train/samples_per_sec"]
    assert all(t.value > s.value for t, s in zip(tokens, samples, strict=True))  # several tokens per sample
    # the best so far of the monitored metric, at the steps of the validations
    accuracy = [(e.step, e.value) for e in scalars["val/accuracy"]]
    best = [(e.step, e.value) for e in scalars["val/best_accuracy"]]
    assert [s for s, _ in best] == [s for s, _ in accuracy] == [5, 11]
    assert best[-1][1] == pytest.approx(max(v for _, v in accuracy))


def test_hparams_view_lists_the_best_monitored_score(short_run):
    _, run = short_run
    content = events(run).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/best_accuracy"]
    hparams = {h.name for h in experiment.hparam_infos}
    assert {"learning_rate", "batch_size", "train_file"} <= hparams


def test_validation_examples_show_input_gold_and_prediction(short_run, sentiment_files):
    _, run = short_run
    tables = events(run).Tensors("val/examples/text_summary")
    assert [t.step for t in tables] == [5, 11]  # one per validation, at its scalars' step; none for the sanity check
    lines = tables[-1].tensor_proto.string_val[0].decode().splitlines()
    assert lines[0] == "| input | gold | prediction |" and len(lines) == 2 + 3
    gold = dict(line.rsplit(",", 1) for line in open(sentiment_files["validation"]).read().splitlines()[1:])
    for line in lines[2:]:
        text, label, predicted = (cell.strip(' `"') for cell in line.strip("|").split("|"))
        assert gold[text] == label and predicted in ("neg", "pos"), line


def test_a_given_interval_is_kept(tiny_bert, sentiment_files, tmp_path):
    files = {k: v for k, v in sentiment_files.items() if k in ("train", "validation")}
    config = classification_config(tmp_path / "every5.yaml", tiny_bert, files, trainer__log_every_n_steps=5)
    assert run_cli("fit", "--config", config) == 0
    loss = events(tmp_path / "runs" / "every5" / "version_0").Scalars("train/loss")
    assert [e.step for e in loss] == [4, 9]


def test_log_interval_gives_short_runs_a_curve_and_long_runs_lightnings_default():
    assert log_interval(12) == log_interval(50) == 1
    assert log_interval(1000) == 20
    assert log_interval(100_000) == log_interval(float("inf")) == 50
    assert best_tag("val/accuracy") == "val/best_accuracy" and best_tag("val/HasAns_f1") == "val/best_HasAns_f1"


ERROR_RATE = """
def error_rate(predictions, labels):
    return float((predictions != labels).float().mean())
"""


def watched_settings(case: str, files: dict[str, str]) -> tuple[dict, str, str]:
    """The config settings of a fit watching a metric other than `val/accuracy`, that metric and its mode."""
    if case == "two-validation-sets":
        return {"data__validation_file": {"a": files["validation"], "b": files["test"]}}, "val/a/accuracy", "max"
    custom = {
        "data__validation_file": files["validation"],
        "model__custom_metrics": {"error_rate": "watched_metrics.error_rate"},
        "checkpoint__monitor": "val/error_rate",
        "checkpoint__mode": "min",
    }
    return custom, "val/error_rate", "min"


@pytest.mark.parametrize("case", ["two-validation-sets", "custom-checkpoint-monitor"])
def test_every_part_of_a_fit_goes_by_the_same_monitored_metric(
    tiny_bert, sentiment_files, tmp_path, monkeypatch, capsys, case
):
    """Checkpoint, early stopping, the training log's best (the HPARAMS view), results.json and the progress line
    name one metric: the first validation set's, or the custom `checkpoint.monitor`."""
    (tmp_path / "watched_metrics.py").write_text(ERROR_RATE)  # a name no other test imports: modules stay cached
    monkeypatch.syspath_prepend(str(tmp_path))
    settings, monitor, mode = watched_settings(case, sentiment_files)
    early_stopping = {"class_path": "hftrain.core.callbacks.TaskEarlyStopping", "init_args": {"patience": 5}}
    config = classification_config(
        tmp_path / "watched.yaml",
        tiny_bert,
        {"train": sentiment_files["train"]},
        trainer__enable_progress_bar=True,
        trainer__callbacks=[early_stopping],
        **settings,
    )
    assert run_cli("fit", "--config", config) == 0
    run = tmp_path / "runs" / "watched" / "version_0"
    results = read_results(run)
    assert results["monitor"] == monitor
    scores = [h[monitor] for h in results["history"]]
    assert len(scores) == 2 and results["best"][monitor] == (max if mode == "max" else min)(scores)
    # the HPARAMS view: its metric is the monitored one's best, which equals results.json's
    content = events(run).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == [best_tag(monitor)]
    assert events(run).Scalars(best_tag(monitor))[-1].value == pytest.approx(results["best"][monitor])
    # the checkpoint and early stopping callbacks, as saved with the run
    states = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    watching = {key.split("{")[0] for key in states if f"{{'monitor': '{monitor}', 'mode': '{mode}'" in key}
    assert watching == {"TaskCheckpoint", "TaskEarlyStopping"}, list(states)
    # the progress line at each epoch's end shows the monitored metric first; the fit's last line, its best
    out = capsys.readouterr().out
    assert f"(best {monitor} = {results['best'][monitor]:.4f} at epoch" in out
    lines = out.splitlines()
    for epoch, score in enumerate(scores, start=1):
        line = next(line for line in reversed(lines) if line.startswith(f"epoch {epoch}/2 "))
        shown = [part for part in line.split(" · ") if part.startswith("val/")]
        assert shown[0] == f"{monitor} {score:.4g}", line
