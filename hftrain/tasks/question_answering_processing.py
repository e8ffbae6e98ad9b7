"""Extractive question answering, the parts that need no model: windows in, answers out.

Plain functions on plain values, so each step is tested on hand-built inputs. The logic is that of the
HF `run_qa.py` example (`prepare_train_features`, `postprocess_qa_predictions`), reshaped:

- A context longer than `max_length` is cut into overlapping windows (`doc_stride` tokens of overlap).
  Training uses each window as a row, labelled with the answer's first and last token, or the [CLS]
  token when the answer is not (wholly) inside the window or there is none.
- Evaluation keeps an example's windows together in one row, so a batch always holds whole examples:
  answers are decided inside the step, and `predict` can return one answer per question.
- An answer is the best-scoring span (start logit + end logit) over all windows, restricted to the
  context, at most `max_answer_length` tokens long; in SQuAD 2.0 mode it is "" when the [CLS] "null"
  score beats the best span by more than `null_score_diff_threshold`.
- Under DDP, each rank's per-example predictions are gathered and deduplicated by id
  (`merge_rank_predictions`) and split again into disjoint shares (`rank_share`), so the summed
  metric states count every example exactly once even though Lightning's sampler repeats a few.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

# the keys of a window that the model takes as input; everything else in a batch is bookkeeping
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")


def read_squad_json(path: Path, encoding: str = "utf-8") -> list[dict[str, Any]] | None:
    """One row per question if `path` is a SQuAD JSON file, else None (JSON lines, other shapes, or not text
    in `encoding`).

    Two shapes are SQuAD's: the official nested one (`{"data": [{"paragraphs": [{"context", "qas"}]}]}`),
    flattened here, and the flat one the HF `run_qa.py` example reads with `field="data"` (`{"version": …,
    "data": [{"id", "question", "context", "answers": {"text", "answer_start"}}]}`, as its test fixture
    `SQUAD/sample.json`), whose rows are taken as they are.
    """
    try:
        with path.open(encoding=encoding) as f:
            parsed = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    articles = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(articles, list) or not all(isinstance(row, dict) for row in articles):
        return None
    if all("paragraphs" in article for article in articles):
        return flatten_squad(parsed)
    if all("question" in row for row in articles):
        return articles
    return None


def flatten_squad(parsed: dict) -> list[dict[str, Any]]:
    """Nested SQuAD JSON to one row per question, in the shape of the Hub's `squad` datasets.

    Unanswerable SQuAD 2.0 questions (`is_impossible`) get empty answers; their `plausible_answers` are
    not answers and are dropped, as in the official evaluation.
    """
    rows = []
    for article in parsed["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    return rows


def tokenize_windows(
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    contexts: list[str],
    max_length: int,
    doc_stride: int,
):
    """Tokenize question/context pairs into overflowing windows with character offsets.

    Tokenizers that pad on the left (XLNet) read the context first, as in `run_qa.py`. Leading
    whitespace in questions is stripped: some SQuAD questions have lots of it, and it would only eat
    context room. Only the context is truncated; `check_question_lengths` makes sure it can be.
    """
    question_first = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in questions]
    return tokenizer(
        questions if question_first else contexts,
        contexts if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def context_index(tokenizer: PreTrainedTokenizerBase) -> int:
    """Which sequence of the pair is the context (see `tokenize_windows`)."""
    return 1 if tokenizer.padding_side == "right" else 0


def context_room(tokenizer: PreTrainedTokenizerBase, questions: list[str], max_length: int) -> list[int]:
    """Tokens left for the context in a window next to each question (see `tokenize_windows`)."""
    lengths = [len(ids) for ids in tokenizer([q.lstrip() for q in questions], add_special_tokens=False)["input_ids"]]
    return [max_length - n - tokenizer.num_special_tokens_to_add(pair=True) for n in lengths]


def window_layout(encoding, window: int, context_seq: int, cls_token_id: int | None) -> dict[str, Any]:
    """Where the context lies in one window: its first and last token, token offsets, the [CLS] index."""
    sequence_ids = encoding.sequence_ids(window)
    context_tokens = [i for i, s in enumerate(sequence_ids) if s == context_seq]
    input_ids = encoding["input_ids"][window]
    return {
        "offset_mapping": [list(o) for o in encoding["offset_mapping"][window]],
        "context_span": [context_tokens[0], context_tokens[-1]],
        "cls_index": input_ids.index(cls_token_id) if cls_token_id in input_ids else 0,
    }


def answer_token_span(
    offsets: list[list[int]], context_span: list[int], cls_index: int, answer: tuple[int, int] | None
) -> tuple[int, int]:
    """Start and end token of the answer's characters `[start, end)` in a window; [CLS] twice when it is not
    wholly inside the window's context (or there is no answer)."""
    first, last = context_span
    if answer is None:
        return cls_index, cls_index
    start_char, end_char = answer
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return cls_index, cls_index
    start = first
    while start <= last and offsets[start][1] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][0] >= end_char:
        end -= 1
    return start, end


@dataclass(frozen=True)
class Span:
    """A candidate answer: its text, score (start + end logit) and character offsets in the context."""

    text: str
    score: float
    start: int
    end: int


def window_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    window: dict[str, Any],
    context: str,
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> tuple[list[Span], float]:
    """The `n_best_size` best valid spans of one window, best first, and the window's null ([CLS]) score.

    Valid: start and end inside the context, end not before start, at most `max_answer_length` tokens.
    Start and end candidates are the `n_best_size` highest logits within the context (`run_qa.py` takes
    them over the whole window and then drops those outside, which can leave fewer valid spans).
    """
    first, last = window["context_span"]
    offsets = window["offset_mapping"]
    cls = window["cls_index"]
    null_score = float(start_logits[cls] + end_logits[cls])

    def top(logits: np.ndarray) -> list[int]:
        order = np.argsort(logits[first : last + 1], kind="stable")[::-1][:n_best_size]
        return [int(i) + first for i in order]

    spans = []
    for s in top(start_logits):
        for e in top(end_logits):
            if e < s or e - s + 1 > max_answer_length:
                continue
            start_char, end_char = offsets[s][0], offsets[e][1]
            spans.append(
                Span(context[start_char:end_char], float(start_logits[s] + end_logits[e]), start_char, end_char)
            )
    spans.sort(key=lambda span: span.score, reverse=True)
    return spans[:n_best_size], null_score


@dataclass(frozen=True)
class Answer:
    """The answer to one question: `text` ("" for no answer), `probability` among the n-best (softmax of
    scores, as `run_qa.py` reports it), `start` character offset (-1 for no answer), and `null_score_diff`
    (null score minus best span score; SQuAD 2.0 thresholds it)."""

    text: str
    probability: float
    start: int
    null_score_diff: float


def best_answer(
    windows: list[tuple[list[Span], float]],
    n_best_size: int = 20,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> Answer:
    """Pick the answer of one question from the candidates of all its windows (`window_candidates`).

    The null score is the smallest over windows (the window most sure that it holds an answer), as in
    `run_qa.py`. Without a single valid span the answer is "".
    """
    spans = sorted((s for candidates, _ in windows for s in candidates), key=lambda s: s.score, reverse=True)
    spans = spans[:n_best_size]
    null_score = min(null for _, null in windows)
    scores = [s.score for s in spans] + ([null_score] if version_2_with_negative else [])
    if not spans:
        return Answer("", 1.0, -1, math.inf)
    top = max(scores)
    weights = [math.exp(score - top) for score in scores]
    probabilities = [w / sum(weights) for w in weights]
    best = spans[0]
    diff = null_score - best.score
    if version_2_with_negative and diff > null_score_diff_threshold:
        return Answer("", probabilities[-1], -1, diff)
    return Answer(best.text, probabilities[0], best.start, diff)


def merge_rank_predictions(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the `{example id: prediction}` dicts gathered from every rank into one, each id once.

    Lightning's distributed sampler pads the last batches with repeated examples so that every rank
    gets as many; the repeats carry the same id and the same prediction, so merging drops them.
    """
    merged: dict[str, Any] = {}
    for predictions in per_rank:
        merged.update(predictions)
    return merged


def rank_share(ids: list[str], rank: int, world_size: int) -> list[str]:
    """This rank's disjoint share of the example ids: together, the ranks' shares hold each id once."""
    return sorted(ids)[rank::world_size]


def update_squad_metrics(
    metrics: dict[str, Any], predictions: dict[str, tuple[str, list[str]]], version_2_with_negative: bool
) -> None:
    """Add `{id: (predicted text, gold texts)}` to torchmetrics `SQuAD` metrics: `metrics["all"]`, and in
    SQuAD 2.0 mode `metrics["HasAns"]` / `metrics["NoAns"]` for questions with / without gold answers.

    As in SQuAD 2.0's official evaluation, a question without gold answers is scored against the
    empty answer: 1 when the prediction is "" too, else 0.
    """
    for example_id, (text, gold) in predictions.items():
        pred = {"id": example_id, "prediction_text": text}
        target = {"id": example_id, "answers": {"text": gold or [""]}}
        metrics["all"].update(pred, target)
        if version_2_with_negative:
            metrics["HasAns" if gold else "NoAns"].update(pred, target)


def gather_predictions(predictions: dict[str, Any]) -> dict[str, Any]:
    """Every rank's predictions, merged (`merge_rank_predictions`); the same dict on every rank."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dict(predictions)
    per_rank: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(per_rank, predictions)
    return merge_rank_predictions(per_rank)


@dataclass
class QuestionAnsweringCollator:
    """Pad windows into a batch; for evaluation rows (whole examples) also pass on what post-processing needs.

    A training row is one window and becomes one padded row. An evaluation row holds all windows of one
    question; they are flattened into consecutive padded rows, and `batch["examples"]` keeps, per
    question, its id, question, context, gold answers and each window's offsets. Padding always goes on
    the right, so token indices (labels, offsets) stay valid whatever the tokenizer's padding side.
    """

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if "offset_mapping" not in rows[0]:
            return self._pad([{k: row[k] for k in MODEL_INPUTS if k in row} for row in rows])
        windows, examples = [], []
        for row in rows:
            count = len(row["input_ids"])
            windows += [{k: row[k][w] for k in MODEL_INPUTS if k in row} for w in range(count)]
            examples.append(
                {
                    "id": row["id"],
                    "question": row["question"],
                    "context": row["context"],
                    "answers": row.get("answers"),
                    "windows": [
                        {k: row[k][w] for k in ("offset_mapping", "context_span", "cls_index")} for w in range(count)
                    ],
                }
            )
        batch = self._pad(windows)
        batch["examples"] = examples
        return batch

    def _pad(self, windows: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.tokenizer.pad(windows, padding=True, padding_side="right", return_tensors="pt"))
