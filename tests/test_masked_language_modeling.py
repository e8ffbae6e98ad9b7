"""Masked language modelling: packing or line by line, masks fixed once on validation, whole-word masking,
the fill-mask export, and the domain-adaptation flow (masked LM on domain text, then a classifier from its export).

The model is the tiny random BERT of conftest.py; its WordPiece vocabulary is trained on the sentiment words,
which the domain text here is made of.
"""

from pathlib import Path

import pytest
import torch
from conftest import FILLER, NEGATIVE, POSITIVE, sentiment_rows
from helpers import run_cli
from transformers import pipeline

from hftrain.core.errors import HFTrainError
from hftrain.core.losses import IGNORE_INDEX
from hftrain.core.runs import read_results
from hftrain.tasks.masked_language_modeling import MaskedLanguageModeling, MaskedLanguageModelingData

TASK = "hftrain.tasks.masked_language_modeling"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def reviews(n: int, seed: int) -> list[str]:
    """Domain text: short reviews, one per line (the sentences the classifier later labels)."""
    return [row["text"] for row in sentiment_rows(n, seed)]


def data(tiny_bert: str, tmp_path: Path, **settings) -> MaskedLanguageModelingData:
    files = {
        "train_file": write_lines(tmp_path / "train.txt", reviews(40, 1)),
        "validation_file": write_lines(tmp_path / "valid.txt", reviews(20, 2)),
    }
    return MaskedLanguageModelingData(tokenizer_name=tiny_bert, **(files | {"max_length": 16} | settings))


def test_packing_concatenates_documents_into_full_blocks(tiny_bert, tmp_path):
    packed = data(tiny_bert, tmp_path)
    packed.setup("fit")
    lines = reviews(40, 1)
    expected = [i for line in lines for i in packed.tokenizer(line)["input_ids"]]
    blocks = packed.datasets["train"]["input_ids"]
    assert [i for block in blocks for i in block] == expected  # every token, [CLS] … [SEP] per line
    assert [len(b) for b in blocks][:-1] == [16] * (len(blocks) - 1)
    by_line = data(tiny_bert, tmp_path, line_by_line=True, max_length=5)
    by_line.setup("fit")
    rows = by_line.datasets["train"]["input_ids"]
    assert len(rows) == 40 and all(len(r) == 5 and r[-1] == by_line.tokenizer.sep_token_id for r in rows)


def test_validation_masks_are_drawn_once_and_the_same_in_every_run(tiny_bert, tmp_path):
    first = data(tiny_bert, tmp_path, cache_dir=str(tmp_path / "a"))
    second = data(tiny_bert, tmp_path, cache_dir=str(tmp_path / "b"), batch_size=3)
    other_seed = data(tiny_bert, tmp_path, cache_dir=str(tmp_path / "c"), seed=7)
    for d in (first, second, other_seed):
        d.setup("fit")
    batches = [[b for b in d.val_dataloader()] for d in (first, first, second)]
    for a, b in zip(batches[0], batches[1], strict=True):  # two validations of one run
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    validation = first.datasets["validation"]
    assert validation["labels"] == second.datasets["validation"]["labels"]  # a second run, other batch size
    assert validation["labels"] != other_seed.datasets["validation"]["labels"]
    labels = torch.tensor([label for row in validation["labels"] for label in row])
    ids = torch.tensor([i for row in validation["input_ids"] for i in row])
    scored = labels != IGNORE_INDEX
    assert 0.05 < scored.float().mean() < 0.3  # mlm_probability 0.15 of the non-special tokens
    assert (ids[scored] == first.tokenizer.mask_token_id).float().mean() > 0.6  # 80% become [MASK]
    # training batches draw new masks every time
    train = [next(iter(first.train_dataloader()))["labels"] for _ in range(2)]
    assert not torch.equal(*train)


def test_whole_word_masking_masks_every_piece_of_a_word(tiny_bert, tmp_path):
    # words outside the vocabulary, split into several pieces each
    line = " ".join(["the", "movie", "unrelatedness", "overcomplicated", "misunderstanding", "was", "good"])
    d = MaskedLanguageModelingData(
        tokenizer_name=tiny_bert,
        train_file=write_lines(tmp_path / "train.txt", [line] * 32),
        validation_split_percentage=0,
        line_by_line=True,
        whole_word_mask=True,
        mlm_probability=0.3,
        batch_size=32,
    )
    d.setup("fit")
    word_ids = d.tokenizer(line).word_ids()
    assert len(word_ids) > len(line.split()) + 4  # some words are in pieces
    labels = next(iter(d.train_dataloader()))["labels"]
    for row in labels:
        for word in set(w for w in word_ids if w is not None):
            masked = {bool(row[i] != IGNORE_INDEX) for i, w in enumerate(word_ids) if w == word}
            assert len(masked) == 1, f"word {word} of {line!r} partly masked: {row.tolist()}"
    assert 0.1 < (labels != IGNORE_INDEX).float().mean() < 0.6


def test_domain_adaptation_fill_mask_export_then_a_classifier_from_it(tiny_bert, tmp_path, sentiment_files):
    train = write_lines(tmp_path / "domain.txt", reviews(200, 5))
    valid = write_lines(tmp_path / "domain_valid.txt", reviews(40, 6))
    assert (
        run_cli(
            "fit",
            f"--model={TASK}.MaskedLanguageModeling",
            f"--data={TASK}.MaskedLanguageModelingData",
            f"--model.model_name_or_path={tiny_bert}",
            "--model.learning_rate=1e-3",  # higher rates leave this tiny encoder's [CLS] too hard to fine-tune
            f"--data.train_file={train}",
            f"--data.validation_file={valid}",
            "--data.max_length=32",
            "--data.batch_size=8",
            "--trainer.max_epochs=3",
            "--trainer.logger.init_args.name=domain",
            *QUIET,
        )
        == 0
    )
    run = tmp_path / "runs" / "domain" / "version_0"
    results = read_results(run)
    assert results["monitor"] == "val/perplexity"
    history = [h["val/perplexity"] for h in results["history"]]
    assert history[-1] < history[0]
    export = str(run / "hf_model")

    fill = pipeline("fill-mask", model=export, device="cpu")
    filled = fill("the movie was [MASK]", top_k=3)
    assert len(filled) == 3 and all(f["token_str"] in POSITIVE + NEGATIVE + FILLER for f in filled[:1])

    assert (
        run_cli(
            "fit",
            "--model=hftrain.tasks.text_classification.TextClassification",
            "--data=hftrain.tasks.text_classification.TextClassificationData",
            f"--model.model_name_or_path={export}",
            "--model.learning_rate=1e-2",
            f"--data.train_file={sentiment_files['train']}",
            f"--data.validation_file={sentiment_files['validation']}",
            "--data.batch_size=16",
            "--trainer.max_epochs=6",
            "--trainer.logger.init_args.name=classifier",
            *QUIET,
        )
        == 0
    )
    classifier = read_results(tmp_path / "runs" / "classifier" / "version_0")
    assert classifier["best"]["val/accuracy"] >= 0.9


def test_predict_fills_each_mask_as_the_fill_mask_pipeline_ranks(tiny_bert, tmp_path):
    d = data(tiny_bert, tmp_path)
    module = MaskedLanguageModeling(model_name_or_path=tiny_bert, top_k=4)
    rows = module.predict(["the film was [MASK]", "a [MASK] plot , [MASK] acting"], d)
    assert [len(r["fills"]) for r in rows] == [1, 2] and rows[1]["text"] == "a [MASK] plot , [MASK] acting"
    export = module.export(tmp_path / "export")
    expected = pipeline("fill-mask", model=str(export), device="cpu")("the film was [MASK]", top_k=4)
    assert [f["token"] for f in rows[0]["fills"][0]] == [e["token_str"] for e in expected]
    assert [f["score"] for f in rows[0]["fills"][0]] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_data_read_through_the_hub_loader_from_a_dataset_folder(tiny_bert, tmp_path):
    folder = tmp_path / "domain-dataset"  # what `datasets.load_dataset` reads as a Hub dataset, offline
    folder.mkdir()
    write_lines(folder / "train.txt", reviews(30, 1))
    write_lines(folder / "validation.txt", reviews(10, 2))
    d = MaskedLanguageModelingData(tokenizer_name=tiny_bert, dataset_name=str(folder), max_length=16)
    assert (len(d.raw["train"]), len(d.raw["validation"])) == (30, 10)
    d.setup("fit")
    assert "labels" in d.datasets["validation"].column_names


def test_bad_inputs_are_refused_before_the_model_loads(tiny_bert, tiny_gpt2, tmp_path, capsys):
    with pytest.raises(HFTrainError, match="has no mask token, so it cannot be trained"):
        data(tiny_gpt2, tmp_path)
    with pytest.raises(HFTrainError, match="mlm_probability must be between 0 and 1, got 1.5"):
        data(tiny_bert, tmp_path, mlm_probability=1.5)
    with pytest.raises(HFTrainError, match=r"max_length 512 is longer than the model takes \(128"):
        data(tiny_bert, tmp_path, max_length=512)
    predict = write_lines(tmp_path / "predict.txt", ["the film was [MASK]", "no mask here"])
    status = run_cli(
        "predict",
        f"--model={TASK}.MaskedLanguageModeling",
        f"--data={TASK}.MaskedLanguageModelingData",
        f"--model.model_name_or_path={tiny_bert}",
        f"--data.predict_file={predict}",
        *QUIET,
    )
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "predict.txt" in err and "no mask token [MASK] in row 2" in err
    assert not list(tmp_path.rglob("predictions.jsonl"))
