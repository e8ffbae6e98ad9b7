"""What a run prints, as a user's terminal or log file gets it: the lines to act on, none of the notices
other libraries print on every run, and all of them again with --verbose."""

from helpers import classification_config, hftrain_ok

# the notices a default run must not print (each would appear without the filters or fixes)
NOISE = [
    "Seed set to",
    "GPU available:",
    "TPU available:",
    "litlogger",
    "set_vital",
    "LeafSpec",
    "log_every_n_steps",  # Lightning's interval warning: the interval is sized to the run
    "LOAD REPORT",
    "Trainable params",  # the model summary
    "Loading weights",
    "Writing model shards",
    "Loading `train_dataloader`",
    "`Trainer.fit` stopped",
    "Generating data split",
    "Saving the dataset",
]


def test_a_default_run_prints_the_lines_to_act_on_and_no_notices(tiny_bert, sentiment_files, tmp_path):
    files = {k: v for k, v in sentiment_files.items() if k in ("train", "validation")}
    config = classification_config(tmp_path / "quiet.yaml", tiny_bert, files)
    out = hftrain_ok("fit", "--config", config)
    lines = [line for line in out.split("\n") if line.strip()]  # a progress bar's updates stay on one line
    header = [i for i, line in enumerate(lines) if line.startswith("Run folder: runs/quiet/version_0   ")]
    assert header, out
    first = header[0]
    assert lines[first + 1] == "Data: 96 train, 32 validation rows; 2 labels: neg, pos"
    assert lines[first + 2].startswith("Model: BertForSequenceClassification from ")
    assert lines[first + 2].endswith("parameters; newly initialized: classifier.bias, classifier.weight")
    assert lines[first + 3] == "Device: cpu, precision 32-true, 1 process"
    assert any(line.startswith("Run folder: runs/quiet/version_0  (best val/accuracy = ") for line in lines)
    assert not [(n, line) for line in lines for n in NOISE if n in line]
    assert len(lines) <= 12, out  # the text column used, tokenizing (2 lines per bar), cache, header, export, result


def test_verbose_shows_every_notice(tiny_bert, sentiment_files, tmp_path):
    files = {k: v for k, v in sentiment_files.items() if k in ("train", "validation")}
    config = classification_config(tmp_path / "loud.yaml", tiny_bert, files, trainer__max_steps=2)
    out = hftrain_ok("fit", "--config", config, "--verbose")
    for notice in ("Seed set to 42", "LOAD REPORT", "Trainable params", "`Trainer.fit` stopped: `max_steps=2`"):
        assert notice in out, notice
