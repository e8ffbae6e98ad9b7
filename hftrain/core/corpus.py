"""Plain-text corpora for language modelling, causal and masked: documents read from text files, token
sequences packed into fixed-size blocks, and perplexity from the token-weighted mean loss.

Shared by `tasks/language_modeling.py` and `tasks/masked_language_modeling.py`, which differ in what they
learn from the text, not in how they read, pack or score it.
"""

import re
from collections.abc import Iterable
from itertools import chain
from typing import Literal

import datasets
from lightning.pytorch import LightningModule

from hftrain.core.losses import IGNORE_INDEX

TEXT_SUFFIXES = (".txt", "")  # plain text (also suffix-less, as WikiExtractor's `wiki_00`), as run_clm/run_mlm read it

DocumentSplit = Literal["paragraph", "line", "file"]


def split_documents(text: str, split_by: DocumentSplit, column: str) -> datasets.Dataset:
    """A text file's text as one document per row of `column`: `paragraph` (blocks between blank lines;
    WikiText's blank lines hold a space), `line`, or the whole `file`. Blank documents are left out."""
    if split_by == "paragraph":
        pieces = re.split(r"\n(?:[ \t]*\n)+", text)
    else:
        pieces = text.splitlines() if split_by == "line" else [text]
    return datasets.Dataset.from_dict({column: [p.strip("\n") for p in pieces if p.strip()]})


def pack_blocks(batch: dict[str, list], size: int) -> dict[str, list]:
    """Concatenate a map batch of token sequences (every column alike) and cut it into blocks of `size`.

    As `group_texts` in run_clm and run_mlm, except that the shorter last block is kept (and padded in its
    batch), so evaluation scores every token; with a `labels` column, blocks with nothing to learn (all -100,
    e.g. all prompt) are dropped.
    """
    joined = {key: list(chain.from_iterable(rows)) for key, rows in batch.items()}
    starts: Iterable[int] = range(0, len(joined["input_ids"]), size)
    if "labels" in joined:
        starts = [i for i in starts if any(x != IGNORE_INDEX for x in joined["labels"][i : i + size])]
    return {key: [values[i : i + size] for i in starts] for key, values in joined.items()}


def log_perplexity(module: LightningModule, stage: str) -> None:
    """Log a stage's perplexity: the exponential of its mean loss over all scored tokens, which the task module
    keeps in `losses[stage]` (`TaskModule.log_loss`) and Lightning logs and resets."""
    module.log(f"{stage}/perplexity", module.losses[stage].compute().float().exp(), prog_bar=True)
