"""hftrain's chat fine-tuning against TRL's SFTTrainer, the anchor: on the same tiny chat model, conversations and
seed, both train on the same tokens and, given the same rows in the same order, take the same steps, so their loss
curves and final validation losses agree, without packing and with it (scripts/bench_vs_trl.py, whose functions
these tests run at a small size, shows the curves over several seeds, each side shuffling and packing on its own,
and the speed).

The tolerance, 1e-3 on every step's loss and on the validation loss: the two compute the same mean over the same
tokens in different kernels (TRL's fused log-probabilities, the model's own cross-entropy; packed, TRL's batch
flattened into one padding-free row, hftrain's rows padded), so they part only by rounding, under 1e-5 after these
12 AdamW steps; a real difference would have to hide in the spread between seeds, 0.06-0.09 a step and up to
0.04 in the final validation loss on the benchmark (docs/benchmarks/2026-12-06-chat.md).
"""

import sys
from collections import Counter
from dataclasses import replace

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_vs_trl as bench  # noqa: E402

TOLERANCE = 1e-3


@pytest.fixture
def settings(tiny_chat_gpt2, tmp_path):
    return bench.Settings(
        model=tiny_chat_gpt2,
        train_file=bench.write_conversations(tmp_path / "train.jsonl", 96, seed=1, longest_answer=8, most_turns=2),
        validation_file=bench.write_conversations(tmp_path / "val.jsonl", 32, seed=2, longest_answer=8, most_turns=2),
        max_steps=12,
        batch_size=8,
        blocks=4,
        warmup_steps=2,
        max_length=128,
        eval_batch_size=32,
    )


def assert_same_curves(hftrain: dict, trl: dict) -> None:
    assert len(hftrain["losses"]) == len(trl["losses"]) == 12
    for step, (ours, theirs) in enumerate(zip(hftrain["losses"], trl["losses"], strict=True), 1):
        assert ours == pytest.approx(theirs, abs=TOLERANCE), f"step {step}"
    assert hftrain["losses"][-1] < hftrain["losses"][0] - 0.1  # it learned something
    assert hftrain["val_loss"] == pytest.approx(trl["val_loss"], abs=TOLERANCE)
    assert hftrain["tokens"] == trl["tokens"]  # the same conversation tokens went through both


@pytest.mark.processes
def test_hftrain_takes_trls_steps_on_the_same_conversations(settings):
    hftrain = bench.train_hftrain(settings)
    trl = bench.train_trl(settings, order=bench.train_order(settings))
    # the same tokens: TRL's tokenization of the whole rendering, labels from the template's generation markers;
    # hftrain's piece by piece, labels from the template's rendering without them
    assert len(hftrain["rows"]) == len(trl["rows"]) == 96
    assert bench.same_tokens(hftrain["rows"], trl["rows"]) == 1.0
    assert_same_curves(hftrain, trl)


def conversations(rows) -> Counter:
    """The labelled conversations packed into rows (TRL's, or hftrain's as TRL's), whichever row holds each."""
    rows = bench.as_trl_packed(rows) if "position_ids" in rows.column_names else rows
    found = Counter()
    for ids, labels, lengths in zip(rows["input_ids"], rows["labels"], rows["seq_lengths"], strict=True):
        start = 0
        for length in lengths:
            found[tuple(ids[start : start + length]), tuple(labels[start + 1 : start + length])] += 1
            start += length
    return found


@pytest.mark.processes
def test_packed_hftrain_takes_trls_padding_free_steps(settings):
    """Packed: hftrain's best-fit rows (positions restarting, each sequence's first label -100, rows padded) and
    TRL's `bfd` packing hold the same conversations, labelled alike, in as many rows; TRL's ties between equally
    full rows break the other way, so a few rows differ. Trained on hftrain's rows in hftrain's order, TRL's
    padding-free path (the batch flattened into one row) takes the same steps."""
    settings = replace(settings, packed=True)
    hftrain = bench.train_hftrain(settings)
    trl_rows = bench.trl_trainer(settings).train_dataset
    assert len(trl_rows) == len(hftrain["rows"])
    assert conversations(trl_rows) == conversations(hftrain["rows"])
    assert sum(map(len, trl_rows["seq_lengths"])) == 96  # none dropped or split

    packed_rows = {"train": hftrain["rows"], "validation": hftrain["validation_rows"]}
    trl = bench.train_trl(settings, order=bench.train_order(settings), packed_rows=packed_rows)
    assert_same_curves(hftrain, trl)
