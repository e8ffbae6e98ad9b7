"""A catalogue of bad inputs: each gets one clear message, exit status 2, no traceback, and leaves an
existing run folder byte-for-byte as it was, with no new run folder beside it."""

import pytest
import torch
import yaml
from conftest import sentiment_rows, write_csv
from helpers import classification_config, run_cli, tree_digest


def _files(tmp_path, **replace):
    files = {
        "train": str(write_csv(tmp_path / "train.csv", sentiment_rows(40, 1))),
        "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(16, 2))),
    }
    files.update(replace)
    return files


def missing_column(tmp_path, model):
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path), data__text_column="review"),
    ]


def label_outside_the_set(tmp_path, model):
    rows = sentiment_rows(16, 2)
    rows[5]["label"] = "meh"
    dev = str(write_csv(tmp_path / "dev_meh.csv", rows))
    return ["--config", classification_config(tmp_path / "bad.yaml", model, _files(tmp_path, validation=dev))]


def label_outside_given_names(tmp_path, model):
    config = classification_config(tmp_path / "bad.yaml", model, _files(tmp_path), data__label_names=["pos", "other"])
    return ["--config", config]


def empty_split(tmp_path, model):
    (tmp_path / "empty.csv").write_text("text,label\n")
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path, validation=str(tmp_path / "empty.csv"))),
    ]


def missing_file(tmp_path, model):
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path, train="nowhere/train.csv")),
    ]


def unsupported_file_type(tmp_path, model):
    (tmp_path / "train.xlsx").write_bytes(b"PK\x03\x04")
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path, train=str(tmp_path / "train.xlsx"))),
    ]


def non_utf8_file(tmp_path, model):
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9 cr\xe8me was great,pos\n".encode("latin-1") * 3)
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path, train=str(tmp_path / "latin1.csv"))),
    ]


def row_without_text(tmp_path, model):
    (tmp_path / "holes.csv").write_text("text,label\nthe film was great,pos\n,neg\na bad plot,neg\n")
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path, train=str(tmp_path / "holes.csv"))),
    ]


def empty_label_cell(tmp_path, model):
    (tmp_path / "unlabelled.csv").write_text("text,label\nthe film was great,pos\na bad plot,\nfine acting,pos\n")
    files = _files(tmp_path, train=str(tmp_path / "unlabelled.csv"))
    return ["--config", classification_config(tmp_path / "bad.yaml", model, files)]


def unknown_config_key(tmp_path, model):
    return ["--config", classification_config(tmp_path / "bad.yaml", model, _files(tmp_path), model__learning_rat=0.1)]


def another_tools_option_name(tmp_path, model):
    return ["--config", classification_config(tmp_path / "bad.yaml", model, _files(tmp_path), data__num_proc=2)]


def wrong_type(tmp_path, model):
    return ["--config", classification_config(tmp_path / "bad.yaml", model, _files(tmp_path), data__batch_size="lots")]


def negative_batch_size(tmp_path, model):
    return ["--config", classification_config(tmp_path / "bad.yaml", model, _files(tmp_path), data__batch_size=-4)]


def bad_validation_percentage(tmp_path, model):
    files = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(40, 1)))}
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, files, data__validation_split_percentage=150),
    ]


def malformed_yaml(tmp_path, model):
    (tmp_path / "bad.yaml").write_text("model:\n  class_path: [unclosed\n  init_args: {\n")
    return ["--config", tmp_path / "bad.yaml"]


def model_folder_missing(tmp_path, model):
    return ["--config", classification_config(tmp_path / "bad.yaml", str(tmp_path / "no-such-model"), _files(tmp_path))]


def hub_id_without_network(tmp_path, model):
    return ["--config", classification_config(tmp_path / "bad.yaml", "some-org/some-model", _files(tmp_path))]


def hub_dataset_without_network(tmp_path, model):
    config = classification_config(
        tmp_path / "bad.yaml", model, {}, data__dataset_name="glue", data__dataset_config_name="mrpc"
    )
    return ["--config", config]


def no_data_at_all(tmp_path, model):
    return ["--config", classification_config(tmp_path / "bad.yaml", model, {})]


def best_checkpoint_without_a_run(tmp_path, model):
    return ["--config", classification_config(tmp_path / "other.yaml", model, _files(tmp_path)), "--ckpt_path", "best"]


def truncated_checkpoint(tmp_path, model):
    (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path)),
        "--ckpt_path",
        tmp_path / "broken.ckpt",
    ]


def checkpoint_path_missing(tmp_path, model):
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path)),
        "--ckpt_path",
        tmp_path / "gone.ckpt",
    ]


def checkpoint_of_another_task(tmp_path, model):
    import torch

    qa = {"hyper_parameters": {"_class_path": "hftrain.tasks.question_answering.QuestionAnswering"}, "state_dict": {}}
    torch.save(qa, tmp_path / "qa.ckpt")
    return [
        "--config",
        classification_config(tmp_path / "bad.yaml", model, _files(tmp_path)),
        "--ckpt_path",
        tmp_path / "qa.ckpt",
    ]


def tokenizer_bigger_than_model(tmp_path, model):
    import shutil

    from transformers import BertConfig, BertModel

    small = tmp_path / "small-vocab-model"
    BertModel(
        BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16)
    ).save_pretrained(small)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{model}/{name}", small / name)
    return ["--config", classification_config(tmp_path / "bad.yaml", str(small), _files(tmp_path))]


def schedule_without_optimizer(tmp_path, model):
    config = classification_config(tmp_path / "bad.yaml", model, _files(tmp_path))
    return ["--config", config, "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "1"]


def _trainer(name, value):
    """A config that sets one trainer option, as configs/ and docs/ set them."""

    def case(tmp_path, model):
        overrides = {f"trainer__{name}": value}
        return ["--config", classification_config(tmp_path / "bad.yaml", model, _files(tmp_path), **overrides)]

    case.__name__ = f"trainer_{name}_{value if isinstance(value, str | int | float) else 'bad'}"
    return case


def _without_class_path(kind):
    def case(tmp_path, model):
        config = classification_config(tmp_path / "bad.yaml", model, _files(tmp_path))
        content = yaml.safe_load(config.read_text())
        del content[kind]["class_path"]
        config.write_text(yaml.safe_dump(content))
        return ["--config", config]

    case.__name__ = f"{kind}_without_class_path"
    return case


def empty_model_name(tmp_path, model):
    return ["--config", classification_config(tmp_path / "bad.yaml", "", _files(tmp_path))]


# every trainer option that configs/ and docs/ set, with a value Lightning (or torch) refuses or cannot use:
# answered before the model loads and before a run folder exists; the last ones once the data's size is known
TRAINER_CASES = {
    _trainer("max_epochs", -3): ["trainer.max_epochs must be", "-1 for no limit", "got -3"],
    _trainer("max_steps", -5): ["trainer.max_steps must be", "got -5"],
    _trainer("check_val_every_n_epoch", 0): ["trainer.check_val_every_n_epoch must be", "got 0"],
    _trainer("val_check_interval", 0.0): ["trainer.val_check_interval must be", "got 0.0"],
    _trainer("accumulate_grad_batches", 0): ["trainer.accumulate_grad_batches must be", "got 0"],
    _trainer("log_every_n_steps", -1): ["trainer.log_every_n_steps must be", "got -1"],
    _trainer("limit_train_batches", 1.5): ["trainer.limit_train_batches must be", "got 1.5"],
    _trainer("limit_val_batches", -1): ["trainer.limit_val_batches must be", "got -1"],
    _trainer("limit_test_batches", -0.5): ["trainer.limit_test_batches must be", "got -0.5"],
    _trainer("num_sanity_val_steps", -2): ["trainer.num_sanity_val_steps must be", "got -2"],
    _trainer("gradient_clip_val", -1.0): ["trainer.gradient_clip_val must be", "got -1.0"],
    _trainer("num_nodes", 0): ["trainer.num_nodes must be", "got 0"],
    _trainer("devices", 0): ["trainer.devices must be", "got 0"],
    _trainer("max_epoch", 3): ["--trainer.max_epoch is not an option", "Did you mean --trainer.max_epochs?"],
    _trainer("enable_progress_bar", "sometimes"): ["trainer.enable_progress_bar", "sometimes"],
    _trainer("enable_model_summary", "often"): ["trainer.enable_model_summary", "often"],
    _trainer("logger", "nonsense.Logger"): ["trainer.logger", "nonsense.Logger"],
    _trainer("callbacks", [{"class_path": "nonsense.Callback"}]): ["trainer.callbacks", "nonsense.Callback"],
    _trainer("precision", "17"): ["trainer.precision must be one of", "'17'"],
    _trainer("gradient_clip_algorithm", "nrom"): ["Lightning refuses", "trainer.gradient_clip_algorithm='nrom'"],
    _trainer("strategy", "fastest"): ["Lightning refuses", "trainer.strategy='fastest'"],
    _trainer("profiler", "detailed"): ["Lightning refuses", "trainer.profiler='detailed'"],
    _trainer("val_check_interval", 50): ["trainer.val_check_interval is 50", "an epoch has 3 training batches"],
    _trainer("accumulate_grad_batches", 8): ["trainer.accumulate_grad_batches is 8", "at most 3"],
    _without_class_path("model"): ["bad.yaml sets no model class", "class_path: hftrain.tasks."],
    _without_class_path("data"): ["bad.yaml sets no data class", "TextClassificationData"],
    empty_model_name: ["model.model_name_or_path is empty"],
}
if not torch.cuda.is_available():
    TRAINER_CASES[_trainer("accelerator", "gpu")] = ["Lightning refuses", "trainer.accelerator='gpu'"]

CASES = {
    missing_column: ["no column 'review'", "data.text_column", "train.csv"],
    label_outside_the_set: ["'meh'", "row 6", "not in the label set", "dev_meh.csv"],
    label_outside_given_names: ["'neg'", "not in the label set ['pos', 'other']"],
    empty_split: ["validation split", "empty.csv", "has no rows"],
    missing_file: ["nowhere/train.csv", "does not exist"],
    unsupported_file_type: ["unsupported file type '.xlsx'", ".csv"],
    non_utf8_file: ["Could not read", "latin1.csv", "not UTF-8 text", "--data.reader_options '{encoding: latin-1}'"],
    row_without_text: ["no text in column 'text'", "row 2", "holes.csv"],
    empty_label_cell: ["unlabelled.csv", "no label at row 2", "column 'label' is empty"],
    unknown_config_key: ["learning_rat"],
    another_tools_option_name: ["no option num_proc", "Did you mean --data.preprocessing_num_workers?"],
    wrong_type: ["batch_size", "lots"],
    negative_batch_size: ["data.batch_size must be a positive integer", "-4"],
    bad_validation_percentage: ["validation_split_percentage", "150"],
    malformed_yaml: ["bad.yaml"],
    model_folder_missing: ["Could not load the model", "no-such-model"],
    hub_id_without_network: ["Could not load the model 'some-org/some-model'", "offline"],
    hub_dataset_without_network: ["Could not load the dataset 'glue' (mrpc)", "local files"],
    no_data_at_all: ["No data given", "data.train_file"],
    best_checkpoint_without_a_run: ["--ckpt_path best", "no earlier run", "runs/other"],
    truncated_checkpoint: ["broken.ckpt", "not a complete checkpoint"],
    checkpoint_path_missing: ["gone.ckpt", "does not exist"],
    checkpoint_of_another_task: ["qa.ckpt", "written by QuestionAnswering", "trains TextClassification"],
    tokenizer_bigger_than_model: ["embeddings", "do not belong together", "small-vocab-model"],
    schedule_without_optimizer: ["--lr_scheduler", "only with --optimizer", "--model.lr_scheduler_type"],
}
CASES.update(TRAINER_CASES)


@pytest.mark.parametrize("case", list(CASES), ids=[c.__name__ for c in CASES])
def test_bad_input_gets_a_clear_error_and_changes_nothing(case, tiny_bert, tmp_path, capsys):
    earlier_run = tmp_path / "runs" / "bad" / "version_0"
    (earlier_run / "checkpoints").mkdir(parents=True)
    (earlier_run / "checkpoints" / "last.ckpt").write_bytes(b"weights of an earlier run")
    (earlier_run / "results.json").write_text('{"best": {"val/accuracy": 0.9}}\n')
    (earlier_run / "config.yaml").write_text("earlier: config\n")
    before = tree_digest(tmp_path / "runs")
    folders = sorted((tmp_path / "runs").rglob("*"))

    status = run_cli("fit", *case(tmp_path, tiny_bert))

    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    for expected in CASES[case]:
        assert expected in err, f"{expected!r} not in: {err}"
    assert tree_digest(tmp_path / "runs") == before
    assert sorted((tmp_path / "runs").rglob("*")) == folders
