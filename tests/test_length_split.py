"""Training batches split into parts of similar length (`data.split_by_length`): the cut is the cheapest one,
every row is served once and padded only to its part's longest, a batch not worth cutting is served as the
task's collator makes it, and the split is on by default on CPU only. That training on split batches takes
the steps of whole ones is checked against the HF Trainer in test_vs_hf_trainer.py."""

import itertools
import random
from types import SimpleNamespace

import pytest
import torch
from conftest import counting
from test_language_modeling import write_paragraphs

from hftrain.core.length_split import PARTS, LengthSplit, batch_parts, batch_size, split_points
from hftrain.tasks.language_modeling import LanguageModelingData


def cost(lengths: list[int], ranges: list[tuple[int, int]], part_cost: int) -> int:
    return sum((stop - start) * lengths[start] + part_cost for start, stop in ranges)


def every_cut(size: int):
    for cuts in itertools.product([False, True], repeat=size - 1):
        points = [0, *(i for i, cut in enumerate(cuts, 1) if cut), size]
        yield list(itertools.pairwise(points))


@pytest.mark.parametrize("part_cost", [0, 7, 64])
def test_split_points_find_the_cheapest_cut(part_cost):
    rng = random.Random(part_cost)
    for _ in range(60):
        lengths = sorted((rng.randint(1, 80) for _ in range(rng.randint(1, 10))), reverse=True)
        ranges = split_points(lengths, part_cost)
        assert [start for start, _ in ranges[1:]] == [stop for _, stop in ranges[:-1]]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(lengths)
        cheapest = min(cost(lengths, cut, part_cost) for cut in every_cut(len(lengths)))
        assert cost(lengths, ranges, part_cost) == cheapest, lengths


def test_a_batch_of_equal_lengths_stays_whole_even_when_parts_are_free():
    assert split_points([9] * 32, part_cost=0) == [(0, 32)]


@pytest.fixture
def collate(tiny_bert):
    from transformers import AutoTokenizer, DataCollatorWithPadding

    return DataCollatorWithPadding(AutoTokenizer.from_pretrained(tiny_bert))


def features(lengths: list[int]) -> list[dict]:
    return [
        {"input_ids": [1000 + row] * length, "attention_mask": [1] * length, "labels": row}
        for row, length in enumerate(lengths)
    ]


def test_split_batch_serves_every_row_once_padded_to_its_part(collate):
    lengths = [60, 4, 5, 58, 3, 61, 6, 59]
    batch = LengthSplit(collate, "input_ids")(features(lengths))
    parts = batch_parts(batch)
    assert len(parts) == 2
    assert [tuple(part["input_ids"].shape) for part in parts] == [(4, 61), (4, 6)]
    served = {}
    for part in parts:
        for ids, mask, label in zip(part["input_ids"], part["attention_mask"], part["labels"], strict=True):
            served[int(label)] = ids[mask.bool()].tolist()
    assert served == {row: [1000 + row] * length for row, length in enumerate(lengths)}
    assert batch_size(batch) == len(lengths)


def test_a_batch_not_worth_cutting_is_the_collators_own(collate):
    rows = features([12, 9, 14, 10, 11, 13, 12, 9])  # cutting saves less than a part costs
    batch = LengthSplit(collate, "input_ids")(rows)
    assert PARTS not in batch
    expected = collate(rows)
    assert batch.keys() == expected.keys()
    assert all(torch.equal(batch[key], expected[key]) for key in expected)


@pytest.mark.parametrize(
    ("device", "setting", "splits"),
    [("cpu", None, True), ("cuda", None, False), ("cpu", False, False), ("cuda", True, True)],
)
def test_split_by_length_is_on_by_default_on_cpu_only(tiny_gpt2, tmp_path, device, setting, splits):
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        train_file=write_paragraphs(tmp_path / "train.txt", counting(20, seed=1)),
        validation_split_percentage=0,
        packing=False,
        split_by_length=setting,
    )
    data.setup("fit")
    data.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device(device)), distributed_sampler_kwargs=None
    )
    assert isinstance(data.train_dataloader().collate_fn, LengthSplit) is splits
