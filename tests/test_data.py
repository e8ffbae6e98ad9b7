"""The base data module: Hub split names, the tokenizer fingerprint that keys the cache, and files in another
encoding than UTF-8, read by every reader with the one option the error names."""

import json

import datasets
import pytest
from conftest import sentiment_rows
from helpers import TEXT_CLASSIFICATION, TEXT_CLASSIFICATION_DATA, hftrain

from hftrain.cli import HFTrainCLI
from hftrain.core.cache import tokenizer_fingerprint
from hftrain.core.errors import HFTrainError
from hftrain.core.pretrained import load_tokenizer
from hftrain.core.sources import column, hub_split_name
from hftrain.tasks.language_modeling import LanguageModelingData
from hftrain.tasks.question_answering import QuestionAnsweringData
from hftrain.tasks.seq2seq import Seq2SeqData
from hftrain.tasks.text_classification import TextClassificationData
from hftrain.tasks.token_classification import TokenClassificationData


def splits(*names: str) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_dict({"x": [1]}) for name in names})


def test_hub_split_names_map_to_ours():
    name = hub_split_name
    assert [name(s, splits("train", "dev", "test")) for s in ("train", "dev", "test")] == [
        "train",
        "validation",
        "test",
    ]
    assert name("valid", splits("train", "valid")) == "validation"
    mnli = splits("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
    assert [name(s, mnli) for s in mnli] == ["train", "validation", "validation_mismatched", "test", "test_mismatched"]
    # with a plain validation split the variants keep their names
    assert name("validation_extra", splits("validation", "validation_extra")) == "validation_extra"


def test_tokenizer_fingerprint_changes_with_what_changes_the_output(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    same = load_tokenizer(tiny_bert)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(same)
    changed = [load_tokenizer(tiny_bert) for _ in range(3)]
    changed[0].model_max_length = 64
    changed[1].truncation_side = "left"
    changed[2].add_tokens(["brandnewword"])
    prints = {tokenizer_fingerprint(t) for t in changed}
    assert len(prints) == 3 and tokenizer_fingerprint(tokenizer) not in prints


def test_column_reads_a_dataset_in_its_own_row_order_and_passes_batches_through():
    """The data checks read whole columns at once; a shuffled or selected dataset keeps its rows in an
    indices mapping over the Arrow table, and the values must come in the dataset's order, not the table's."""
    table = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(10)], "label": list(range(10))})
    view = table.shuffle(seed=0).select([7, 2, 5])
    assert column(view, "label") == [view[i]["label"] for i in range(3)] != [0, 1, 2]
    assert column(view, "text") == [f"row {v}" for v in column(view, "label")]
    batch = {"label": [3, 1]}
    assert column(batch, "label") is batch["label"]


# ------------------------------------------------------------------ files in another encoding

CAFE = "café crème"
SQUAD = {
    "data": [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": CAFE,
                    "qas": [{"id": "1", "question": "où ?", "answers": [{"text": "café", "answer_start": 0}]}],
                }
            ],
        }
    ]
}
LATIN1_FILES = {
    "csv": (TextClassificationData, "train.csv", f"text,label\n{CAFE},pos\n{CAFE} froid,neg\n", {}),
    "jsonl": (
        TextClassificationData,
        "train.jsonl",
        "".join(json.dumps({"text": CAFE, "label": i % 2}, ensure_ascii=False) + "\n" for i in range(2)),
        {},
    ),
    "conll": (TokenClassificationData, "train.conll", "café B-PER\ncrème O\n\ncrème O\n", {}),
    "txt": (LanguageModelingData, "train.txt", f"{CAFE}\n\n{CAFE} froid\n", {}),
    "parallel text": (Seq2SeqData, "train.en", f"{CAFE}\n", {"source_lang": "en", "target_lang": "fr"}),
    "squad json": (QuestionAnsweringData, "train.json", json.dumps(SQUAD, ensure_ascii=False), {}),
}


@pytest.mark.parametrize("kind", list(LATIN1_FILES))
def test_a_latin1_file_is_read_with_the_option_its_error_names(kind, tiny_bert, tmp_path):
    data_class, name, text, settings = LATIN1_FILES[kind]
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    if kind == "parallel text":
        (tmp_path / "train.fr").write_bytes(f"{CAFE}\n".encode("latin-1"))
    settings = {"tokenizer_name": tiny_bert, "train_file": str(path), "validation_split_percentage": 0, **settings}
    with pytest.raises(
        HFTrainError,
        match=rf"Could not read .*{name}: it is not UTF-8 text \(.*\)\. .*"
        r"--data.reader_options '\{encoding: latin-1\}'",
    ):
        data_class(**settings)
    data = data_class(**settings, reader_options={"encoding": "latin-1"})
    assert CAFE.split()[0] in json.dumps(data.raw["train"][0], ensure_ascii=False)


def test_the_encoding_error_is_the_only_output_and_its_fix_parses(tiny_bert, tmp_path):
    """Through the real command: no line of `datasets` ahead of the message; the option as the message writes
    it, given on the command line, reads the file; options the data already has are kept in the suggestion."""
    path = tmp_path / "train.csv"
    path.write_bytes(
        "".join(["text,label\n"] + [f"café {r['text']},{r['label']}\n" for r in sentiment_rows(12)]).encode("latin-1")
    )
    command = [
        "fit",
        "--model",
        TEXT_CLASSIFICATION,
        "--data",
        TEXT_CLASSIFICATION_DATA,
        "--model.model_name_or_path",
        tiny_bert,
        "--data.train_file",
        path,
    ]
    done = hftrain(*command)
    assert done.returncode == 2
    assert (done.stdout + done.stderr).startswith(f"hftrain: error: Could not read {path}: it is not UTF-8 text")
    assert "--data.reader_options '{encoding: latin-1}'" in done.stderr
    cli = HFTrainCLI(args=[*map(str, command[1:]), "--data.reader_options", "{encoding: latin-1}"], run=False)
    assert cli.datamodule.raw["train"][0]["text"].startswith("café ")
    with pytest.raises(HFTrainError, match=r"--data.reader_options '\{quoting: 3, encoding: latin-1\}'"):
        TextClassificationData(tokenizer_name=tiny_bert, train_file=str(path), reader_options={"quoting": 3})
