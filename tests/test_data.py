"""The base data module's pure parts: Hub split names and the tokenizer fingerprint that keys the cache."""

import datasets

from hftrain.core.data import TaskDataModule, column, tokenizer_fingerprint
from hftrain.core.pretrained import load_tokenizer


def splits(*names: str) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_dict({"x": [1]}) for name in names})


def test_hub_split_names_map_to_ours():
    name = TaskDataModule._hub_split_name
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
