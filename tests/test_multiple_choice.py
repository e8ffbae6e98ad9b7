"""Multiple choice end to end: SWAG's columns through the CLI, the general form with any number of choices,
predictions, the export read by transformers alone, and bad input."""

import json
import random

import pytest
import torch
import yaml
from conftest import FILLER, NEGATIVE, POSITIVE
from helpers import run_cli, write_jsonl
from transformers import AutoModelForMultipleChoice, AutoTokenizer

from hftrain.core.errors import HFTrainError
from hftrain.core.runs import read_results
from hftrain.tasks.multiple_choice import CHOICE_MASK, MultipleChoice, MultipleChoiceData

TASK = "hftrain.tasks.multiple_choice"


def swag_rows(n: int, seed: int, choices: int = 4) -> list[dict]:
    """Rows in the shape of run_swag's fixture (swag/sample.json): sent1, sent2, ending0..3, label. The right
    ending is the one with a positive word, the others carry negative ones, so a working loop learns it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randrange(choices)
        endings = {
            f"ending{i}": " ".join([rng.choice(POSITIVE if i == label else NEGATIVE), *rng.sample(FILLER, 2)])
            for i in range(choices)
        }
        rows.append({**endings, "label": label, "sent1": " ".join(rng.sample(FILLER, 5)), "sent2": "the film was"})
    return rows


def general_rows(n: int, seed: int) -> list[dict]:
    """The general form, with 2 to 5 choices per row (ARC-style)."""
    rows = []
    for row in swag_rows(n, seed, choices=5):
        count = max(2, row["label"] + 1, random.Random(row["sent1"]).randint(2, 5))
        rows.append(
            {"context": row["sent1"], "choices": [row[f"ending{i}"] for i in range(count)], "label": row["label"]}
        )
    return rows


def config_file(path, model: str, files: dict[str, str], **data) -> str:
    config = {
        "model": {
            "class_path": f"{TASK}.MultipleChoice",
            "init_args": {"model_name_or_path": model, "learning_rate": 1e-2},
        },
        "data": {
            "class_path": f"{TASK}.MultipleChoiceData",
            "init_args": {f"{split}_file": file for split, file in files.items()} | {"batch_size": 8, **data},
        },
        "trainer": {"max_epochs": 4, "enable_progress_bar": False, "enable_model_summary": False},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_swag_columns_fit_predict_and_export(tiny_bert, tmp_path):
    files = {
        "train": write_jsonl(tmp_path / "train.json", swag_rows(64, 1)),
        "validation": write_jsonl(tmp_path / "dev.json", swag_rows(16, 2)),
        "predict": write_jsonl(
            tmp_path / "predict.json", [{k: v for k, v in r.items() if k != "label"} for r in swag_rows(6, 3)]
        ),
    }
    config = config_file(tmp_path / "swag.yaml", tiny_bert, files)
    assert run_cli("fit", "--config", config) == 0
    run = tmp_path / "runs" / "swag" / "version_0"
    results = read_results(run)
    assert results["monitor"] == "val/accuracy"
    assert results["best"]["val/accuracy"] >= 0.9  # chance is 0.25

    assert run_cli("predict", "--config", config, "--ckpt_path", "best") == 0
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    expected = swag_rows(6, 3)
    assert [r["context"] for r in rows] == [r["sent1"] for r in expected]
    for row, gold in zip(rows, expected, strict=True):
        # each choice is read as run_swag reads it: sent2, then the ending
        assert row["choices"] == [f"the film was {gold[f'ending{i}']}" for i in range(4)]
        assert row["choice"] == row["choices"][row["label"]] and "gold" not in row
        assert len(row["scores"]) == 4 and sum(row["scores"]) == pytest.approx(1.0)
        assert row["score"] == max(row["scores"])
    assert sum(r["label"] == g["label"] for r, g in zip(rows, expected, strict=True)) >= 5

    # the export alone (transformers, no hftrain) scores choices as the best checkpoint does
    module = MultipleChoice.load_from_checkpoint(results["best_checkpoint"], map_location="cpu").eval()
    exported = AutoModelForMultipleChoice.from_pretrained(run / "hf_model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "hf_model")
    pairs = tokenizer(["a film"] * 3, ["great story", "awful plot", "sad acting"], padding=True, return_tensors="pt")
    batch = {k: v.unsqueeze(0) for k, v in pairs.items()}
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, module(**batch).logits)


def test_general_form_takes_any_number_of_choices(tiny_bert, tmp_path):
    """Rows of 2 to 5 choices: a batch pads the shorter lists, the padding gets no probability and no loss, and
    predictions score exactly the row's own choices."""
    data = MultipleChoiceData(
        tokenizer_name=tiny_bert,
        train_file=write_jsonl(tmp_path / "train.jsonl", general_rows(48, 1)),
        validation_file=write_jsonl(tmp_path / "dev.jsonl", general_rows(16, 2)),
        batch_size=8,
    )
    assert (data.context_column, data.choices_column, data.ending_columns) == ("context", "choices", None)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    counts = [len(r["choices"]) for r in batch["row"]]
    assert batch["input_ids"].shape[:2] == (len(counts), max(counts)) and min(counts) < max(counts)
    assert batch[CHOICE_MASK].sum(-1).tolist() == counts

    module = MultipleChoice(model_name_or_path=tiny_bert).eval()
    with torch.no_grad():
        outputs = module(**{k: v for k, v in batch.items() if k != "row"})
    probs = outputs.logits.softmax(-1)
    assert (probs[~batch[CHOICE_MASK]] == 0).all()
    real = [logits[:n] for logits, n in zip(outputs.logits, counts, strict=True)]
    expected = torch.stack(
        [torch.nn.functional.cross_entropy(r, label) for r, label in zip(real, batch["labels"], strict=True)]
    )
    torch.testing.assert_close(outputs.loss, expected.mean())

    predictions = module.predict(
        [("a film", ["great plot", "bad plot"]), ("a film", ["x", "y", "awful", "fine"])], data
    )
    assert [len(p["scores"]) for p in predictions] == [2, 4]
    assert [p["choice"] for p in predictions] == [p["choices"][p["label"]] for p in predictions]


def test_hidden_labels_make_an_unlabelled_split(tiny_bert, tmp_path):
    """SWAG's test split on the Hub has label -1 everywhere: it is read as unlabelled, for predict."""
    rows = [{**r, "label": -1} for r in swag_rows(4, 1)]
    data = MultipleChoiceData(
        tokenizer_name=tiny_bert,
        train_file=write_jsonl(tmp_path / "train.json", swag_rows(8, 1)),
        predict_file=write_jsonl(tmp_path / "test.json", rows),
    )
    assert "label" not in data.raw["predict"].column_names
    assert data.ending_columns == ["ending0", "ending1", "ending2", "ending3"] and data.question_column == "sent2"


@pytest.mark.parametrize(
    ("rows", "settings", "message"),
    [
        ([{"context": "a", "choices": ["x", "y"], "label": 2}] * 4, {}, "label 2 at row 1"),
        ([{"context": "a", "choices": ["x"], "label": 0}] * 4, {}, "at least 2 choice texts"),
        ([{"context": "a", "choices": ["x", "y"], "label": "B"}] * 4, {}, "index of the right one, 0 to 1"),
        ([{"context": "a", "options": ["x", "y"], "label": 0}] * 4, {}, r"no column 'choices' \(data.choices_column\)"),
        (
            [{"context": "a", "choices": ["x", "y"], "label": 0}] * 4,
            {"choices_column": "choices", "ending_columns": ["x", "y"]},
            "Set exactly one",
        ),
    ],
)
def test_bad_input_is_one_clear_error(tiny_bert, tmp_path, rows, settings, message):
    with pytest.raises(HFTrainError, match=message):
        MultipleChoiceData(tokenizer_name=tiny_bert, train_file=write_jsonl(tmp_path / "t.jsonl", rows), **settings)
