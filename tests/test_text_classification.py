"""Text classification end to end: the CLI round trip, the run folder, export parity, input shapes."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FILLER, REPO, SHARED_DATA, minilm_path, sentiment_rows, write_csv
from helpers import classification_config, run_cli
from lightning.pytorch import Trainer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hftrain.cli import HFTrainCLI
from hftrain.core.runs import read_results
from hftrain.tasks.text_classification import TextClassification, TextClassificationData


@pytest.fixture
def fitted_run(tiny_bert, sentiment_files, tmp_path):
    """One tiny fit through the CLI: (config path, run folder)."""
    config = classification_config(tmp_path / "sentiment.yaml", tiny_bert, sentiment_files, trainer__max_epochs=6)
    assert run_cli("fit", "--config", config) == 0
    return config, tmp_path / "runs" / "sentiment" / "version_0"


def test_fit_leaves_a_complete_run_folder_and_learns(fitted_run):
    _, run = fitted_run
    assert (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # best + last
    results = read_results(run)
    assert results["monitor"] == "val/accuracy"
    assert results["best"]["val/accuracy"] == max(h["val/accuracy"] for h in results["history"])
    assert results["final"] == results["history"][-1]
    assert len(results["history"]) == 6
    # the sentiment word decides the label: a working training loop gets it
    assert results["best"]["val/accuracy"] >= 0.9
    assert json.loads((run / "hf_model" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


def test_validate_test_predict_with_best_checkpoint_write_into_the_run(fitted_run):
    config, run = fitted_run
    before = read_results(run)
    assert run_cli("validate", "--config", config, "--ckpt_path", "best") == 0
    assert run_cli("test", "--config", config, "--ckpt_path", "best") == 0
    assert run_cli("predict", "--config", config, "--ckpt_path", "best") == 0
    results = read_results(run)
    assert results["best"] == before["best"]  # merged, not replaced
    assert results["validate"]["val/accuracy"] == pytest.approx(before["best"]["val/accuracy"])
    assert 0.0 <= results["test"]["test/accuracy"] <= 1.0 and "test/f1" in results["test"]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert all(r["label"] in ("neg", "pos") and r["score"] == max(r["scores"].values()) for r in rows)
    # each row joins back to its input: its position in the file and its text; no labels, no gold
    assert [(r["id"], r["text"]) for r in rows] == [(i, r["text"]) for i, r in enumerate(sentiment_rows(8, 4))]
    assert not any("gold" in r for r in rows)
    assert (run / "config-1.yaml").is_file()  # the fit's config.yaml is kept as it was
    assert not (run.parent / "version_1").exists()


def test_predictions_on_labelled_data_carry_the_gold_label(fitted_run, sentiment_files):
    config, run = fitted_run
    output = run / "labelled.jsonl"
    args = ["--data.predict_file", sentiment_files["test"], "--prediction_writer.output_file", output]
    assert run_cli("predict", "--config", config, "--ckpt_path", "best", *args) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["text"], r["gold"]) for r in rows] == [(r["text"], r["label"]) for r in sentiment_rows(32, seed=3)]
    assert sum(r["gold"] == r["label"] for r in rows) >= 0.8 * len(rows)  # scored from the file alone


def test_exported_model_gives_the_module_logits(fitted_run, sentiment_files):
    _, run = fitted_run
    best = read_results(run)["best_checkpoint"]
    module = TextClassification.load_from_checkpoint(best, map_location="cpu").eval()
    exported = AutoModelForSequenceClassification.from_pretrained(run / "hf_model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "hf_model")
    batch = tokenizer(["the film was great", "a boring plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, module(**batch).logits)
    classify = pipeline("text-classification", model=str(run / "hf_model"))
    assert classify("the film was great")[0]["label"] in ("neg", "pos")


def test_resume_from_last_continues_in_the_same_run(tiny_bert, sentiment_files, tmp_path):
    config = classification_config(tmp_path / "resume.yaml", tiny_bert, sentiment_files)
    assert run_cli("fit", "--config", config) == 0
    run = tmp_path / "runs" / "resume" / "version_0"
    first_config = (run / "config.yaml").read_text()
    steps_per_epoch = read_results(run)["global_step"] // 2
    assert run_cli("fit", "--config", config, "--ckpt_path", "last", "--trainer.max_epochs", "3") == 0
    results = read_results(run)
    assert results["global_step"] == 3 * steps_per_epoch
    assert [h["epoch"] for h in results["history"]] == [0, 1, 2]
    assert (run / "config.yaml").read_text() == first_config
    assert (run / "config-1.yaml").is_file()
    assert not (tmp_path / "runs" / "resume" / "version_1").exists()


def test_a_second_fit_gets_a_new_version_folder(tiny_bert, sentiment_files, tmp_path):
    config = classification_config(tmp_path / "twice.yaml", tiny_bert, sentiment_files, trainer__max_epochs=1)
    assert run_cli("fit", "--config", config) == 0
    assert run_cli("fit", "--config", config) == 0
    runs = tmp_path / "runs" / "twice"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]


def fit_in_python(model_path: str, data: TextClassificationData, epochs: int = 1) -> TextClassification:
    """The notebook path: build module, data and Trainer by hand."""
    module = TextClassification(
        model_name_or_path=model_path,
        label_names=data.label_names,
        problem_type=data.problem_type,
        learning_rate=1e-2,
    )
    trainer = Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    return module


def test_python_api_pairs_with_integer_labels(tiny_bert, tmp_path):
    rows = [
        {"sentence1": r["text"], "sentence2": s["text"], "label": int(r["label"] == s["label"])}
        for r, s in zip(sentiment_rows(48, 5), sentiment_rows(48, 6), strict=True)
    ]
    train = write_csv(tmp_path / "pairs.tsv", rows, delimiter="\t")
    data = TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=str(train),
        text_column="sentence1",
        text_pair_column="sentence2",
        batch_size=8,
    )
    assert data.label_names == ["0", "1"] and data.problem_type == "single_label_classification"
    assert len(data.raw["validation"]) == 5  # 10% held out
    module = fit_in_python(tiny_bert, data)
    batch = next(iter(data.val_dataloader()))
    # both sentences are encoded: two [SEP] tokens per pair
    sep = data.tokenizer.sep_token_id
    assert ((batch["input_ids"] == sep).sum(-1) == 2).all()
    assert module.model.config.id2label == {0: "0", 1: "1"}


def test_cli_keeps_column_names_that_yaml_reads_as_comments(tiny_bert, tmp_path):
    """GLUE MRPC's columns are `#1 String` and `#2 String`; YAML reads `#2 String` as a comment (null), which
    once turned the optional pair column off and trained MRPC on its first sentences only."""
    rows = [
        {"Quality": int(r["label"] == s["label"]), "#1 String": r["text"], "#2 String": s["text"]}
        for r, s in zip(sentiment_rows(24, 5), sentiment_rows(24, 6), strict=True)
    ]
    train = write_csv(tmp_path / "train.tsv", rows, delimiter="\t")
    config = classification_config(
        tmp_path / "glue.yaml",
        tiny_bert,
        {"train": str(train)},
        data__text_column="#1 String",
        data__text_pair_column="#2 String",
        data__label_column="Quality",
    )
    from_file = HFTrainCLI(["--config", str(config)], run=False).datamodule
    assert from_file.text_pair_column == "#2 String"
    from_file.prepare_data()
    from_file.setup("fit")
    batch = next(iter(from_file.train_dataloader()))
    assert ((batch["input_ids"] == from_file.tokenizer.sep_token_id).sum(-1) == 2).all()  # both sentences

    def pair_column(value: str) -> str | None:
        cli = HFTrainCLI(["--config", str(config), "--data.init_args.text_pair_column", value], run=False)
        return cli.datamodule.text_pair_column

    assert pair_column("#1 String") == "#1 String"
    assert pair_column("null") is None


def test_regression_from_float_labels(tiny_bert, tmp_path):
    rows = [{"text": r["text"], "score": 4.5 if r["label"] == "pos" else 0.5} for r in sentiment_rows(64, 7)]
    data = TextClassificationData(
        tokenizer_name=tiny_bert, train_file=str(write_csv(tmp_path / "sts.csv", rows)), label_column="score"
    )
    assert data.problem_type == "regression" and data.label_names is None
    module = fit_in_python(tiny_bert, data, epochs=2)
    assert module.model.config.num_labels == 1 and module.monitor == "val/pearson"
    metrics = Trainer(logger=False, enable_progress_bar=False).validate(module, datamodule=data)[0]
    assert {"val/pearson", "val/spearman", "val/mse"} <= set(metrics)


def test_multi_label_from_lists_and_separators(tiny_bert, tmp_path):
    rows = [
        {"text": r["text"], "tags": [r["label"], "movie"] if "film" in r["text"] else [r["label"]]}
        for r in sentiment_rows(40, 8)
    ]
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = TextClassificationData(tokenizer_name=tiny_bert, train_file=str(jsonl), label_column="tags")
    assert data.problem_type == "multi_label_classification"
    assert data.label_names == ["movie", "neg", "pos"]
    csv_rows = [{"text": r["text"], "tags": ",".join(r["tags"])} for r in rows]
    from_csv = TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=str(write_csv(tmp_path / "tags.csv", csv_rows)),
        label_column="tags",
        label_separator=",",
    )
    assert from_csv.label_names == data.label_names
    module = fit_in_python(tiny_bert, data)
    assert module.model.config.problem_type == "multi_label_classification"
    data.setup("fit")
    targets = data.datasets["train"]["labels"]
    assert all(len(t) == 3 and set(t) <= {0.0, 1.0} for t in targets)
    predictions = module.predict_step(next(iter(data.val_dataloader())), 0)
    assert set(predictions[0]["scores"]) == {"movie", "neg", "pos"}


def test_tokenized_data_is_cached_and_reused(tiny_bert, sentiment_files, monkeypatch):
    first = TextClassificationData(tokenizer_name=tiny_bert, train_file=sentiment_files["train"])
    first.prepare_data()
    assert first.cache_path().is_dir()

    def no_second_tokenization(self, raw):
        raise AssertionError("tokenized again although the cache was there")

    monkeypatch.setattr(TextClassificationData, "preprocess", no_second_tokenization)
    second = TextClassificationData(tokenizer_name=tiny_bert, train_file=sentiment_files["train"], batch_size=4)
    assert second.cache_path() == first.cache_path()  # batch size does not change the tokenized data
    second.setup("fit")
    assert len(second.datasets["train"]) == len(first.raw["train"])
    changed = TextClassificationData(tokenizer_name=tiny_bert, train_file=sentiment_files["train"], max_length=8)
    assert changed.cache_path() != first.cache_path()


def test_rows_cut_at_max_length_are_counted_in_every_run(tiny_bert, tmp_path):
    long = " ".join(FILLER)  # 12 words: longer than 8 tokens
    pairs = [{"text": r["text"], "other": r["text"], "label": r["label"]} for r in sentiment_rows(10)]
    pairs.append({"text": long, "other": "a film", "label": "pos"})
    settings = {
        "tokenizer_name": tiny_bert,
        "train_file": str(write_csv(tmp_path / "train.csv", pairs)),
        "validation_split_percentage": 0,
        "max_length": 8,
    }
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    longest = len(tokenizer(long)["input_ids"])
    said = (
        rf"^1 of 11 rows in the train split \(.*train.csv\) are longer than data.max_length=8 tokens \(the longest "
        rf"has {longest}\): the model reads only their first 8 tokens\. Raise data.max_length to keep them\.$"
    )
    data = TextClassificationData(**settings, text_column="text")
    with pytest.warns(UserWarning, match=said):
        data.setup("fit")
    assert data.datasets["train"][10]["input_ids"] == tokenizer(long, truncation=True, max_length=8)["input_ids"]
    assert [len(ids) for ids in data.datasets["train"]["input_ids"][:10]] == [
        len(tokenizer(r["text"])["input_ids"]) for r in pairs[:10]
    ]
    again = TextClassificationData(**settings, text_column="text")  # reuses the tokenized cache, and says it again
    with pytest.warns(UserWarning, match=said):
        again.setup("fit")
    pair = TextClassificationData(**settings, text_column="text", text_pair_column="other")
    with pytest.warns(UserWarning, match=r"1 of 11 rows .* \(a pair's longer text is cut first\)"):
        pair.setup("fit")
    cut = tokenizer(long, "a film", truncation=True, max_length=8)["input_ids"]
    assert pair.datasets["train"][10]["input_ids"] == cut and len(cut) == 8


def test_glue_tsv_with_quotes_and_byte_order_mark(tiny_bert, tmp_path):
    tsv = tmp_path / "mrpc.tsv"
    lines = ["\ufeffQuality\t#1 String\t#2 String"] + [
        f'{i % 2}\tHe said " the film was great .\tThe plot was "boring\' .' for i in range(12)
    ]
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=str(tsv),
        reader_options={"quoting": 3},
        text_column="#1 String",
        text_pair_column="#2 String",
        label_column="Quality",
    )
    assert data.raw["train"][0]["#1 String"] == 'He said " the film was great .'
    assert data.label_names == ["0", "1"]


def test_print_config_round_trip(tiny_bert, sentiment_files, tmp_path, capsys):
    config = classification_config(tmp_path / "c.yaml", tiny_bert, sentiment_files)
    assert run_cli("fit", "--config", config, "--model.learning_rate", "0.01", "--print_config") == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    assert yaml.safe_load(printed)["model"]["init_args"]["learning_rate"] == 0.01
    assert run_cli("fit", "--config", tmp_path / "printed.yaml", "--print_config") == 0
    assert capsys.readouterr().out == printed


def test_env_var_defaults(tiny_bert, sentiment_files, tmp_path, monkeypatch, capsys):
    config = classification_config(tmp_path / "env.yaml", tiny_bert, sentiment_files)
    monkeypatch.setenv("HFTRAIN_FIT__TRAINER__LOG_EVERY_N_STEPS", "7")
    monkeypatch.setenv("HFTRAIN_FIT__TRAINER__MAX_EPOCHS", "9")  # the config file's value wins over the env
    assert run_cli("fit", "--config", config, "--print_config") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["log_every_n_steps"] == 7 and printed["trainer"]["max_epochs"] == 2


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_DATA / "glue" / "MRPC").is_dir() or minilm_path() is None,
    reason="needs ../shared/data/glue/MRPC and the demo extra",
)
def test_minilm_on_mrpc_reaches_the_hf_trainer(tmp_path):
    config = REPO / "configs" / "glue" / "mrpc_minilm_local.yaml"
    data = SHARED_DATA / "glue" / "MRPC"
    assert (
        run_cli(
            "fit",
            "--config",
            config,
            "--model.model_name_or_path",
            minilm_path(),
            "--data.train_file",
            data / "train.tsv",
            "--data.validation_file",
            data / "dev.tsv",
            "--trainer.enable_progress_bar",
            "false",
        )
        == 0
    )
    final = read_results(tmp_path / "runs" / "mrpc_minilm_local" / "version_0")["final"]
    assert final["val/accuracy"] >= 0.77 and final["val/f1"] >= 0.84  # README results: 0.7966 / 0.8614


def test_predictions_come_back_in_input_order(fitted_run, tmp_path):
    """Prediction batches are formed longest first; the rows are written in the predict file's order."""
    config, run = fitted_run
    texts = [" ".join(["the film was great"] * n + ["a boring plot"] * (5 - n)) for n in (0, 5, 1, 4, 2, 3)]
    texts = [texts[i][: 6 + 11 * i] for i in range(len(texts))]  # lengths that differ, not sorted
    predict = write_csv(tmp_path / "varied.csv", [{"text": t} for t in texts])
    args = ["--config", config, "--ckpt_path", "best", "--data.predict_file", predict, "--data.eval_batch_size", 2]
    assert run_cli("predict", *args) == 0
    newest = max(run.glob("predictions*.jsonl"), key=lambda p: p.stat().st_mtime)
    rows = [json.loads(line) for line in newest.read_text().splitlines()]
    classify = pipeline("text-classification", model=str(run / "hf_model"), top_k=None)
    for text, row in zip(texts, rows, strict=True):
        expected = {r["label"]: r["score"] for r in classify([text])[0]}
        assert row["scores"] == pytest.approx(expected, abs=1e-5), text


def test_the_run_says_what_ran_first_screen_card_and_files(tiny_bert, sentiment_files, tmp_path, capsys, caplog):
    """`--optimizer` said on the first screen and recorded in the card instead of AdamW's settings; the card's
    base model, trained rows and test metrics; the export readable as its siblings; epochs counted from 1."""
    from huggingface_hub import ModelCard

    config = classification_config(tmp_path / "sgd.yaml", tiny_bert, sentiment_files, trainer__max_epochs=1)
    sgd = ["--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.1", "--trainer.limit_train_batches", "2"]
    assert run_cli("fit", "--config", config, *sgd) == 0
    out = capsys.readouterr().out  # Lightning's info lines go to the log, the final line is printed
    assert (
        "Optimizer: torch.optim.SGD (lr 0.1, " in caplog.text
        and "replaces hftrain's AdamW and linear warmup" in caplog.text
    )
    assert "(best val/accuracy = " in out and out.rstrip().endswith("at epoch 1)"), out
    run = tmp_path / "runs" / "sgd" / "version_0"
    export = run / "hf_model"
    card = ModelCard.load(export / "README.md")
    assert "| optimizer | torch.optim.SGD |" in card.text and "| optimizer.lr | 0.1 |" in card.text
    assert "model.learning_rate" not in card.text and "adam_beta1" not in card.text
    assert card.data.base_model is None  # a local folder is no Hub model
    assert f"fine-tuned from `{Path(tiny_bert).parent.name}/{Path(tiny_bert).name}`" in card.text
    assert str(tiny_bert) not in card.text  # nor a path on this machine
    assert "train.csv (96 rows, of which at most 32 trained per epoch" in card.text
    assert "Best (epoch 1, step 2)" in card.text and "Test (" not in card.text
    modes = {path.name: path.stat().st_mode & 0o777 for path in export.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~current_umask(), modes
    assert run_cli("test", "--config", config, "--ckpt_path", "best") == 0
    card = ModelCard.load(export / "README.md")
    test = read_results(run)["test"]
    assert "Test (the weights of this folder):" in card.text and f"| test/loss | {test['test/loss']:.6g} |" in card.text
    assert run_cli("test", "--config", config, "--ckpt_path", "best") == 0  # again: the section replaced
    assert ModelCard.load(export / "README.md").text.count("Test (") == 1


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@pytest.mark.parametrize("stage", ["test", "val"])
def test_scoring_rows_without_labels_is_refused_by_name(tiny_bert, stage):
    from hftrain import HFTrainError, MultipleChoice

    batch = {"input_ids": torch.tensor([[2, 5, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    named = f"The {'validation' if stage == 'val' else stage} data has no labels, so there is nothing to score"
    with pytest.raises(HFTrainError, match=named):
        TextClassification(model_name_or_path=tiny_bert, label_names=["neg", "pos"]).evaluate(batch, stage)
    choices = {name: value[None] for name, value in batch.items()}  # one row of one choice
    with pytest.raises(HFTrainError, match=named):
        MultipleChoice(model_name_or_path=tiny_bert).evaluate(choices, stage)
