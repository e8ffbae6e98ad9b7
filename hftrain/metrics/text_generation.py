"""Scores of generated text on the 0-100 scale people quote: sacreBLEU and chrF for translation,
ROUGE-1/2/L/Lsum for summarization, as torchmetrics objects that sum their state across DDP ranks.

BLEU and chrF are sacrebleu's defaults, the figures the HF translation example reports. torchmetrics
counts BLEU's n-grams with sacrebleu's tokenizer but scores them without smoothing, so on short or partly
right outputs, where some n-gram order has no match, it reports 0 where sacrebleu reports e.g. 22; and
its chrF averages the F-score of each n-gram order where sacrebleu takes the F-score of the averaged
precision and recall. The scores here follow sacrebleu's code (`BLEU.compute_bleu`, `CHRF._compute_f_score`)
and are tested against it.
"""

import math
from collections import Counter
from typing import Any, Literal

import torch
from nltk.stem.porter import PorterStemmer
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from hftrain.core.internals import bleu_counts, rouge_lsum_fmeasure, rouge_tokens

Task = Literal["translation", "summarization"]


class RougeLsum(Metric):
    """ROUGE-Lsum with summaries split into sentences at newlines, as the `rouge-score` package does.

    torchmetrics' `ROUGEScore` splits sentences for Lsum with nltk's punkt model, which it downloads on first
    use and fails offline; newline splitting is what the published `rouge-score` figures use (the HF
    examples put one sentence per line before scoring). Tokenization is `ROUGEScore`'s own.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, use_stemmer: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stemmer = PorterStemmer() if use_stemmer else None
        self.add_state("fmeasure", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def _sentences(self, text: str) -> list[list[str]]:
        return [rouge_tokens(line, self.stemmer) for line in text.split("\n")]

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        for pred, references in zip(preds, target, strict=True):
            pred_sentences = self._sentences(pred)
            # several references: the best, as ROUGEScore(accumulate="best") does for the other keys
            self.fmeasure += max(rouge_lsum_fmeasure(pred_sentences, self._sentences(ref)) for ref in references)
            self.total += 1

    def compute(self) -> torch.Tensor:
        return (self.fmeasure / self.total.clamp(min=1)).float()


def exp_smoothed_bleu(correct: list[float], total: list[float], sys_len: float, ref_len: float) -> float:
    """Corpus BLEU (0-1) from n-gram match counts, as sacrebleu's default: an order without a match counts
    as 1/(2^k * total) for its k-th such order ("exp", NIST mteval smoothing), no effective order."""
    if not any(correct):
        return 0.0
    brevity = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0)
    precisions = [0.0] * len(correct)
    smooth = 1.0
    for n, (matches, count) in enumerate(zip(correct, total, strict=True)):
        if count == 0:
            break
        if matches == 0:
            smooth *= 2
            precisions[n] = 1 / (smooth * count)
        else:
            precisions[n] = matches / count
    # sacrebleu's log of 0 is -9999999999: any order that was never tried makes the score ~0
    logs = [math.log(p) if p > 0 else -9999999999 for p in precisions]
    return brevity * math.exp(sum(logs) / len(logs))


class SacreBLEU(SacreBLEUScore):
    """sacrebleu's default corpus BLEU (13a tokenization, exp smoothing) on the 0-1 scale; the n-gram counts
    are torchmetrics' (`SacreBLEUScore`), summed across DDP ranks."""

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        """torchmetrics' counts, added to the state once per batch: its own update adds each n-gram's count
        to a tensor element (0.62 s for Multi30k's 1,014 validation sentences; 0.13 s this way, sacrebleu's
        `corpus_bleu` 0.10 s)."""
        matched, total, preds_len, target_len = bleu_counts(preds, target, self.n_gram, self.tokenizer)
        self.numerator += torch.tensor(matched, dtype=self.numerator.dtype, device=self.numerator.device)
        self.denominator += torch.tensor(total, dtype=self.denominator.dtype, device=self.denominator.device)
        self.preds_len += preds_len
        self.target_len += target_len

    def compute(self) -> torch.Tensor:
        score = exp_smoothed_bleu(
            self.numerator.tolist(), self.denominator.tolist(), float(self.preds_len), float(self.target_len)
        )
        return torch.tensor(score)


def chrf_statistics(hypothesis: str, reference: str, order: int = 6) -> list[list[int]]:
    """Per character n-gram order 1..`order`: [hypothesis n-grams, reference n-grams, matches], whitespace
    removed first (sacrebleu's chrF default)."""
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    statistics = []
    for n in range(1, order + 1):
        hyp_grams = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        ref_grams = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        matches = sum(min(count, ref_grams[gram]) for gram, count in hyp_grams.items())
        statistics.append([sum(hyp_grams.values()), sum(ref_grams.values()), matches])
    return statistics


def chrf_score(statistics: list[list[float]], beta: float = 2.0) -> float:
    """chrF (0-1) from summed statistics: the F-beta of precision and recall averaged over the orders that
    both sides have (sacrebleu's effective-order default)."""
    precision = recall = 0.0
    orders = 0
    for hyp_count, ref_count, matches in statistics:
        if hyp_count > 0 and ref_count > 0:
            precision += matches / hyp_count
            recall += matches / ref_count
            orders += 1
    if orders == 0 or precision + recall == 0:
        return 0.0
    precision, recall = precision / orders, recall / orders
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


class ChrF(Metric):
    """sacrebleu's default corpus chrF (character 6-grams, beta 2, no word n-grams) on the 0-1 scale. With
    several references a hypothesis is counted against the one it scores best on, as sacrebleu does."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, order: int = 6, beta: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order, self.beta = order, beta
        self.add_state("statistics", torch.zeros(order, 3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        for pred, references in zip(preds, target, strict=True):
            candidates = [chrf_statistics(pred, ref, self.order) for ref in references]
            best = max(candidates, key=lambda s: chrf_score(s, self.beta))  # the first of equals, as sacrebleu
            self.statistics += torch.tensor(best, dtype=torch.float64, device=self.statistics.device)

    def compute(self) -> torch.Tensor:
        return torch.tensor(chrf_score(self.statistics.tolist(), self.beta))


def generation_metrics(task: Task, rouge_use_stemmer: bool = True) -> MetricCollection:
    """The text metrics of a task, updated with `(predictions, [[reference], …])`."""
    if task == "translation":
        return MetricCollection({"bleu": SacreBLEU(tokenize="13a"), "chrf": ChrF()}, compute_groups=False)
    return MetricCollection(
        {
            "rouge": ROUGEScore(use_stemmer=rouge_use_stemmer, rouge_keys=("rouge1", "rouge2", "rougeL")),
            "rougeLsum": RougeLsum(use_stemmer=rouge_use_stemmer),
        },
        compute_groups=False,
    )


def scores(metrics: MetricCollection) -> dict[str, torch.Tensor]:
    """Compute `metrics` on the 0-100 scale; of ROUGE only the F-measure (`rouge1`, not `rouge1_fmeasure`)."""
    values = {}
    for name, value in metrics.compute().items():
        if not name.endswith(("_precision", "_recall")):
            values[name.removesuffix("_fmeasure")] = value * 100
    return values
