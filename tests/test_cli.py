"""What the command line answers to mistakes: one paragraph with a did-you-mean, no abbreviations, options
from environment variables only under `HFTRAIN_<SUBCOMMAND>__…`, and `predict` and a checkpoint of another label set
refused early."""

import pytest
import yaml
from conftest import sentiment_rows, write_csv
from helpers import TEXT_CLASSIFICATION, classification_config, run_cli, tree_digest

from hftrain.cli import HFTrainCLI
from hftrain.core import pretrained
from hftrain.core.errors import HFTrainError
from hftrain.tasks.text_classification import TextClassification


@pytest.fixture
def config(tiny_bert, sentiment_files, tmp_path):
    return classification_config(tmp_path / "cli.yaml", tiny_bert, sentiment_files)


def error_of(capsys, *args) -> str:
    assert run_cli(*args) == 2
    lines = capsys.readouterr().err.splitlines()
    # one paragraph and no usage dump (Lightning may warn first that pytest's own arguments are in sys.argv)
    assert lines[-1].startswith("hftrain: error: ") and not [line for line in lines if "usage" in line], lines
    return lines[-1]


def test_a_misspelled_option_gets_a_did_you_mean(config, capsys):
    err = error_of(capsys, "fit", "--config", config, "--data.text_colum", "review")
    assert "TextClassificationData has no option text_colum" in err
    assert "Did you mean --data.text_column?" in err and "--data.help TextClassificationData" in err


def test_an_abbreviated_option_is_refused(config, capsys):
    err = error_of(capsys, "fit", "--config", config, "--trainer.max_epoch", "1")
    assert "--trainer.max_epoch is not an option. Did you mean --trainer.max_epochs" in err


def test_a_wrong_value_and_an_unknown_class_are_named(config, capsys):
    assert "trainer.max_epochs must be int or null, got 'many'" in error_of(
        capsys, "fit", "--config", config, "--trainer.max_epochs", "many"
    )
    err = error_of(capsys, "fit", "--config", config, "--model", "TextClasification")
    assert "Did you mean TextClassification?" in err


def test_short_class_names_are_accepted(config, capsys):
    with pytest.raises(SystemExit):
        HFTrainCLI(args=["fit", "--config", str(config), "--model", "TextClassification", "--print_config"])
    assert f"class_path: {TEXT_CLASSIFICATION}" in capsys.readouterr().out


def test_options_come_only_from_hftrain_subcommand_variables(config, monkeypatch, capsys):
    monkeypatch.setenv("HFTRAIN_DATA", "/some/folder")  # a user's own variables, not options
    monkeypatch.setenv("HFTRAIN_CONFIG", "/nowhere.yaml")
    monkeypatch.setenv("HFTRAIN_TRAINER__MAX_STEPS", "5")
    monkeypatch.setenv("HFTRAIN_FIT__TRAINER__MAX_STEPS", "3")
    with pytest.raises(SystemExit):
        HFTrainCLI(args=["fit", "--config", str(config), "--print_config"])
    assert "  max_steps: 3\n" in capsys.readouterr().out
    cli = HFTrainCLI(args=["--config", str(config)], run=False)  # the Python API reads the `fit` variables
    assert cli.trainer.max_steps == 3


def test_predict_without_data_to_predict_on_fails_before_loading_anything(tiny_bert, tmp_path, monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pretrained, "load_model", no_loading)
    files = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(16, 1)))}
    config = classification_config(tmp_path / "cli.yaml", tiny_bert, files)
    assert "has nothing to predict on: set data.predict_file" in error_of(capsys, "predict", "--config", config)
    err = error_of(capsys, "predict", "--config", config, "--data.predict_file", "new.csv")
    assert "data.predict_file 'new.csv' does not exist" in err
    assert not (tmp_path / "runs").exists()


def test_a_failed_predict_leaves_no_predictions_and_no_config(config, tmp_path, monkeypatch):
    assert run_cli("fit", "--config", config, "--trainer.max_epochs", "1") == 0
    run = tmp_path / "runs" / "cli" / "version_0"
    before = tree_digest(run)

    def broken(self, batch, batch_idx):
        raise HFTrainError("predict broke")

    monkeypatch.setattr("hftrain.tasks.text_classification.TextClassification.predict_step", broken)
    assert run_cli("predict", "--config", config, "--ckpt_path", "best") == 2
    after = tree_digest(run)
    assert {k: v for k, v in after.items() if k in before} == before
    # only Lightning's TensorBoard writer, which it opens for every run, adds a file
    assert all(name.startswith("events.out.tfevents.") for name in set(after) - set(before))


def test_a_config_without_a_trainer_section_trains_three_epochs(config, tmp_path, capsys):
    content = yaml.safe_load(config.read_text())
    del content["trainer"]
    config.write_text(yaml.safe_dump(content))
    with pytest.raises(SystemExit):
        HFTrainCLI(args=["fit", "--config", str(config), "--print_config"])
    assert "  max_epochs: 3\n" in capsys.readouterr().out  # the HF Trainer's default, not Lightning's 1000


@pytest.mark.parametrize(
    ("subcommand", "setting", "expected"),
    [
        ("test", {}, "hftrain test has no test data: set data.test_file"),
        ("validate", {"data__validation_split_percentage": 0}, "hftrain validate has no validation data"),
    ],
)
def test_an_evaluation_without_its_split_fails_before_loading_or_writing(
    subcommand, setting, expected, tiny_bert, tmp_path, monkeypatch, capsys
):
    files = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(16, 1)))}
    config = classification_config(tmp_path / "cli.yaml", tiny_bert, files, **setting)
    assert run_cli("fit", "--config", config, "--trainer.max_epochs", "1") == 0
    before = tree_digest(tmp_path / "runs")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pretrained, "load_model", no_loading)
    capsys.readouterr()
    assert expected in error_of(capsys, subcommand, "--config", config, "--ckpt_path", "last")
    assert tree_digest(tmp_path / "runs") == before  # no config-N.yaml, no events file


def test_a_checkpoint_of_another_label_set_is_refused_before_its_weights_load(
    tiny_bert, sentiment_files, tmp_path, monkeypatch, capsys
):
    files = {split: sentiment_files[split] for split in ("train", "validation")}
    config = classification_config(tmp_path / "labels.yaml", tiny_bert, files, trainer__max_epochs=1)
    assert run_cli("fit", "--config", config, "--trainer.limit_train_batches", "2") == 0
    last = tmp_path / "runs" / "labels" / "version_0" / "checkpoints" / "last.ckpt"

    def no_weights(*args, **kwargs):
        raise AssertionError("the checkpoint's weights were loaded")

    monkeypatch.setattr(TextClassification, "load_state_dict", no_weights)
    # the same number of labels under other names (it would score), and another number (a size mismatch)
    for relabel, named in (
        ({"neg": "bad", "pos": "good"}, ["bad", "good"]),
        ({"neg": "bad", "pos": "meh"}, ["bad", "good", "meh"]),
    ):
        rows = [{**row, "label": relabel[row["label"]]} for row in sentiment_rows(24, 5)]
        rows[0]["label"] = "good"
        data = str(write_csv(tmp_path / f"{relabel['pos']}.csv", rows))
        other_data = ["--data.train_file", data, "--data.validation_file", data]
        err = error_of(capsys, "validate", "--config", config, *other_data, "--ckpt_path", last)
        assert f"--ckpt_path {last} was trained on the labels ['neg', 'pos']" in err
        assert f"this config's data has the labels {named}" in err
