"""SpanF1 against seqeval's classification_report, default and strict mode, on every scheme.

Hand-written sequences pin the cases people argue about (an I- after O, a type switch inside a span, a
B- without its E-); random sequences (well-formed with noise, and pure noise) cover the rest. Every
precision, recall, F1 and support must agree to 1e-6.
"""

import random
import warnings

import pytest
import torch
from seqeval.metrics import classification_report
from seqeval.scheme import BILOU, IOB1, IOB2, IOBES, IOE2

from hftrain.metrics.span_f1 import SCHEME_PREFIXES, SpanF1, detect_scheme, extract_spans

SEQEVAL_SCHEMES = {"IOB1": IOB1, "IOB2": IOB2, "IOE2": IOE2, "IOBES": IOBES, "BILOU": BILOU}
TYPES = ("PER", "LOC", "ORG", "MISC")
SEQEVAL_KEYS = {"precision": "precision", "recall": "recall", "f1": "f1-score"}


def label_set(scheme: str) -> list[str]:
    return ["O"] + [f"{p}-{t}" for t in TYPES for p in SCHEME_PREFIXES[scheme] if p != "O"]


def as_conlleval(sequences: list[list[str]]) -> list[list[str]]:
    """BILOU written in IOBES letters: conlleval (seqeval's default mode) knows only B/I/E/S."""
    return [[{"U": "S", "L": "E"}.get(t[0], t[0]) + t[1:] for t in s] for s in sequences]


def seqeval_report(gold, pred, scheme: str, mode: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "strict":
            return classification_report(
                gold, pred, mode="strict", scheme=SEQEVAL_SCHEMES[scheme], output_dict=True, zero_division=0
            )
        if scheme == "BILOU":
            gold, pred = as_conlleval(gold), as_conlleval(pred)
        return classification_report(gold, pred, output_dict=True, zero_division=0)


def span_f1(gold, pred, scheme: str, mode: str, batches: int = 2) -> dict[str, float]:
    """SpanF1 over the sentences fed in `batches` padded batches of tag ids."""
    labels = label_set(scheme)
    index = {name: i for i, name in enumerate(labels)}
    metric = SpanF1(labels, scheme, mode)
    for start in range(0, len(gold), -(-len(gold) // batches)):
        rows = range(start, min(start + -(-len(gold) // batches), len(gold)))
        width = max(len(gold[i]) for i in rows) + 1
        target = torch.full((len(rows), width), -100)
        preds = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            target[r, : len(gold[i])] = torch.tensor([index[t] for t in gold[i]])
            preds[r, : len(pred[i])] = torch.tensor([index[t] for t in pred[i]])
        metric.update(preds, target)
    return {k: float(v) for k, v in metric.compute().items()}


def assert_matches_seqeval(gold, pred, scheme: str, mode: str) -> None:
    expected = seqeval_report(gold, pred, scheme, mode)
    ours = span_f1(gold, pred, scheme, mode)
    for name, key in SEQEVAL_KEYS.items():
        assert ours[name] == pytest.approx(expected["micro avg"][key], abs=1e-6), name
    for type_ in TYPES:
        row = expected.get(type_)
        if row is None:  # seqeval lists only types that occur
            assert ours[f"support_{type_}"] == 0 and ours[f"precision_{type_}"] == 0
            continue
        for name, key in SEQEVAL_KEYS.items():
            assert ours[f"{name}_{type_}"] == pytest.approx(row[key], abs=1e-6), (type_, name)
        assert ours[f"support_{type_}"] == row["support"]


# (scheme, gold, predicted): each a list of sentences
HAND_WRITTEN = [
    ("IOB2", [["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]]),
    ("IOB2", [["B-PER", "I-PER", "O"]], [["O", "I-PER", "O"]]),  # I- after O
    ("IOB2", [["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-LOC", "I-PER"]]),  # type switch mid-span
    ("IOB2", [["O", "I-MISC", "I-MISC", "O"]], [["O", "B-MISC", "I-MISC", "O"]]),  # ill-formed gold
    ("IOB2", [["B-LOC", "B-LOC", "I-LOC"]], [["B-LOC", "I-LOC", "I-LOC"]]),  # adjacent entities
    ("IOB1", [["I-PER", "I-PER", "B-PER", "O"]], [["I-PER", "I-PER", "I-PER", "O"]]),
    ("IOB1", [["O", "B-LOC", "I-LOC"], ["I-MISC"]], [["O", "I-LOC", "I-LOC"], ["B-MISC"]]),
    ("IOE2", [["I-ORG", "E-PER", "O", "E-LOC"]], [["I-PER", "E-PER", "O", "I-LOC"]]),  # span without E-
    ("IOBES", [["B-PER", "E-PER", "S-LOC"]], [["B-PER", "I-PER", "S-LOC"]]),  # B- without its E-
    ("IOBES", [["B-PER", "I-PER", "E-PER"]], [["B-PER", "I-LOC", "E-PER"]]),
    ("BILOU", [["U-PER", "B-LOC", "L-LOC", "O"]], [["U-PER", "B-LOC", "I-LOC", "O"]]),
    ("BILOU", [["B-MISC", "I-MISC", "L-MISC"]], [["I-MISC", "I-MISC", "L-MISC"]]),
    ("IOB2", [["O", "O"]], [["O", "O"]]),  # no entities at all
]
for _, gold_, pred_ in HAND_WRITTEN:
    assert all(len(g) == len(p) for g, p in zip(gold_, pred_, strict=True))


@pytest.mark.parametrize("mode", ["default", "strict"])
@pytest.mark.parametrize("case", range(len(HAND_WRITTEN)))
def test_hand_written_cases_match_seqeval(case, mode):
    scheme, gold, pred = HAND_WRITTEN[case]
    assert_matches_seqeval(gold, pred, scheme, mode)


def well_formed(rng: random.Random, scheme: str, length: int) -> list[str]:
    """A sentence of random entities written correctly in `scheme`."""
    tags: list[str] = []
    while len(tags) < length:
        if rng.random() < 0.4:
            tags.append("O")
            continue
        type_, size = rng.choice(TYPES), rng.randint(1, 3)
        if scheme == "IOB2":
            span = ["B"] + ["I"] * (size - 1)
        elif scheme == "IOB1":
            span = (["B"] if tags and tags[-1].endswith(type_) else ["I"]) + ["I"] * (size - 1)
        elif scheme == "IOE2":
            span = ["I"] * (size - 1) + ["E"]
        else:
            single, last = ("S", "E") if scheme == "IOBES" else ("U", "L")
            span = [single] if size == 1 else ["B"] + ["I"] * (size - 2) + [last]
        tags += [f"{p}-{type_}" for p in span]
    return tags[:length]


@pytest.mark.parametrize("mode", ["default", "strict"])
@pytest.mark.parametrize("scheme", list(SEQEVAL_SCHEMES))
def test_random_sequences_match_seqeval(scheme, mode):
    rng = random.Random(f"{scheme}-{mode}")
    labels = label_set(scheme)
    for _ in range(60):
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.5:  # pure noise: mostly ill-formed
            gold = [[rng.choice(labels) for _ in range(n)] for n in lengths]
        else:
            gold = [well_formed(rng, scheme, n) for n in lengths]
        # predictions: the gold tags with a few replaced at random
        pred = [[t if rng.random() < 0.8 else rng.choice(labels) for t in sentence] for sentence in gold]
        assert_matches_seqeval(gold, pred, scheme, mode)


def test_ignored_positions_are_cut_out_before_spans_are_read():
    labels = ["O", "B-PER", "I-PER"]
    metric = SpanF1(labels)
    # word-level: B-PER I-PER; the -100 between them is a later subword, not an O that would split the span
    target = torch.tensor([[1, -100, 2, -100]])
    metric.update(torch.tensor([[1, 0, 2, 0]]), target)
    result = metric.compute()
    assert result["f1"] == 1 and result["support_PER"] == 1


def test_states_add_up_across_ranks():
    """What DDP does at compute: the per-rank counts are summed, giving the score of all the data."""
    rng = random.Random(0)
    labels = label_set("IOB2")
    gold = [well_formed(rng, "IOB2", 10) for _ in range(20)]
    pred = [[t if rng.random() < 0.7 else rng.choice(labels) for t in s] for s in gold]
    index = {name: i for i, name in enumerate(labels)}
    tensors = [torch.tensor([[index[t] for t in s] for s in half]) for half in (gold[:10], gold[10:])]
    preds = [torch.tensor([[index[t] for t in s] for s in half]) for half in (pred[:10], pred[10:])]
    ranks = [SpanF1(labels) for _ in range(2)]
    for metric, p, t in zip(ranks, preds, tensors, strict=True):
        metric.update(p, t)
    assert all(metric._reductions[s] is not None for metric in ranks for s in ("correct", "predicted", "gold"))
    ranks[0].merge_state(ranks[1])
    merged = {k: float(v) for k, v in ranks[0].compute().items()}
    assert merged == pytest.approx(span_f1(gold, pred, "IOB2", "default", batches=1), abs=1e-7)


def test_extract_spans_reads_conlleval_and_strict_differently():
    tags = ["O", "I-PER", "I-PER", "B-LOC", "I-ORG"]
    assert extract_spans(tags) == [("PER", 1, 3), ("LOC", 3, 4), ("ORG", 4, 5)]
    assert extract_spans(tags, "IOB2", "strict") == [("LOC", 3, 4)]


def test_detect_scheme():
    assert detect_scheme(["O", "B-PER", "I-PER"]) == "IOB2"
    assert detect_scheme(["O", "I-PER", "I-LOC"]) == "IOB1"  # the original CoNLL-2003 tags
    assert detect_scheme(["O", "I-NP", "E-NP"]) == "IOE2"
    assert detect_scheme(["O", "B-X", "I-X", "E-X", "S-X"]) == "IOBES"
    assert detect_scheme(["O", "B-X", "I-X", "L-X", "U-X"]) == "BILOU"
    assert detect_scheme(["NN", "VB", "DT"]) is None  # POS tags: no spans


def test_strict_mode_rejects_tags_outside_the_scheme():
    with pytest.raises(ValueError, match="do not belong to the IOB2 scheme"):
        SpanF1(["O", "B-PER", "E-PER"], "IOB2", "strict")
