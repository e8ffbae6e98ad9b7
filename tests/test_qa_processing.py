"""Question answering pre- and post-processing on hand-built inputs: windows, labels, answers, metrics."""

import collections
import json
import re
import string

import numpy as np
import pytest
from torchmetrics.text import SQuAD
from transformers import AutoTokenizer

from hftrain.tasks.question_answering_processing import (
    QuestionAnsweringCollator,
    Span,
    answer_token_span,
    best_answer,
    context_index,
    merge_rank_predictions,
    rank_share,
    read_squad_json,
    tokenize_windows,
    update_squad_metrics,
    window_candidates,
    window_layout,
)

CONTEXT = " ".join(["the film was good"] + ["it was a really lovely story"] * 8 + ["the acting was awful"])


def labelled_windows(tokenizer, question, context, answer_text, answer_start, max_length=32, doc_stride=8):
    encoding = tokenize_windows(tokenizer, [question], [context], max_length, doc_stride)
    windows = []
    for w in range(len(encoding["input_ids"])):
        layout = window_layout(encoding, w, context_index(tokenizer), tokenizer.cls_token_id)
        span = (answer_start, answer_start + len(answer_text)) if answer_text else None
        start, end = answer_token_span(layout["offset_mapping"], layout["context_span"], layout["cls_index"], span)
        windows.append((encoding["input_ids"][w], layout, start, end))
    return windows


def labelled_text(tokenizer, context, window):
    """The context text that a window's labels point at ("" for [CLS])."""
    _, layout, start, end = window
    if start == layout["cls_index"]:
        return ""
    return context[layout["offset_mapping"][start][0] : layout["offset_mapping"][end][1]]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_bert_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_bert_tokenizer_dir(tmp_path_factory):
    from conftest import corpus, train_wordpiece

    folder = tmp_path_factory.mktemp("qa-tokenizer")
    train_wordpiece(folder, corpus())
    return str(folder)


def boundary_answer(tokenizer) -> tuple[str, int]:
    """Three words of CONTEXT across the end of the first window: only later windows hold them whole."""
    windows = labelled_windows(tokenizer, "what was it?", CONTEXT, "", -1)
    layout = windows[0][1]
    cut = layout["offset_mapping"][layout["context_span"][1]][0]
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", CONTEXT)]
    i = next(i for i, (start, end) in enumerate(words) if start <= cut < end)
    start, end = words[i - 1][0], words[i + 1][1]
    return CONTEXT[start:end], start


@pytest.mark.parametrize("where", ["start", "end", "across a window boundary"])
def test_every_window_holding_the_answer_is_labelled_with_it_and_the_others_with_cls(tokenizer, where):
    answer, start_char = {
        "start": ("the film", 0),
        "end": ("acting was awful", CONTEXT.rindex("acting was awful")),
    }.get(where) or boundary_answer(tokenizer)
    windows = labelled_windows(tokenizer, "what was it?", CONTEXT, answer, start_char)
    assert len(windows) > 3, "the context must span several windows"
    texts = [labelled_text(tokenizer, CONTEXT, w) for w in windows]
    assert answer in texts
    assert set(texts) == {answer, ""}
    for (_, layout, _, _), text in zip(windows, texts, strict=True):
        first, last = layout["context_span"]
        offsets = layout["offset_mapping"]
        inside = offsets[first][0] <= start_char and start_char + len(answer) <= offsets[last][1]
        assert (text == answer) == inside
    if where == "across a window boundary":
        assert texts[0] == "", "the first window cuts the answer, so it must be labelled [CLS]"


def test_unanswerable_questions_are_labelled_cls_in_every_window(tokenizer):
    windows = labelled_windows(tokenizer, "who?", CONTEXT, "", -1)
    assert all(start == end == layout["cls_index"] for _, layout, start, end in windows)


def test_left_padding_tokenizers_read_the_context_first_and_labels_still_point_at_the_answer(tokenizer):
    left = AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side="left")
    answer, start_char = "acting was awful", CONTEXT.rindex("acting was awful")
    windows = labelled_windows(left, "what was it?", CONTEXT, answer, start_char)
    input_ids, layout, _, _ = windows[0]
    first_text = left.decode(input_ids[1 : layout["context_span"][1] + 1])
    assert first_text.startswith("the film")
    assert answer in [labelled_text(left, CONTEXT, w) for w in windows]


def test_leading_whitespace_in_questions_takes_no_context_room(tokenizer):
    plain = tokenize_windows(tokenizer, ["what was it?"], [CONTEXT], 32, 8)
    padded = tokenize_windows(tokenizer, ["      what was it?"], [CONTEXT], 32, 8)
    assert plain["input_ids"] == padded["input_ids"]


def window(context_tokens: list[tuple[int, int]], question_tokens: int = 3):
    """A window layout [CLS] question [SEP] context [SEP] with the given context offsets."""
    offsets = [[0, 0]] + [[0, 1]] * question_tokens + [[0, 0]] + [list(o) for o in context_tokens] + [[0, 0]]
    first = question_tokens + 2
    return {
        "offset_mapping": offsets,
        "context_span": [first, first + len(context_tokens) - 1],
        "cls_index": 0,
    }


WORDS = "alpha beta gamma delta epsilon"
WORD_OFFSETS = [(m.start(), m.end()) for m in re.finditer(r"\w+", WORDS)]


def logits_with(size: int, peaks: dict[int, float]) -> np.ndarray:
    logits = np.zeros(size)
    for index, value in peaks.items():
        logits[index] = value
    return logits


def test_the_best_valid_span_is_mapped_back_to_the_context_text():
    layout = window(WORD_OFFSETS)  # context tokens are 5..9
    start = logits_with(11, {6: 5.0, 1: 9.0, 10: 9.0})  # question and [SEP] tokens must be ignored
    end = logits_with(11, {7: 5.0, 2: 9.0})
    spans, null = window_candidates(start, end, layout, WORDS)
    assert spans[0] == Span("beta gamma", 10.0, 6, 16)
    assert null == 0.0


def test_spans_ending_before_they_start_or_longer_than_max_answer_length_are_dropped():
    layout = window(WORD_OFFSETS)
    start = logits_with(11, {8: 9.0, 5: 4.0})
    end = logits_with(11, {6: 9.0, 9: 4.0})
    spans, _ = window_candidates(start, end, layout, WORDS, max_answer_length=2)
    assert all(s.start <= s.end for s in spans)
    assert spans[0].text == "delta epsilon"  # 8..9; 8..6 is backwards, 5..9 too long
    assert all(len(s.text.split()) <= 2 for s in spans)


def test_the_answer_comes_from_the_window_with_the_best_span():
    layout = window(WORD_OFFSETS)
    weak = window_candidates(logits_with(11, {5: 1.0}), logits_with(11, {5: 1.0}), layout, WORDS)
    strong = window_candidates(logits_with(11, {9: 7.0}), logits_with(11, {9: 7.0}), layout, WORDS)
    answer = best_answer([weak, strong])
    assert (answer.text, answer.start) == ("epsilon", WORDS.index("epsilon"))
    assert 0 < answer.probability <= 1


@pytest.mark.parametrize(("threshold", "expected"), [(0.0, ""), (3.0, "beta")])
def test_squad_v2_answers_nothing_when_the_null_score_beats_the_best_span_by_more_than_the_threshold(
    threshold, expected
):
    layout = window(WORD_OFFSETS)
    start = logits_with(11, {0: 6.0, 6: 4.0})
    end = logits_with(11, {0: 6.0, 6: 6.0})  # null 12, best span 10: a difference of 2
    candidates = [window_candidates(start, end, layout, WORDS)]
    assert best_answer(candidates, version_2_with_negative=True, null_score_diff_threshold=threshold).text == expected
    assert best_answer(candidates, version_2_with_negative=False).text == "beta"


def test_the_null_score_is_the_smallest_over_windows():
    layout = window(WORD_OFFSETS)
    sure = window_candidates(logits_with(11, {0: 9.0}), logits_with(11, {0: 9.0}), layout, WORDS)
    unsure = window_candidates(logits_with(11, {0: -5.0, 7: 1.0}), logits_with(11, {0: -5.0, 7: 1.0}), layout, WORDS)
    assert best_answer([sure, unsure], version_2_with_negative=True).text == "gamma"


# ---- the official SQuAD v1.1 evaluation script (evaluate-v1.1.py), verbatim in logic


def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def official_v1(predictions):
    f1 = em = 0.0
    for text, gold in predictions.values():
        em += metric_max_over_ground_truths(exact_match_score, text, gold)
        f1 += metric_max_over_ground_truths(f1_score, text, gold)
    return {"exact_match": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}


# ---- the official SQuAD 2.0 evaluation (evaluate-v2.0.py): empty gold answers score against ""


def official_v2_scores(text, gold):
    gold = [a for a in gold if normalize_answer(a)] or [""]
    pred_tokens, exact, f1 = normalize_answer(text).split(), 0, 0
    for answer in gold:
        gold_tokens = normalize_answer(answer).split()
        exact = max(exact, int(normalize_answer(answer) == normalize_answer(text)))
        if not gold_tokens or not pred_tokens:
            f1 = max(f1, int(gold_tokens == pred_tokens))
            continue
        common = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
        if common:
            precision, recall = common / len(pred_tokens), common / len(gold_tokens)
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return exact, f1


PREDICTIONS = {
    "q1": ("Denver Broncos", ["Denver Broncos", "the Denver Broncos"]),
    "q2": ("the Broncos!", ["Denver Broncos"]),
    "q3": ("Santa Clara, California", ["Levi's Stadium", "Santa Clara, California"]),
    "q4": ("in 2016 it was", ["2016", "February 7, 2016"]),
    "q5": ("Carolina", ["Carolina Panthers"]),
    "q6": ("gold", ["golden anniversary", "gold-themed"]),
}
UNANSWERABLE = {"n1": ("", []), "n2": ("Beyonce", []), "n3": ("", [])}


def test_exact_match_and_f1_equal_the_official_squad_v1_1_evaluation():
    metrics = {"all": SQuAD()}
    update_squad_metrics(metrics, PREDICTIONS, version_2_with_negative=False)
    ours = {k: float(v) for k, v in metrics["all"].compute().items()}
    assert ours == pytest.approx(official_v1(PREDICTIONS))


def test_squad_v2_scores_and_has_ans_no_ans_split_equal_the_official_squad_v2_evaluation():
    everything = {**PREDICTIONS, **UNANSWERABLE}
    metrics = {"all": SQuAD(), "HasAns": SQuAD(), "NoAns": SQuAD()}
    update_squad_metrics(metrics, everything, version_2_with_negative=True)
    for group, subset in (("all", everything), ("HasAns", PREDICTIONS), ("NoAns", UNANSWERABLE)):
        scores = [official_v2_scores(text, gold) for text, gold in subset.values()]
        expected = {
            "exact_match": 100 * np.mean([s[0] for s in scores]),
            "f1": 100 * np.mean([s[1] for s in scores]),
        }
        assert {k: float(v) for k, v in metrics[group].compute().items()} == pytest.approx(expected), group


def test_under_ddp_every_question_is_scored_exactly_once_even_when_the_sampler_repeats_some():
    everything = {**PREDICTIONS, **UNANSWERABLE}
    ids = list(everything)
    world_size = 4
    padded = ids + ids[: -len(ids) % world_size]  # DistributedSampler repeats the first ones to even out ranks
    per_rank = [{i: everything[i] for i in padded[rank::world_size]} for rank in range(world_size)]
    assert sum(map(len, per_rank)) > len(ids)
    merged = merge_rank_predictions(per_rank)
    assert merged == everything
    shares = [rank_share(list(merged), rank, world_size) for rank in range(world_size)]
    assert sorted(i for share in shares for i in share) == sorted(ids)
    # each rank scores its share; torchmetrics sums the states across ranks
    rank_metrics = []
    for share in shares:
        metrics = {"all": SQuAD()}
        update_squad_metrics(metrics, {i: merged[i] for i in share}, version_2_with_negative=False)
        rank_metrics.append(metrics["all"])
    f1 = sum(float(m.f1_score) for m in rank_metrics)
    total = sum(int(m.total) for m in rank_metrics)
    single = {"all": SQuAD()}
    update_squad_metrics(single, everything, version_2_with_negative=False)
    assert total == len(ids)
    assert 100 * f1 / total == pytest.approx(float(single["all"].compute()["f1"]))


def test_nested_squad_json_is_flattened_to_one_row_per_question(tmp_path):
    nested = {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is in France.",
                        "qas": [
                            {
                                "id": "a",
                                "question": "Where is Paris?",
                                "answers": [{"text": "France", "answer_start": 12}],
                                "is_impossible": False,
                            },
                            {
                                "id": "b",
                                "question": "Where is Rome?",
                                "answers": [],
                                "plausible_answers": [{"text": "France", "answer_start": 12}],
                                "is_impossible": True,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(nested))
    rows = read_squad_json(path)
    assert rows[0]["answers"] == {"text": ["France"], "answer_start": [12]}
    assert rows[1]["answers"] == {"text": [], "answer_start": []}
    assert [r["context"] for r in rows] == ["Paris is in France."] * 2
    # run_qa's flat shape (its SQUAD/sample.json fixture): rows under "data", taken as they are
    flat_rows = [{"id": "a", "question": "q", "context": "c", "answers": {"text": [], "answer_start": []}}]
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"version": 2.0, "data": flat_rows}))
    assert read_squad_json(flat) == flat_rows
    for other in ([{"id": "a", "question": "q", "context": "c"}], {"data": [{"title": "no questions"}]}):
        flat.write_text(json.dumps(other))
        assert read_squad_json(flat) is None


def test_the_collator_keeps_whole_questions_together_and_pads_on_the_right(tokenizer):
    left = AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side="left")
    encoding = tokenize_windows(tokenizer, ["what?", "who?"], [CONTEXT, "a good film"], 32, 8)
    rows = [
        {"id": "x", "question": "what?", "context": CONTEXT, "answers": ["good"]},
        {"id": "y", "question": "who?", "context": "a good film", "answers": []},
    ]
    for w, example in enumerate(encoding["overflow_to_sample_mapping"]):
        layout = window_layout(encoding, w, 1, tokenizer.cls_token_id)
        for key, value in {
            "input_ids": encoding["input_ids"][w],
            "attention_mask": encoding["attention_mask"][w],
            **layout,
        }.items():
            rows[example].setdefault(key, []).append(value)
    batch = QuestionAnsweringCollator(left)(rows)
    windows = len(rows[0]["input_ids"]) + 1
    assert batch["input_ids"].shape[0] == windows
    assert [e["id"] for e in batch["examples"]] == ["x", "y"]
    assert len(batch["examples"][0]["windows"]) == windows - 1
    assert batch["attention_mask"][-1, 0] == 1  # the short last window is padded at its end
