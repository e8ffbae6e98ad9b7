"""The base data module's pure parts: Hub split names and the tokenizer fingerprint that keys the cache."""

import datasets

from hftrain.core.data import TaskDataModule, tokenizer_fingerprint
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
