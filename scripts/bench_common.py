"""What the benchmark scripts share: the model's training FLOPs per real token, and the machine's load.

`training_flops` is the arithmetic a training step cannot avoid: forward + backward of every matrix
multiply on the real (non-pad) tokens. Multiplied by the measured peak matmul rate (`bench_matmul.py`) it
gives the machine's floor for a training row, so a row can be reported as a share of the hardware.
"""

import os
from collections.abc import Sequence

import numpy as np
import torch

# sequence-classification heads of encoders, which run on the first token's vector only (GPT-2's `score`
# runs on every token and is left out on purpose)
SEQUENCE_HEADS = ("classifier", "pre_classifier")


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """Weights that take part in a matrix multiply: (applied to every token, applied once per sequence).

    Counted from the modules (`nn.Linear`, and transformers' `Conv1D` of GPT-2), so a tied output layer
    counts and embedding lookups (no multiply) do not.
    """
    per_token = per_sequence = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_matmul = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if not is_matmul or weight is None:
            continue
        if _pooled(name, model):
            per_sequence += weight.numel()
        else:
            per_token += weight.numel()
    return per_token, per_sequence


def _pooled(name: str, model: torch.nn.Module) -> bool:
    """Whether the module `name` runs once per sequence: the pooler and an encoder's classification head."""
    parts = name.split(".")
    if "pooler" in parts:
        return True
    return type(model).__name__.endswith("ForSequenceClassification") and parts[0] in SEQUENCE_HEADS


def attention_shape(config) -> tuple[int, int]:
    """(layers with self-attention, width of the attention's queries = heads x head size) of a HF config."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, heads * head_dim


def training_flops(model: torch.nn.Module, lengths: Sequence[int], causal: bool = False) -> float:
    """FLOPs of one training step (forward + backward = 3x forward) over sequences of these real lengths.

    Per token: 2 FLOPs per multiply-add of each matmul weight forward, hence 6 x weights for training.
    Attention adds, per layer and sequence of length L, scores QK^T and the weighted sum AV: 2 x 2 x L^2 x
    width forward (half the pairs with a causal mask), x3 for training. Pad tokens are left out: this is
    the work the step needs, not the work a padded batch does. Encoder-only and decoder-only models; an
    encoder-decoder model needs its two lengths and is not covered.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    per_token, per_sequence = matmul_params(model)
    layers, width = attention_shape(model.config)
    pairs = lengths * (lengths + 1) / 2 if causal else lengths**2
    matmuls = 6 * (per_token * lengths.sum() + per_sequence * len(lengths))
    attention = 12 * layers * width * pairs.sum()
    return float(matmuls + attention)


def training_flops_per_token(model: torch.nn.Module, lengths: Sequence[int], causal: bool = False) -> float:
    """`training_flops` per real token: the model's cost of one token at this mix of lengths."""
    return training_flops(model, lengths, causal) / float(np.sum(lengths))


def load_average() -> str:
    """The machine's 1/5/15-minute load averages: on a shared machine, the context every figure needs."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())
