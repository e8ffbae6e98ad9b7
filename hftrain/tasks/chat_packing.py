"""Conversations packed into rows without cross-talk: whole conversations placed best-fit into rows of
`block_size` tokens, each with position ids that restart at 0, so that attention stays within it.

The model does the isolation through transformers' own packed-sequence path: given `position_ids` and no
`attention_mask` (and no cache), `masking_utils.create_causal_mask` finds where the positions restart
(`find_packed_sequence_indices`) and makes the causal mask block-diagonal, for sdpa, eager and flex attention;
FlashAttention reads the same restarts as varlen sequence boundaries, for a batch flattened into one row
(`modeling_flash_attention_utils._is_packed_sequence`). Naive packing, one causal mask over the row, lets each
conversation attend to the ones before it (huggingface/trl #1230). What transformers lacks, and this module
writes: the best-fit placement (TRL's `bfd` strategy, written out because TRL is not a dependency), cutting
a conversation longer than a row as `data.overflow` says, the padding of packed rows, and the check that a
model's architecture honours the restarts (those that build their mask with `create_causal_mask`: GPT-2,
Llama, Qwen, Mistral, Gemma …; not every older one does).

Each sequence's first label is -100: the model's shifted loss would otherwise predict it from the last token
of the sequence before. Unpacked, that label is never predicted either, so a conversation's loss is the same
packed as alone; the task's loss is a mean over the batch's predicted tokens either way, so packed and
unpacked batches weigh every token alike.
"""

from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Literal

import torch
from transformers import PreTrainedModel

from hftrain.core.losses import IGNORE_INDEX

Overflow = Literal["drop", "truncate", "split"]


def fit_to_length(
    input_ids: list[int], labels: list[int], limit: int, overflow: Overflow
) -> list[tuple[list[int], list[int]]]:
    """A conversation as pieces of at most `limit` tokens: itself if it fits; else none (`drop`), its first
    `limit` tokens (`truncate`), or consecutive pieces (`split`), those with nothing to learn left out."""
    if len(input_ids) <= limit:
        return [(input_ids, labels)]
    if overflow == "drop":
        return []
    if overflow == "truncate":
        return [(input_ids[:limit], labels[:limit])]
    pieces = [(input_ids[i : i + limit], labels[i : i + limit]) for i in range(0, len(input_ids), limit)]
    # a piece's first label is never predicted (see the module docstring): it alone is nothing to learn
    return [(ids, piece) for ids, piece in pieces if any(label != IGNORE_INDEX for label in piece[1:])]


def best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity`: longest first, each into the bin it fills
    most tightly, a new bin where none has room (best-fit decreasing; within 22% of the fewest bins, in practice
    within a few percent). Free spaces are kept sorted, so each placement is a bisection."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    with_space: dict[int, list[int]] = {}  # free space -> the bins that have it
    spaces: list[int] = []  # the distinct free spaces, ascending
    for i in order:
        length = lengths[i]
        if length > capacity:
            raise ValueError(f"a sequence of {length} tokens does not fit in a bin of {capacity}")
        at = bisect_left(spaces, length)
        if at == len(spaces):
            bin_index, free = len(bins), capacity - length
            bins.append([i])
        else:
            space = spaces[at]
            bin_index, free = with_space[space].pop(), space - length
            if not with_space[space]:
                del with_space[space], spaces[at]
            bins[bin_index].append(i)
        if free > 0:
            if free not in with_space:
                with_space[free] = []
                insort(spaces, free)
            with_space[free].append(bin_index)
    return bins


def pack_conversations(batch: dict[str, list], size: int) -> dict[str, list]:
    """A `datasets.map` batch of conversations (`input_ids`, `labels`, each at most `size` tokens) as packed
    rows: `input_ids`, `labels` (each conversation's first label -100) and `position_ids` restarting at 0 with
    each conversation. No `attention_mask`: given one, transformers would not look for the restarts."""
    rows: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for members in best_fit([len(ids) for ids in batch["input_ids"]], size):
        input_ids, labels, positions = [], [], []
        for i in members:
            ids = batch["input_ids"][i]
            input_ids += ids
            labels += [IGNORE_INDEX, *batch["labels"][i][1:]]
            positions += range(len(ids))
        rows["input_ids"].append(input_ids)
        rows["labels"].append(labels)
        rows["position_ids"].append(positions)
    return rows


def fit_conversations(batch: dict[str, list], limit: int, overflow: Overflow, pack: bool) -> dict[str, list]:
    """A `datasets.map` batch of conversations (`input_ids`, `labels`) fitted to `limit` tokens (`fit_to_length`),
    then packed into rows of `limit` (`pack`), or kept one per row with their attention mask."""
    pieces = [
        piece
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
        for piece in fit_to_length(ids, labels, limit, overflow)
    ]
    fitted = {"input_ids": [ids for ids, _ in pieces], "labels": [labels for _, labels in pieces]}
    if pack:
        return pack_conversations(fitted, limit)
    return {**fitted, "attention_mask": [[1] * len(ids) for ids in fitted["input_ids"]]}


def collate_packed(features: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Packed rows padded on the right to the longest: padding gets labels -100 and positions 0, 1, … of its
    own, a sequence that no real token attends to (the mask is causal and padding comes last)."""
    longest = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.full((len(features), longest), pad_token_id),
        "labels": torch.full((len(features), longest), IGNORE_INDEX),
        "position_ids": torch.zeros((len(features), longest), dtype=torch.long),
    }
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        for key in batch:
            batch[key][row, :length] = torch.tensor(feature[key])
        batch["position_ids"][row, length:] = torch.arange(longest - length)
    return batch


def is_packed(batch: dict[str, torch.Tensor]) -> bool:
    """Whether a batch holds packed rows (`collate_packed`'s: positions without an attention mask)."""
    return "position_ids" in batch and "attention_mask" not in batch


def first_sequence_length(position_ids: torch.Tensor) -> int:
    """The length of a packed row's first sequence: up to where its positions restart."""
    restarts = (position_ids[1:] == 0).nonzero()
    return int(restarts[0]) + 1 if len(restarts) else len(position_ids)


def packed_model_inputs(batch: dict[str, torch.Tensor], attn_implementation: str | None) -> dict[str, torch.Tensor]:
    """A packed batch as the model takes it: without a cache (transformers skips the restarts when it builds
    one, as it does by default, training included), and for FlashAttention flattened into one row, the only
    shape its varlen path reads from position ids. Each row starts a sequence at position 0, so flattening
    adds no boundary that was not there."""
    inputs = {**batch, "use_cache": False}
    if attn_implementation and "flash" in attn_implementation:
        for key in ("input_ids", "labels", "position_ids"):
            inputs[key] = batch[key].reshape(1, -1)
    return inputs


@torch.no_grad()
def isolates_packed_sequences(model: PreTrainedModel) -> bool:
    """Whether `model` keeps two packed sequences apart: the second one's logits are the same packed after the
    first as alone (in eval mode, so dropout does not differ), up to the rounding of the model's precision. An
    architecture whose mask ignores the position restarts lets the second attend to the first."""
    first, second = [3, 1, 4, 1, 5], [2, 7, 1, 8]
    ids = torch.tensor([first + second], device=model.device)
    positions = torch.tensor([[*range(len(first)), *range(len(second))]], device=model.device)
    training = model.training
    model.eval()
    try:
        alone = model(input_ids=ids[:, len(first) :], use_cache=False).logits.float()
        inputs = packed_model_inputs({"input_ids": ids, "position_ids": positions}, model.config._attn_implementation)
        after = model(**inputs).logits[:, len(first) :].float()
    finally:
        model.train(training)
    tolerance = 1e-4 if model.dtype == torch.float32 else 2e-2
    return bool((after - alone).abs().max() <= tolerance * alone.abs().max().clamp(min=1.0))
