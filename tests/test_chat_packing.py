"""Conversations packed without cross-talk: best-fit placement, `data.overflow`, and each conversation's loss the
same packed as alone on a GPT-2 and a Llama-style model, with sdpa and eager attention (naive packing, one
causal mask over the row, fails that check)."""

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import write_jsonl
from test_chat import chat_config, chat_data, labelled_runs

from hftrain.cli import HFTrainCLI
from hftrain.core.errors import HFTrainError
from hftrain.core.length_split import batch_parts
from hftrain.core.losses import IGNORE_INDEX
from hftrain.tasks import chat_packing
from hftrain.tasks.language_modeling import LanguageModeling


def varied_conversations(n: int, seed: int = 0) -> list[dict]:
    """`n` counting conversations of one or two turns and varied lengths."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = [{"role": "system", "content": "C"}]  # short: the tiny tokenizer spells most words out
        for _ in range(rng.randint(1, 2)):
            start = rng.randrange(50)
            messages.append({"role": "user", "content": str(start)})
            count = " ".join(str(k) for k in range(start, start + rng.randint(2, 6)))
            messages.append({"role": "assistant", "content": count})
        rows.append({"messages": messages})
    return rows


def test_best_fit_keeps_sequences_whole_and_fills_bins_tightly():
    lengths = [7, 5, 4, 3, 3, 2, 1, 9, 6]
    bins = chat_packing.best_fit(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 40 tokens in bins of 10: none wasted
    with pytest.raises(ValueError, match="does not fit"):
        chat_packing.best_fit([11], 10)


@pytest.mark.parametrize(
    "overflow, pieces",
    [
        ("drop", []),
        ("truncate", [([1, 2, 3, 4], [-100, -100, 3, 4])]),
        # the middle piece is left out: its first label is never predicted, so it has nothing to learn
        ("split", [([1, 2, 3, 4], [-100, -100, 3, 4]), ([9, 10], [-100, 10])]),
    ],
)
def test_overflow_drops_truncates_or_splits_a_long_conversation(overflow, pieces):
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    labels = [-100, -100, 3, 4, 5, -100, -100, -100, -100, 10]
    assert chat_packing.fit_to_length(ids[:4], labels[:4], 4, overflow) == [(ids[:4], labels[:4])]
    assert chat_packing.fit_to_length(ids, labels, 4, overflow) == pieces


def token_losses(module: LanguageModeling, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each position's next-token loss (0 where unlabelled), through the module's own forward."""
    logits = module(**batch).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )


def conversation_losses(module: LanguageModeling, batch: dict[str, torch.Tensor]) -> dict[tuple, tuple]:
    """Per conversation (keyed by its token ids): its summed loss and its predicted tokens. A packed row's
    conversations are found where the positions restart; an unpacked row is one conversation."""
    losses = token_losses(module, batch)
    found = {}
    for row in range(len(batch["input_ids"])):
        if "position_ids" in batch:
            starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist()
            spans = list(zip(starts, [*starts[1:], batch["input_ids"].shape[1]], strict=True))
        else:
            spans = [(0, int(batch["attention_mask"][row].sum()))]
        for start, stop in spans:
            predicted = batch["labels"][row, start + 1 : stop] != IGNORE_INDEX
            if predicted.any():  # padding is a sequence of its own, with nothing to predict
                key = tuple(batch["input_ids"][row, start:stop].tolist())
                found[key] = (losses[row, start : stop - 1].sum(), predicted.sum())
    return found


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model", ["tiny_chat_lm", "tiny_chat_llama"])
def test_each_conversation_scores_the_same_packed_as_alone(model, attention, request, tmp_path):
    folder = request.getfixturevalue(model)
    train = write_jsonl(tmp_path / "train.jsonl", varied_conversations(24))
    module = LanguageModeling(model_name_or_path=folder).eval()
    module.model.set_attn_implementation(attention)
    batches = {}
    for packing in (False, True):
        data = chat_data(folder, train, packing=packing, block_size=128, max_length=128)
        data.setup("fit")
        batches[packing] = data.collator(list(data.datasets["train"]))
    packed = batches[True]
    assert len(packed["input_ids"]) <= 24 / 2 and "attention_mask" not in packed  # several conversations a row
    with torch.no_grad():
        alone, together = (conversation_losses(module, batches[packing]) for packing in (False, True))
        assert alone.keys() == together.keys() and len(alone) == 24
        for key, (loss, tokens) in alone.items():
            assert together[key][1] == tokens
            assert torch.allclose(together[key][0] / tokens, loss / tokens, atol=1e-5, rtol=0), key
        # the batch loss is a mean over its predicted tokens either way: packed batches train the same thing
        assert torch.allclose(module(**packed).loss, module(**batches[False]).loss, atol=1e-5, rtol=0)

        # naive packing (one causal mask over the row) lets later conversations attend to earlier ones
        naive = {"input_ids": packed["input_ids"], "labels": packed["labels"]}
        naive["attention_mask"] = torch.ones_like(naive["input_ids"])
        naive_losses = token_losses(module, naive)
        packed_losses = token_losses(module, packed)
        assert (naive_losses - packed_losses).abs().max() > 1e-2


def test_a_model_that_would_attend_across_conversations_is_refused(tiny_chat_lm, tmp_path):
    from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

    folder = tmp_path / "tiny-mamba"
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_lm)
    tokenizer.save_pretrained(folder)
    config = MambaConfig(vocab_size=len(tokenizer), hidden_size=16, state_size=4, num_hidden_layers=1)
    MambaForCausalLM(config).save_pretrained(folder)
    data = chat_data(str(folder), write_jsonl(tmp_path / "train.jsonl", varied_conversations(4)), packing=True)
    data.setup("fit")
    batch = data.collator(list(data.datasets["train"]))
    module = LanguageModeling(model_name_or_path=str(folder))
    with pytest.raises(HFTrainError, match=r"lets packed conversations attend to each other.*data.packing=false"):
        module.training_step(batch, 0)
    assert chat_packing.isolates_packed_sequences(LanguageModeling(model_name_or_path=tiny_chat_lm).model)


def test_a_conversation_longer_than_a_row_is_dropped_truncated_or_split_as_configured(tiny_chat_lm, tmp_path):
    rows = varied_conversations(6)
    rows[2]["messages"][-1]["content"] = " ".join(map(str, range(100)))
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    tokens = {}
    for overflow in ("drop", "truncate", "split"):
        data = chat_data(tiny_chat_lm, train, packing=True, block_size=100, overflow=overflow)
        with pytest.warns(UserWarning, match=r"1 of 6 conversations .* longer than data.block_size=100 .*rows 3\b"):
            data.setup("fit")
        rows_seen = data.datasets["train"]
        assert all(len(ids) <= 100 for ids in rows_seen["input_ids"])
        tokens[overflow] = sum(map(len, rows_seen["input_ids"]))
    assert tokens["drop"] < tokens["truncate"] == tokens["drop"] + 100 < tokens["split"]


@pytest.mark.processes  # a 15 s fit
def test_packed_fit_through_the_cli_learns_whole_conversations(tiny_chat_lm, tmp_path, capsys):
    path = chat_config(
        tmp_path,
        tiny_chat_lm,
        train_file=write_jsonl(tmp_path / "train.jsonl", varied_conversations(32)),
        validation_file=write_jsonl(tmp_path / "valid.jsonl", varied_conversations(8, seed=1)),
        packing=True,
        block_size=128,
        batch_size=2,
    )
    run = HFTrainCLI(args=["fit", f"--config={path}"])
    results = json.loads((Path(run.trainer.log_dir) / "results.json").read_text())
    history = [epoch["val/loss"] for epoch in results["history"]]
    assert history[-1] < history[0], history
    assert "attention_mask" not in capsys.readouterr().err  # transformers' advice does not apply to packed rows
    tokenizer = run.datamodule.tokenizer
    answers = set()
    for part in batch_parts(next(iter(run.datamodule.train_dataloader()))):
        for ids, labels in zip(part["input_ids"].tolist(), part["labels"].tolist(), strict=True):
            answers.update(labelled_runs(tokenizer, ids, labels))
    assert len(answers) > 2 and all(answer.endswith("<|im_end|>") for answer in answers)
