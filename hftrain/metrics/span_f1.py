"""Entity-level precision, recall and F1 over tagged sequences (NER, chunking), as a torchmetrics `Metric`.

torchmetrics scores tags one by one; NER is scored on whole entities (spans), a prediction counting only
when its type, start and end all match. The counts live in per-type tensors summed across DDP ranks, and
the results agree with `seqeval.metrics.classification_report` (checked in tests/test_span_f1.py):

- `mode="default"` reads spans the way the CoNLL `conlleval` script (and seqeval's default) does: lenient
  about ill-formed sequences, an `I-` after `O` or after another type starts a new entity. It reads any
  prefix scheme; BILOU's `U-`/`L-` count as `S-`/`E-`.
- `mode="strict"` follows the declared scheme exactly (seqeval's `mode="strict"`): a span that breaks the
  scheme (an `I-` with no `B-` in IOB2, a `B-` without its `E-` in IOBES) is no entity at all.
"""

from typing import Literal

import torch
from torchmetrics import Metric

Scheme = Literal["IOB1", "IOB2", "IOE2", "IOBES", "BILOU"]
Mode = Literal["default", "strict"]

SCHEME_PREFIXES: dict[str, str] = {
    "IOB1": "IOB",
    "IOB2": "IOB",
    "IOE2": "IOE",
    "IOBES": "IOBES",
    "BILOU": "BILOU",
}

# Strict mode: when a tag starts an entity, continues it, or closes the one before it, given the previous
# tag. A rule is (previous prefixes, current prefixes, type relation); these are seqeval's scheme tables.
_ANY = "BIOESUL"
_StrictRules = dict[str, list[tuple[str, str, str]]]
STRICT_RULES: dict[str, _StrictRules] = {
    "IOB1": {
        "start": [
            ("O", "I", "any"),
            ("I", "I", "diff"),
            ("B", "I", "any"),
            ("I", "B", "same"),
            ("B", "B", "same"),
        ],
        "inside": [("B", "I", "same"), ("I", "I", "same")],
        "end": [
            ("I", "I", "diff"),
            ("I", "O", "any"),
            ("I", "B", "any"),
            ("B", "O", "any"),
            ("B", "I", "diff"),
            ("B", "B", "same"),
        ],
    },
    "IOB2": {
        "start": [(_ANY, "B", "any")],
        "inside": [("B", "I", "same"), ("I", "I", "same")],
        "end": [
            ("I", "O", "any"),
            ("I", "I", "diff"),
            ("I", "B", "any"),
            ("B", "O", "any"),
            ("B", "I", "diff"),
            ("B", "B", "any"),
        ],
    },
    "IOE2": {
        "start": [
            ("O", "I", "any"),
            ("O", "E", "any"),
            ("E", "I", "any"),
            ("E", "E", "any"),
            ("I", "I", "diff"),
            ("I", "E", "diff"),
        ],
        "inside": [("I", "E", "same"), ("I", "I", "same")],
        "end": [("E", _ANY, "any")],
    },
    "IOBES": {
        "start": [(_ANY, "B", "any"), (_ANY, "S", "any")],
        "inside": [("B", "I", "same"), ("B", "E", "same"), ("I", "I", "same"), ("I", "E", "same")],
        "end": [("S", _ANY, "any"), ("E", _ANY, "any")],
    },
    "BILOU": {
        "start": [(_ANY, "B", "any"), (_ANY, "U", "any")],
        "inside": [("B", "I", "same"), ("B", "L", "same"), ("I", "I", "same"), ("I", "L", "same")],
        "end": [("U", _ANY, "any"), ("L", _ANY, "any")],
    },
}

Span = tuple[str, int, int]


def split_tag(tag: str) -> tuple[str, str]:
    """`B-PER` -> (`B`, `PER`); `O` -> (`O`, ``); a bare prefix `B` gets the type `_`, as in seqeval."""
    if tag == "O":
        return "O", ""
    return tag[0], tag[2:] if tag[1:2] == "-" else tag[1:] or "_"


def detect_scheme(label_names: list[str]) -> Scheme | None:
    """The tagging scheme the label set is written in, or None when it is not one (POS tags, say).

    IOB1 and IOB2 use the same prefixes, so B/I/O label sets are taken as IOB2, the common one; a set
    with I- tags and no B- tags is IOB1 (as the original CoNLL-2003 files).
    """
    prefixes = set()
    for name in label_names:
        if name != "O" and not (len(name) > 2 and name[1] == "-" and name[0] in "BIESLU"):
            return None
        prefixes.add(name[0])
    prefixes.discard("O")
    if prefixes == {"I"}:
        return "IOB1"
    for scheme in ("IOB2", "IOE2", "IOBES", "BILOU"):
        if prefixes and prefixes <= set(SCHEME_PREFIXES[scheme]):
            return scheme
    return None


def _default_spans(tags: list[str]) -> list[Span]:
    """conlleval's chunking: a chunk ends before a B/S, an O or a type change, and after an E/S."""
    spans, start, prev_prefix, prev_type = [], 0, "O", ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, type_ = split_tag(tag)
        prefix = {"U": "S", "L": "E"}.get(prefix, prefix)
        ends = (
            prev_prefix in "ES"
            or (prev_prefix in "BI" and prefix in "BSO")
            or (prev_prefix != "O" and prev_type != type_)
        )
        starts = prefix in "BS" or (prev_prefix in "ESO" and prefix in "EI") or (prefix != "O" and prev_type != type_)
        if ends:
            spans.append((prev_type, start, i))
        if starts:
            start = i
        prev_prefix, prev_type = prefix, type_
    return spans


def _matches(rules: list[tuple[str, str, str]], prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    return any(
        prev[0] in before and cur[0] in now and (how == "any" or (prev[1] == cur[1]) == (how == "same"))
        for before, now, how in rules
    )


def _strict_spans(tags: list[str], scheme: Scheme) -> list[Span]:
    """Spans that start, continue and end as `scheme` says; a span that does not end properly is dropped."""
    rules = STRICT_RULES[scheme]
    split = [split_tag(t) for t in tags] + [("O", "")]
    spans, i = [], 0
    while i < len(split):
        prev = split[i - 1] if i else ("O", "")
        if not _matches(rules["start"], prev, split[i]):
            i += 1
            continue
        end = i + 1
        while _matches(rules["inside"], split[end - 1], split[end]):
            end += 1
        if _matches(rules["end"], split[end - 1], split[end]):
            spans.append((split[i][1], i, end))
        i = end
    return spans


def extract_spans(tags: list[str], scheme: Scheme = "IOB2", mode: Mode = "default") -> list[Span]:
    """The entities in one tag sequence as (type, start, end) with `end` exclusive: `tokens[start:end]`."""
    return _strict_spans(tags, scheme) if mode == "strict" else _default_spans(tags)


class SpanF1(Metric):
    """Entity-level micro precision/recall/F1, plus the same per entity type, over batches of tag ids.

    `update(preds, target)` takes tag ids shaped (batch, words); positions where `target` is `ignore_index`
    (padding, subwords after a word's first) are removed before the spans are read, so each row becomes
    one word-level sentence. `compute()` returns `precision`, `recall`, `f1` and `precision_<TYPE>`,
    `recall_<TYPE>`, `f1_<TYPE>`, `support_<TYPE>` for every entity type of the label set. Undefined ratios
    (no predicted or no gold entities) are 0, as in seqeval.

    Args:
        label_names: The tag of each id, e.g. `["O", "B-PER", "I-PER"]`.
        scheme: The tagging scheme: IOB1, IOB2 (BIO), IOE2, IOBES or BILOU. Strict mode needs it to be right.
        mode: `default` (conlleval's lenient reading) or `strict` (only spans the scheme allows).
        ignore_index: Target value of positions that are not words.
    """

    full_state_update = False

    def __init__(
        self,
        label_names: list[str],
        scheme: Scheme = "IOB2",
        mode: Mode = "default",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        if mode == "strict":
            bad = [n for n in label_names if n != "O" and split_tag(n)[0] not in SCHEME_PREFIXES[scheme]]
            if bad:
                raise ValueError(
                    f"The tags {bad} do not belong to the {scheme} scheme, which strict span matching needs."
                )
        self.label_names = list(label_names)
        self.scheme, self.mode, self.ignore_index = scheme, mode, ignore_index
        self.types = sorted({split_tag(n)[1] for n in label_names} - {""})
        self._type_index = {t: i for i, t in enumerate(self.types)}
        for state in ("correct", "predicted", "gold"):
            self.add_state(state, default=torch.zeros(len(self.types), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != self.ignore_index
        correct, predicted, gold = (torch.zeros(len(self.types), dtype=torch.long) for _ in range(3))
        rows = zip(preds.tolist(), target.tolist(), keep.tolist(), strict=True)
        for pred_row, gold_row, row_mask in rows:
            pred_tags = [self.label_names[p] for p, k in zip(pred_row, row_mask, strict=True) if k]
            gold_tags = [self.label_names[g] for g, k in zip(gold_row, row_mask, strict=True) if k]
            pred_spans = set(extract_spans(pred_tags, self.scheme, self.mode))
            gold_spans = set(extract_spans(gold_tags, self.scheme, self.mode))
            for spans, counts in (
                (pred_spans, predicted),
                (gold_spans, gold),
                (pred_spans & gold_spans, correct),
            ):
                for type_, _, _ in spans:
                    counts[self._type_index[type_]] += 1
        self.correct += correct.to(self.device)
        self.predicted += predicted.to(self.device)
        self.gold += gold.to(self.device)

    def compute(self) -> dict[str, torch.Tensor]:
        results = _scores(self.correct.sum(), self.predicted.sum(), self.gold.sum())
        for i, type_ in enumerate(self.types):
            per_type = _scores(self.correct[i], self.predicted[i], self.gold[i])
            results.update({f"{name}_{type_}": value for name, value in per_type.items()})
            results[f"support_{type_}"] = self.gold[i].float()
        return results


def _scores(correct: torch.Tensor, predicted: torch.Tensor, gold: torch.Tensor) -> dict[str, torch.Tensor]:
    correct, predicted, gold = correct.double(), predicted.double(), gold.double()
    precision = correct / predicted if predicted > 0 else torch.zeros_like(correct)
    recall = correct / gold if gold > 0 else torch.zeros_like(correct)
    total = precision + recall
    f1 = 2 * precision * recall / total if total > 0 else torch.zeros_like(correct)
    return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}
