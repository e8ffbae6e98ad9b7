"""The benchmarks' training-FLOPs formula (scripts/bench_common.py) against torch's own FLOP counter.

The "distance to the hardware" figures divide measured throughput by this formula, so an error in it is an
error in every share reported. torch's `FlopCounterMode` counts the matmuls a forward + backward really
runs; with eager attention (whose score and weighted-sum matmuls it sees) and unpadded sequences the two
must agree exactly.
"""

import sys

import pytest
import torch
from conftest import REPO
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(REPO / "scripts"))
from bench_common import seq2seq_training_flops, training_flops, training_flops_per_token  # noqa: E402


def counted_training_flops(model: torch.nn.Module, length: int, rows: int = 2) -> int:
    ids = torch.randint(0, model.config.vocab_size, (rows, length))
    labels = torch.zeros(rows, dtype=torch.long) if "Sequence" in type(model).__name__ else ids
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=labels).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("length", [7, 40])
def test_bert_classifier_flops_match_torch_count(length):
    config = BertConfig(
        vocab_size=200,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config)
    assert training_flops(model, [length, length]) == counted_training_flops(model, length)


def test_gpt2_flops_match_torch_count_and_halve_attention_when_causal():
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, attn_implementation="eager")
    model = GPT2LMHeadModel(config)  # the tied output layer is a matmul too
    full = training_flops(model, [30, 30])
    assert full == counted_training_flops(model, 30)  # the eager kernel computes every pair
    # causal: each of the 2 sequences has 30 * 31 / 2 query-key pairs instead of 30 * 30, 12 x layers x width each
    assert full - training_flops(model, [30, 30], causal=True) == 12 * 2 * 64 * 2 * (30 * 30 - 30 * 31 / 2)


def test_flops_per_token_weighs_attention_by_each_sequence_length():
    model = BertForSequenceClassification(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    # a 10- and a 30-token sequence: attention grows with the square of each length, not of the mean
    assert training_flops_per_token(model, [10, 30]) > training_flops_per_token(model, [20, 20])


def test_t5_flops_match_torch_count_with_causal_decoder_pairs_halved():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=120,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=3,
        decoder_start_token_id=0,
        attn_implementation="eager",
    )
    model = T5ForConditionalGeneration(config)  # d_kv x heads (48) is not d_model: attention width is the former
    source, target, rows = 11, 6, 2
    with FlopCounterMode(display=False) as counter:
        model(
            input_ids=torch.randint(2, 120, (rows, source)), labels=torch.randint(2, 120, (rows, target))
        ).loss.backward()
    # the eager kernel computes every decoder query-key pair; the formula counts the causal half as needed
    skipped = 12 * 1 * 48 * rows * (target * target - target * (target + 1) / 2)
    assert seq2seq_training_flops(model, [source] * rows, [target] * rows) + skipped == counter.get_total_flops()
