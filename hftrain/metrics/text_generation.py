"""Scores of generated text on the 0-100 scale people quote: sacreBLEU and chrF for translation,
ROUGE-1/2/L/Lsum for summarization, as torchmetrics objects that sum their state across DDP ranks."""

from typing import Any, Literal

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import CHRFScore, ROUGEScore, SacreBLEUScore

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
        # n_word_order=0 is sacrebleu's chrF (2 would be chrF++)
        return MetricCollection({"bleu": SacreBLEUScore(tokenize="13a"), "chrf": CHRFScore(n_word_order=0)})
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
