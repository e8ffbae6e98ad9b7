"""Each HF example script's own test, run through hftrain: the flags of `examples/pytorch/test_pytorch_examples.py`
translated through docs/migration.md's table (`helpers.translate_hf_flags`), on files written in the exact shapes of
the examples' fixtures (`tests/fixtures/tests_samples/`), with the tiny models of `conftest.py`, end to end.

The hftrain command that replaces each script is the translated flag list plus the task's two classes (the
script's name says which); docs/migration.md lists them.
"""

import json
import random
from pathlib import Path

import pytest
from conftest import (
    CIPHER,
    FILLER,
    NEGATIVE,
    POSITIVE,
    SOURCE_WORDS,
    counting,
    minilm_path,
    sentiment_rows,
    write_csv,
)
from helpers import run_cli, translate_hf_flags, write_jsonl
from huggingface_hub import ModelCard
from test_multiple_choice import swag_rows

from hftrain.core.errors import HFTrainError
from hftrain.core.runs import read_results

TASKS = "hftrain.tasks"
CLASSES = {
    "run_glue": ("text_classification.TextClassification", "text_classification.TextClassificationData"),
    "run_ner": ("token_classification.TokenClassification", "token_classification.TokenClassificationData"),
    "run_qa": ("question_answering.QuestionAnswering", "question_answering.QuestionAnsweringData"),
    "run_translation": ("seq2seq.Seq2Seq", "seq2seq.Seq2SeqData"),
    "run_summarization": ("seq2seq.Seq2Seq", "seq2seq.Seq2SeqData"),
    "run_clm": ("language_modeling.LanguageModeling", "language_modeling.LanguageModelingData"),
    "run_swag": ("multiple_choice.MultipleChoice", "multiple_choice.MultipleChoiceData"),
    "run_mlm": (
        "masked_language_modeling.MaskedLanguageModeling",
        "masked_language_modeling.MaskedLanguageModelingData",
    ),
}


def run_example(output: Path, script: str, hf_flags: str, *extra: str) -> dict:
    """`hftrain fit` with the script's task classes and its flags translated (`--output_dir` is `output`/runs);
    the run's results.json, after checking its model card."""
    model, data = CLASSES[script]
    flags = translate_hf_flags(hf_flags.split())
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    assert run_cli("fit", f"--model={TASKS}.{model}", f"--data={TASKS}.{data}", *flags, *quiet, *extra) == 0
    (run,) = [p.parent for p in (output / "runs").rglob("results.json")]
    results = read_results(run)
    card = ModelCard.load(run / "hf_model" / "README.md")
    assert card.data.library_name == "transformers" and "## Results" in card.text
    return results


def test_run_glue_mrpc_csv(tiny_bert, tmp_path):
    # MRPC/dev.csv's shape: label,sentence1,sentence2 with string labels
    def mrpc(n: int, seed: int) -> list[dict]:
        return [
            {
                "label": "equivalent" if r["label"] == "pos" else "not_equivalent",
                "sentence1": r["text"],
                "sentence2": "the film was " + r["text"].split()[-1],
            }
            for r in sentiment_rows(n, seed)
        ]

    # 16 rows: an epoch (8 steps of 2) ends within --max_steps=10, so validation runs (a run stopped mid-epoch
    # is validated at its end only once the run lifecycle issue lands)
    train, dev = write_csv(tmp_path / "train.csv", mrpc(16, 1)), write_csv(tmp_path / "dev.csv", mrpc(8, 2))
    results = run_example(
        tmp_path,
        "run_glue",
        f"""--model_name_or_path {tiny_bert} --output_dir {tmp_path}/runs --overwrite_output_dir
        --train_file {train} --validation_file {dev} --do_train --do_eval --per_device_train_batch_size=2
        --per_device_eval_batch_size=1 --learning_rate=1e-4 --max_steps=10 --warmup_steps=2 --seed=42
        --max_seq_length=128""",
    )
    assert results["global_step"] == 10
    assert {"val/accuracy", "val/f1", "val/loss"} <= set(results["final"])


def test_run_ner_words_and_ner_json(tiny_bert, tmp_path):
    # conll/sample.json's shape: JSON lines {"words": [...], "ner": [...]} with string tags
    rng = random.Random(0)
    rows = []
    for _ in range(10):
        words = rng.sample(FILLER + POSITIVE + NEGATIVE, rng.randint(1, 12))
        rows.append(
            {"words": words, "ner": ["B-ORG" if w in POSITIVE else "B-PER" if w in NEGATIVE else "O" for w in words]}
        )
    sample = write_jsonl(tmp_path / "sample.json", rows)
    results = run_example(
        tmp_path,
        "run_ner",
        f"""--model_name_or_path {tiny_bert} --train_file {sample} --validation_file {sample}
        --output_dir {tmp_path}/runs --overwrite_output_dir --do_train --do_eval --warmup_steps=2
        --learning_rate=2e-4 --per_device_train_batch_size=2 --per_device_eval_batch_size=2 --num_train_epochs=2
        --seed 7""",
    )
    assert results["global_step"] == 10  # 10 sentences, batch 2, 2 epochs
    assert {"val/f1", "val/accuracy", "val/f1_ORG", "val/f1_PER"} <= set(results["final"])


def test_run_qa_flat_squad_json(tiny_bert, tmp_path):
    # SQUAD/sample.json's shape: {"version": 2.0, "data": [{id, question, context, answers}]}, some unanswerable
    rng = random.Random(0)
    rows = []
    for i in range(12):
        context = " ".join(rng.sample(FILLER, 6) + [rng.choice(POSITIVE)] + rng.sample(FILLER, 5))
        answer = next(w for w in context.split() if w in POSITIVE)
        answerable = i % 3 != 0
        rows.append(
            {
                "id": f"q{i}",
                "question": "what was good ?" if answerable else "who was bad ?",
                "context": context,
                "answers": {
                    "answer_start": [context.index(answer)] if answerable else [],
                    "text": [answer] if answerable else [],
                },
            }
        )
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"version": 2.0, "data": rows}, indent=4))
    results = run_example(
        tmp_path,
        "run_qa",
        f"""--model_name_or_path {tiny_bert} --version_2_with_negative --train_file {sample}
        --validation_file {sample} --output_dir {tmp_path}/runs --overwrite_output_dir --max_steps=10
        --warmup_steps=2 --do_train --do_eval --learning_rate=2e-4 --per_device_train_batch_size=2
        --per_device_eval_batch_size=1 --max_seq_length 64 --doc_stride 16""",
    )
    assert results["global_step"] == 10
    assert {"val/exact_match", "val/f1", "val/HasAns_f1", "val/NoAns_f1"} <= set(results["final"])


@pytest.mark.skipif(minilm_path() is None, reason="the all-MiniLM-L6-v2 weights of the `demo` extra are not installed")
def test_run_swag_sample_json(tmp_path):
    # swag/sample.json's shape: 10 JSON lines {ending0..ending3, label, sent1, sent2}; trained and scored on it.
    # The example test fine-tunes a pretrained BERT (bert-base-uncased) to its threshold of 0.8 in 20 steps at
    # 2e-4; a random tiny BERT stays near chance at that rate, so a small pretrained one takes its place
    sample = write_jsonl(tmp_path / "sample.json", swag_rows(10, seed=0))
    results = run_example(
        tmp_path,
        "run_swag",
        f"""--model_name_or_path {minilm_path()} --train_file {sample} --validation_file {sample}
        --output_dir {tmp_path}/runs --overwrite_output_dir --max_steps=20 --warmup_steps=2 --do_train --do_eval
        --learning_rate=2e-4 --per_device_train_batch_size=2 --per_device_eval_batch_size=1""",
    )
    assert results["global_step"] == 20
    assert results["final"]["val/accuracy"] >= 0.8  # the example test's threshold


def cipher_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    sentences = [[rng.choice(SOURCE_WORDS) for _ in range(rng.randint(3, 6))] for _ in range(n)]
    return [(" ".join(words), " ".join(CIPHER[w] for w in words)) for words in sentences]


def test_run_translation_wmt16_json(tiny_t5, tmp_path):
    # wmt16/sample.json's shape: JSON lines {"translation": {"en": ..., "ro": ...}}
    sample = write_jsonl(
        tmp_path / "sample.json", [{"translation": {"en": s, "ro": t}} for s, t in cipher_pairs(10, 0)]
    )
    results = run_example(
        tmp_path,
        "run_translation",
        f"""--model_name_or_path {tiny_t5} --source_lang en --target_lang ro --train_file {sample}
        --validation_file {sample} --output_dir {tmp_path}/runs --overwrite_output_dir --max_steps=10
        --warmup_steps=8 --do_train --do_eval --learning_rate=3e-3 --per_device_train_batch_size=2
        --per_device_eval_batch_size=1 --predict_with_generate --max_source_length 512
        --val_max_target_length 12""",
    )
    assert results["global_step"] == 10 and results["monitor"] == "val/bleu"
    assert {"val/bleu", "val/chrf", "val/loss"} <= set(results["final"])


def test_run_summarization_xsum_json(tiny_t5, tmp_path):
    # xsum/sample.json's shape: JSON lines {"document": ..., "summary": ...}, found without column flags
    rows = [{"document": f"{s} {s}", "summary": t} for s, t in cipher_pairs(10, 1)]
    sample = write_jsonl(tmp_path / "sample.json", rows)
    results = run_example(
        tmp_path,
        "run_summarization",
        f"""--model_name_or_path {tiny_t5} --train_file {sample} --validation_file {sample}
        --output_dir {tmp_path}/runs --overwrite_output_dir --max_steps=10 --warmup_steps=8 --do_train --do_eval
        --learning_rate=2e-4 --per_device_train_batch_size=2 --per_device_eval_batch_size=1
        --predict_with_generate --val_max_target_length 12""",
        "--model.init_args.task=summarization",  # one task class serves both scripts
    )
    assert results["global_step"] == 10 and results["monitor"] == "val/rougeL"
    assert {"val/rouge1", "val/rouge2", "val/rougeL", "val/rougeLsum"} <= set(results["final"])


def test_run_clm_plain_text(tiny_gpt2, tmp_path):
    # run_clm's sample_text.txt: plain text, paragraphs between blank lines
    sample = tmp_path / "sample_text.txt"
    sample.write_text("\n\n".join(counting(120, seed=0)) + "\n")
    results = run_example(
        tmp_path,
        "run_clm",
        f"""--model_name_or_path {tiny_gpt2} --train_file {sample} --validation_file {sample} --do_train --do_eval
        --block_size 128 --per_device_train_batch_size 5 --per_device_eval_batch_size 5 --num_train_epochs 2
        --output_dir {tmp_path}/runs --overwrite_output_dir""",
    )
    assert results["history"][-1]["epoch"] == 1
    assert {"val/perplexity", "val/loss"} <= set(results["final"])


def test_run_mlm_plain_text(tiny_bert, tmp_path):
    # run_mlm's sample_text.txt: plain text, one sentence per line, blank lines between documents
    rng = random.Random(0)

    def sentence() -> str:
        return " ".join(rng.sample(FILLER, 4) + [rng.choice(POSITIVE + NEGATIVE)])

    sample = tmp_path / "sample_text.txt"
    sample.write_text("\n\n".join("\n".join(sentence() for _ in range(8)) for _ in range(300)) + "\n")
    results = run_example(
        tmp_path,
        "run_mlm",
        f"""--model_name_or_path {tiny_bert} --train_file {sample} --validation_file {sample}
        --output_dir {tmp_path}/runs --overwrite_output_dir --do_train --do_eval --prediction_loss_only
        --num_train_epochs=1""",
        # the script's default batch (8), and a higher rate: the tiny model starts from random weights where the
        # HF test's distilroberta-base starts pretrained
        "--data.batch_size=8",
        "--model.learning_rate=1e-2",
    )
    assert results["history"][-1]["epoch"] == 0
    assert results["final"]["val/perplexity"] < 42  # the HF test's threshold


# ----------------------------------------------------------------- the scripts' column guesses, one by one


@pytest.mark.parametrize(
    ("header", "label_column", "expected"),
    [
        (["label", "sentence1", "sentence2", "idx"], "label", ("sentence1", "sentence2")),  # run_glue's own pick
        (["sentence", "label"], "label", ("sentence", None)),  # SST-2's TSV
        (["id", "question1", "question2", "label"], "label", ("question1", "question2")),  # QQP: ids are numbers
        (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], "Quality", ("#1 String", "#2 String")),  # MRPC TSV
        (["text", "title", "label"], "label", ("text", None)),  # hftrain's own default column wins over a pair
    ],
)
def test_text_columns_found_as_run_glue_finds_them(tiny_bert, tmp_path, header, label_column, expected):
    from hftrain.tasks.text_classification import TextClassificationData

    numbers = {"idx": 0, "id": 0, "#1 ID": 0, "#2 ID": 0, "label": 1, "Quality": 1}
    rows = [
        {c: i % 2 if numbers.get(c) else i if c in numbers else r["text"] for c in header}
        for i, r in enumerate(sentiment_rows(8))
    ]
    path = write_csv(tmp_path / "train.tsv", rows, delimiter="\t")
    data = TextClassificationData(tokenizer_name=tiny_bert, train_file=str(path), label_column=label_column)
    assert (data.text_column, data.text_pair_column) == expected


def test_an_ambiguous_text_column_guess_is_an_error(tiny_bert, tmp_path):
    from hftrain.tasks.text_classification import TextClassificationData

    rows = [
        {"title": r["text"], "body": r["text"], "summary": r["text"], "label": r["label"]} for r in sentiment_rows(8)
    ]
    path = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(HFTrainError, match=r"3 text columns.*title, body, summary.*data.text_column"):
        TextClassificationData(tokenizer_name=tiny_bert, train_file=str(path))


def test_ner_columns_found_as_run_ner_finds_them(tiny_bert, tmp_path):
    from hftrain.tasks.token_classification import TokenClassificationData

    named = [{"id": "1", "tokens": ["a", "film"], "pos_tags": ["DT", "NN"], "ner_tags": ["O", "B-MISC"]}] * 4
    data = TokenClassificationData(tokenizer_name=tiny_bert, train_file=write_jsonl(tmp_path / "n.jsonl", named))
    assert (data.tokens_column, data.tag_column) == ("tokens", "ner_tags")
    three = [{"words": ["a", "film"], "pos": ["DT", "NN"], "ner": ["O", "B-MISC"]}] * 4
    with pytest.raises(HFTrainError, match=r"tags is ambiguous.*\('words'\).*list columns pos, ner.*data.tag_column"):
        TokenClassificationData(tokenizer_name=tiny_bert, train_file=write_jsonl(tmp_path / "t.jsonl", three))
    data = TokenClassificationData(
        tokenizer_name=tiny_bert, train_file=write_jsonl(tmp_path / "t.jsonl", three), tag_column="ner"
    )
    assert data.tokens_column == "words" and data.label_names == ["B-MISC", "O"]


def test_seq2seq_columns_and_translation_languages(tiny_t5, tmp_path):
    from hftrain.tasks.seq2seq import Seq2SeqData

    pairs = cipher_pairs(4, 0)
    wmt = write_jsonl(tmp_path / "wmt.json", [{"translation": {"en": s, "ro": t}} for s, t in pairs])
    with pytest.raises(HFTrainError, match=r"'translation' column \(languages: en, ro\).*data.source_lang"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=wmt)
    news = write_jsonl(tmp_path / "news.json", [{"id": "1", "article": s, "highlights": t} for s, t in pairs])
    data = Seq2SeqData(tokenizer_name=tiny_t5, train_file=news)
    assert (data.source_column, data.target_column) == ("article", "highlights")
    three = write_jsonl(tmp_path / "three.json", [{"a": s, "b": t, "c": t} for s, t in pairs])
    with pytest.raises(HFTrainError, match=r"ambiguous: its text columns are a, b, c.*data.source_column"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=three)


def test_a_text_file_without_suffix_is_read_as_documents(tiny_gpt2, tmp_path):
    from hftrain.tasks.language_modeling import LanguageModelingData

    (tmp_path / "wiki_00").write_text('<doc id="12" title="A">\nA\n\nfirst paragraph\n\nsecond one\n</doc>\n')
    data = LanguageModelingData(tokenizer_name=tiny_gpt2, train_file=str(tmp_path / "wiki_00"))
    assert len(data.raw["train"]) + len(data.raw["validation"]) == 3
