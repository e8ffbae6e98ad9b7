"""Rows cut at a length: tokenizing with the cut (keeping each row's length before it), and the note that
says how many rows of a split were cut, kept with the tokenized cache and said by every run that uses it."""

from typing import Any

from transformers import PreTrainedTokenizerBase


def tokenize_truncated(
    tokenizer: PreTrainedTokenizerBase, texts: list[list[str]], max_length: int, as_target: bool = False
) -> tuple[dict[str, list], list[int]]:
    """`texts` (one column, or two for pairs; targets with `as_target`) tokenized and cut to `max_length`,
    and each row's length before the cut, for `truncation_note`. Rows are tokenized whole first; the few
    longer than `max_length` again with the tokenizer's own truncation, which keeps the special tokens and
    cuts a pair's longer text first."""

    def tokenize(columns: list[list[str]], **options: Any) -> dict[str, list]:
        return dict(tokenizer(text_target=columns[0], **options) if as_target else tokenizer(*columns, **options))

    encoded = tokenize(texts, verbose=False)  # not verbose: rows longer than the model takes are cut below
    lengths = [len(ids) for ids in encoded["input_ids"]]
    long = [i for i, length in enumerate(lengths) if length > max_length]
    if long:
        cut = tokenize([[values[i] for i in long] for values in texts], truncation=True, max_length=max_length)
        for key, values in cut.items():
            for i, value in zip(long, values, strict=True):
                encoded[key][i] = value
    return encoded, lengths


def truncation_note(
    lengths: list[int], limit: int, setting: str, split: str, where: str, effect: str, rows: str, unit: str
) -> str | None:
    """How many of a split's `rows` (each of `lengths` before the cut) are longer than `data.<setting>=limit`
    and what the cut costs (`effect`); None when none is."""
    cut = [n for n in lengths if n > limit]
    if not cut:
        return None
    return (
        f"{len(cut)} of {len(lengths)} {rows} in the {split} split ({where}) are longer than data.{setting}={limit} "
        f"{unit} (the longest has {max(cut)}): {effect}. Raise data.{setting} to keep them."
    )
