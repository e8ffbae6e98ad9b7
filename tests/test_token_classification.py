"""Token classification end to end: CoNLL/JSONL input, label alignment, bad input, the CLI round trip,
predictions and the exported model in a `transformers` pipeline."""

import json
import random
from pathlib import Path

import datasets
import pytest
import yaml
from conftest import FILLER, NEGATIVE, POSITIVE, REPO, SHARED_DATA, minilm_path
from helpers import run_cli, write_jsonl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import pipeline

from hftrain.cli import HFTrainCLI
from hftrain.core.errors import HFTrainError
from hftrain.core.runs import read_results
from hftrain.tasks.token_classification import TokenClassification, TokenClassificationData

TASK = "hftrain.tasks.token_classification.TokenClassification"
TASK_DATA = "hftrain.tasks.token_classification.TokenClassificationData"
# (words that begin an entity, words that continue one): the word alone decides its tag, which a tiny
# model learns in seconds
TYPE_WORDS = {"PER": (POSITIVE[:4], POSITIVE[4:]), "LOC": (NEGATIVE[:4], NEGATIVE[4:])}


def ner_rows(n: int, seed: int) -> list[dict[str, list[str]]]:
    """Sentences of filler words with one or two entities of one or two words, tagged IOB2."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for part in rng.sample(["x", "x", "x", "x", "PER", "LOC"], rng.randint(4, 6)):
            if part == "x":
                tokens.append(rng.choice(FILLER))
                tags.append("O")
                continue
            begin, inside = TYPE_WORDS[part]
            size = rng.randint(1, 2)
            tokens += [rng.choice(begin)] + [rng.choice(inside)] * (size - 1)
            tags += [f"B-{part}"] + [f"I-{part}"] * (size - 1)
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def write_conll(path: Path, rows: list[dict], docstart: bool = True) -> Path:
    """The 4-column CoNLL-2003 layout (token POS chunk NER) with -DOCSTART- lines."""
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for row in rows:
        lines += [f"{t} NN I-NP {tag}" for t, tag in zip(row["tokens"], row["ner_tags"], strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def data_module(tiny_bert: str, **settings) -> TokenClassificationData:
    return TokenClassificationData(tokenizer_name=tiny_bert, **settings)


def ner_files(folder: Path) -> dict[str, str]:
    """Training JSONL, a CoNLL dev file, a test .txt without -DOCSTART-, a predict JSONL without tags."""
    return {
        "train": str(write_jsonl(folder / "train.jsonl", ner_rows(160, seed=1))),
        "validation": str(write_conll(folder / "dev.conll", ner_rows(32, seed=2))),
        "test": str(write_conll(folder / "test.txt", ner_rows(32, seed=3), docstart=False)),
        "predict": str(write_jsonl(folder / "predict.jsonl", [{"tokens": r["tokens"]} for r in ner_rows(12, 4)])),
    }


def ner_config(path: Path, model: str, files: dict[str, str], **data_settings) -> Path:
    config = {
        "model": {"class_path": TASK, "init_args": {"model_name_or_path": model, "learning_rate": 5e-3}},
        "data": {
            "class_path": TASK_DATA,
            "init_args": {f"{split}_file": f for split, f in files.items()} | {"batch_size": 16} | data_settings,
        },
        "trainer": {"max_epochs": 8, "enable_progress_bar": False, "enable_model_summary": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def fitted_run(tiny_bert, tmp_path_factory):
    """One tiny fit, test and predict through the CLI, shared by the tests that read its outputs."""
    folder = tmp_path_factory.mktemp("ner-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("HFTRAIN_CACHE", str(folder / "cache"))
        config = ner_config(folder / "ner.yaml", tiny_bert, ner_files(folder))
        assert run_cli("fit", "--config", config) == 0
        assert run_cli("test", "--config", config, "--ckpt_path", "best") == 0
        assert run_cli("predict", "--config", config, "--ckpt_path", "best") == 0
    return folder / "runs" / "ner" / "version_0"


def test_fit_learns_entities_and_logs_per_type_scores(fitted_run):
    results = read_results(fitted_run)
    assert results["monitor"] == "val/f1"
    best = results["best"]
    assert best["val/f1"] >= 0.9  # the word decides the type: a working loop learns it
    assert {"val/f1_PER", "val/f1_LOC", "val/precision_PER", "val/recall_LOC", "val/accuracy"} <= set(best)
    assert best["val/support_PER"] + best["val/support_LOC"] > 32
    assert results["test"]["test/f1"] >= 0.9 and "test/f1_LOC" in results["test"]
    # validation examples in TensorBoard: words, gold tags, predicted tags
    events = EventAccumulator(str(fitted_run), size_guidance={"tensors": 0}).Reload()
    table = events.Tensors("val/examples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| input | gold | prediction |") and "B-PER" in table


def test_predictions_hold_words_tags_and_entities(fitted_run):
    rows = [json.loads(line) for line in (fitted_run / "predictions.jsonl").read_text().splitlines()]
    expected = ner_rows(12, 4)
    assert [r["tokens"] for r in rows] == [e["tokens"] for e in expected]
    assert [r["id"] for r in rows] == list(range(12))  # the row in predict.jsonl, to join back
    assert not any("gold" in r for r in rows)  # the predict file has no tags
    hits = 0
    for row, truth in zip(rows, expected, strict=True):
        assert len(row["tags"]) == len(row["tokens"])
        for entity in row["entities"]:
            assert entity["text"] == " ".join(row["tokens"][entity["start"] : entity["end"]])
            assert row["tags"][entity["start"]].endswith(entity["type"])
        hits += row["tags"] == truth["ner_tags"]
    assert hits >= 10


def test_exported_model_works_in_a_pipeline_like_the_module(fitted_run):
    """`pipeline(aggregation_strategy="simple")` on the exported model finds the entities predict wrote."""
    tagger = pipeline("token-classification", model=str(fitted_run / "hf_model"), aggregation_strategy="simple")
    rows = [json.loads(line) for line in (fitted_run / "predictions.jsonl").read_text().splitlines()]
    for row in rows:
        text = " ".join(row["tokens"])
        starts = [len(" ".join(row["tokens"][:i])) + (i > 0) for i in range(len(row["tokens"]))]
        found = [
            (
                group["entity_group"],
                starts.index(group["start"]),
                starts.index(group["start"]) + len(group["word"].split()),
            )
            for group in tagger(text)
        ]
        assert found == [(e["type"], e["start"], e["end"]) for e in row["entities"]], text


def test_conll_files_skip_docstart_and_pick_the_tag_column(tiny_bert, tmp_path):
    rows = ner_rows(3, seed=5)
    path = write_conll(tmp_path / "train.conll", rows)
    ner = data_module(tiny_bert, train_file=str(path), validation_split_percentage=0)
    assert ner.raw["train"]["tokens"] == [r["tokens"] for r in rows]
    assert ner.raw["train"]["ner_tags"] == [r["ner_tags"] for r in rows]
    assert ner.label_names == sorted({t for r in rows for t in r["ner_tags"]})
    pos = data_module(tiny_bert, train_file=str(path), validation_split_percentage=0, conll_tag_index=1)
    assert pos.label_names == ["NN"]


def test_tags_given_as_class_label_ids_keep_their_names(tiny_bert, tmp_path):
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rows = ner_rows(8, seed=6)
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=names)),
        }
    )
    table = datasets.Dataset.from_list(
        [{"tokens": r["tokens"], "ner_tags": [names.index(t) for t in r["ner_tags"]]} for r in rows],
        features=features,
    )
    table.to_parquet(tmp_path / "train.parquet")
    # learnt from the ClassLabel, or given in another order: the ids are mapped by name either way
    for given, expected in ((None, names), (names[::-1], names[::-1])):
        ner = data_module(
            tiny_bert,
            train_file=str(tmp_path / "train.parquet"),
            validation_split_percentage=0,
            label_names=given,
        )
        assert ner.label_names == expected
        ner.setup("fit")
        labels = [label for label in ner.datasets["train"][0]["labels"] if label != -100]
        assert labels == [expected.index(t) for t in rows[0]["ner_tags"]]


def test_first_subword_carries_the_tag_unless_all_subwords_are_labelled(tiny_bert, tmp_path):
    # "plots" and "superbly" are two subwords each in the tiny vocabulary
    rows = [{"tokens": ["the", "plots", "superbly", "good"], "ner_tags": ["O", "O", "B-PER", "I-PER"]}]
    train = str(write_jsonl(tmp_path / "train.jsonl", rows))
    names = ["O", "B-PER", "I-PER"]
    for all_subwords, expected in ((False, [0, 0, -100, 1, -100, 2]), (True, [0, 0, 0, 1, 2, 2])):
        ner = data_module(
            tiny_bert,
            train_file=train,
            validation_file=train,
            label_names=names,
            label_all_subwords=all_subwords,
        )
        ner.setup("fit")
        example = ner.datasets["validation"][0]
        assert example["labels"] == [-100, *expected, -100]
        assert example["word_ids"] == [-100, 0, 1, -100, 2, -100, 3, -100]


def test_truncation_keeps_whole_words_and_warns_with_a_count(tiny_bert, tmp_path):
    rows = [
        {
            "tokens": ["the", "plots", "superbly", "good", "film"],
            "ner_tags": ["O", "O", "B-PER", "I-PER", "O"],
        },
        {"tokens": ["a", "film"], "ner_tags": ["O", "O"]},
    ]
    train = str(write_jsonl(tmp_path / "train.jsonl", rows))
    # room for 4 subwords: "the plots" (3) fit, "superbly" (2) would be cut in two, so it goes whole
    ner = data_module(tiny_bert, train_file=train, validation_split_percentage=0, max_length=6)
    with pytest.warns(UserWarning, match=r"1 of 2 sentences in the train split .* last 3 words"):
        ner.setup("fit")
    first = ner.datasets["train"][0]
    assert len(first["input_ids"]) == 5
    assert [label for label in first["labels"] if label != -100] == [ner.label_names.index("O")] * 2


@pytest.mark.parametrize(
    ("files", "settings", "message"),
    [
        (
            {"train.conll": "the O\nfilm B-PER\n\nfilm X-PER\n"},
            {"label_names": ["O", "B-PER"]},
            r"train.conll\) at row 2 \(line 4\) has the tag 'X-PER'",
        ),
        (
            {"train.conll": "the O\n", "dev.conll": "the O\nfilm B-LOC\n"},
            {},
            r"validation data \(.*dev.conll\) at row 1 \(line 2\) has the tag 'B-LOC'",
        ),
        (
            {"train.conll": "the NN O\nfilm NN\n"},
            {},
            r"train.conll line 2 has 2 columns where the file's first line has 3",
        ),
        ({"train.conll": "the NN O\n"}, {"conll_tag_index": 5}, r"conll_tag_index 5 points at none of them"),
        (
            {"train.jsonl": '{"tokens": ["a", "film"], "ner_tags": ["O"]}\n'},
            {},
            r"row 1 has 2 words but 1 tags",
        ),
        (
            {"train.jsonl": '{"tokens": ["a"], "ner_tags": ["O"]}\n{"tokens": [], "ner_tags": []}\n'},
            {},
            r"row 2.*non-empty",
        ),
    ],
)
def test_bad_input_names_the_file_and_line(tiny_bert, tmp_path, files, settings, message):
    paths = {}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        paths["validation_file" if name.startswith("dev") else "train_file"] = str(tmp_path / name)
    with pytest.raises(HFTrainError, match=message):
        data_module(tiny_bert, validation_split_percentage=0, **paths, **settings)


def test_tags_outside_a_span_scheme_are_scored_by_accuracy(tiny_bert):
    module = TokenClassification(model_name_or_path=tiny_bert, label_names=["DT", "NN", "VB"])
    assert module.scheme is None and module.monitor == "val/accuracy"
    with pytest.raises(HFTrainError, match="span_mode strict needs span tags"):
        TokenClassification(model_name_or_path=tiny_bert, label_names=["DT", "NN"], span_mode="strict")
    with pytest.raises(HFTrainError, match="Set model.tag_scheme"):
        TokenClassification(
            model_name_or_path=tiny_bert,
            label_names=["O", "B-X", "E-X"],
            tag_scheme="IOB2",
            span_mode="strict",
        )


def test_hub_config_instantiates(tiny_bert, tmp_path, monkeypatch):
    """configs/ner/conll2003.yaml with the tiny model and a local file shaped like the Hub's conll2003."""
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    tags = datasets.List(datasets.ClassLabel(names=names))
    rows = [{"tokens": r["tokens"], "ner_tags": [names.index(t) for t in r["ner_tags"]]} for r in ner_rows(8, 7)]
    datasets.Dataset.from_list(
        rows,
        features=datasets.Features({"tokens": datasets.List(datasets.Value("string")), "ner_tags": tags}),
    ).to_parquet(tmp_path / "train.parquet")
    monkeypatch.chdir(REPO)
    cli = HFTrainCLI(
        [
            "--config",
            "configs/ner/conll2003.yaml",
            "--model.model_name_or_path",
            tiny_bert,
            "--data.dataset_name",
            "null",
            "--data.train_file",
            str(tmp_path / "train.parquet"),
            "--trainer.logger",
            "false",
        ],
        run=False,
    )
    assert cli.model.tags == names and cli.model.scheme == "IOB2" and cli.model.monitor == "val/f1"


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir() or minilm_path() is None, reason="needs shared data")
def test_local_config_reads_the_shared_conll_files(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository
    cli = HFTrainCLI(
        [
            "--config",
            "configs/ner/conll2003_minilm_local.yaml",
            "--model.model_name_or_path",
            minilm_path(),
            "--trainer.logger",
            "false",
        ],
        run=False,
    )
    assert cli.datamodule.label_names == [
        "B-LOC",
        "B-MISC",
        "B-ORG",
        "B-PER",
        "I-LOC",
        "I-MISC",
        "I-ORG",
        "I-PER",
        "O",
    ]
    assert len(cli.datamodule.raw["train"]) == 14041 and len(cli.datamodule.raw["validation"]) == 3250
    assert cli.model.model.config.id2label[8] == "O" and cli.model.scheme == "IOB2"


def test_validation_loss_is_a_mean_over_tokens_whatever_the_batches(tiny_bert, tmp_path):
    """`val/loss` averages over every labelled token of the set, so the same weights score the same with
    batches of 1, 3 or all 24 sentences, formed longest first: the token mean of one batch of the whole set.
    A mean of the batches' means (before) gave a short sentence's tokens more weight in small batches."""
    import torch
    from lightning.pytorch import Trainer

    rows = write_jsonl(tmp_path / "dev.jsonl", ner_rows(24, seed=5))
    torch.manual_seed(0)
    module = TokenClassification(model_name_or_path=tiny_bert, label_names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    losses = []
    for size in (1, 3, 24):
        data = data_module(tiny_bert, label_names=module.tags, validation_file=rows, eval_batch_size=size)
        trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        losses.append(trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"])
    (batch,) = data.val_dataloader()  # the last data module's: one batch of all 24 sentences
    with torch.no_grad():
        whole = module.eval()(**batch).loss.item()
    assert losses == pytest.approx([whole] * 3, abs=1e-6)
