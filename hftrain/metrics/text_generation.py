"""Scores of generated text on the 0-100 scale people quote: sacreBLEU and chrF for translation,
ROUGE-1/2/L/Lsum for summarization, as torchmetrics objects that sum their state across DDP ranks."""

from collections import Counter
from typing import Any, Literal

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from hftrain.core.errors import HFTrainError
from hftrain.core.internals import rouge_lsum_fmeasure, rouge_tokens

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
        self.stemmer = _porter_stemmer() if use_stemmer else None
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


class CharF(Metric):
    """sacrebleu's chrF: character n-grams up to 6 (spaces ignored), beta 2, over the whole corpus.

    torchmetrics' `CHRFScore` counts every n-gram with tensor operations: 12 s for Multi30k's 1014 validation
    sentences on one CPU thread, half of an evaluation that generates. `collections.Counter` takes 0.3 s. The
    state is the n-gram statistics summed over sentences (and DDP ranks); the score is computed from them as
    `sacrebleu.metrics.CHRF` does (checked against sacrebleu in tests/test_seq2seq.py).
    """

    higher_is_better = True
    full_state_update = False
    order = 6
    beta = 2

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # per order: hypothesis n-grams, reference n-grams, matching n-grams
        self.add_state("statistics", torch.zeros(3 * self.order, dtype=torch.float64), dist_reduce_fx="sum")

    def _ngrams(self, text: str) -> list[Counter]:
        text = "".join(text.split())
        return [Counter(text[i : i + n] for i in range(len(text) - n + 1)) for n in range(1, self.order + 1)]

    @staticmethod
    def _match(hypothesis: list[Counter], reference: list[Counter]) -> list[int]:
        statistics = []
        for hyp, ref in zip(hypothesis, reference, strict=True):
            matches = sum(min(count, ref[ngram]) for ngram, count in hyp.items() if ngram in ref)
            statistics += [sum(hyp.values()) if ref else 0, sum(ref.values()), matches]
        return statistics

    def _score(self, statistics: list[float]) -> float:
        """chrF on the 0-100 scale: precision and recall averaged over the orders both sides have n-grams of."""
        factor, precision, recall, orders = self.beta**2, 0.0, 0.0, 0
        for n in range(self.order):
            hyp, ref, matches = statistics[3 * n : 3 * n + 3]
            if hyp > 0 and ref > 0:
                precision, recall, orders = precision + matches / hyp, recall + matches / ref, orders + 1
        if orders == 0 or precision + recall == 0:
            return 0.0
        precision, recall = precision / orders, recall / orders
        return 100 * (1 + factor) * precision * recall / (factor * precision + recall)

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        totals = [0] * (3 * self.order)
        for pred, references in zip(preds, target, strict=True):
            hypothesis = self._ngrams(pred)
            # several references: the one the sentence scores best against, as sacrebleu picks
            best = max((self._match(hypothesis, self._ngrams(ref)) for ref in references), key=self._score)
            totals = [a + b for a, b in zip(totals, best, strict=True)]
        self.statistics += torch.tensor(totals, dtype=torch.float64, device=self.statistics.device)

    def compute(self) -> torch.Tensor:
        return torch.tensor(self._score(self.statistics.tolist()) / 100)


def _porter_stemmer():
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError as err:
        raise HFTrainError(
            "ROUGE with stemming needs nltk: `pip install nltk`, or set model.rouge_use_stemmer=false."
        ) from err
    return PorterStemmer()


def generation_metrics(task: Task, rouge_use_stemmer: bool = True) -> MetricCollection:
    """The text metrics of a task, updated with `(predictions, [[reference], …])`."""
    if task == "translation":
        return MetricCollection({"bleu": SacreBLEUScore(tokenize="13a"), "chrf": CharF()})
    if rouge_use_stemmer:
        _porter_stemmer()
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
