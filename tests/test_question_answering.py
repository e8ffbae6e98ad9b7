"""Question answering end to end on a tiny random BERT: hand-written SQuAD files, fit, export, predict."""

import json
import random

import pytest
import torch
import yaml
from conftest import FILLER, NEGATIVE, POSITIVE, REPO, SHARED_DATA, minilm_path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from hftrain.cli import main
from hftrain.core.errors import HFTrainError
from hftrain.tasks.question_answering import QuestionAnswering, QuestionAnsweringData

MODEL = "hftrain.tasks.question_answering.QuestionAnswering"
DATA = "hftrain.tasks.question_answering.QuestionAnsweringData"


def squad_file(path, examples: list[dict]) -> str:
    """Write nested SQuAD JSON: one paragraph per example, `answer` None for an unanswerable question."""
    paragraphs = []
    for i, example in enumerate(examples):
        answer = example.get("answer")
        qa = {
            "id": example.get("id", f"q{i}"),
            "question": example["question"],
            "is_impossible": answer is None,
            "answers": [] if answer is None else [{"text": answer, "answer_start": example["context"].index(answer)}],
        }
        paragraphs.append({"context": example["context"], "qas": [qa]})
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return str(path)


def sentiment_questions(n: int, seed: int) -> list[dict]:
    """Which word is good? Filler words with one sentiment word, at the start, middle or end of the context;
    a quarter has no positive word and no answer. Long contexts span several windows at max_length 32."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        words = rng.choices(FILLER, k=rng.choice([6, 30]))
        answer = rng.choice(POSITIVE) if i % 4 else None
        where = [0, len(words) // 2, len(words)][i % 3]
        words.insert(where, answer or rng.choice(NEGATIVE))
        examples.append({"question": "which word is good?", "context": " ".join(words), "answer": answer})
    return examples


def write_config(path, model_path: str, files: dict[str, str], version_2: bool = True, **trainer) -> str:
    config = {
        "model": {
            "class_path": MODEL,
            "init_args": {
                "model_name_or_path": model_path,
                "learning_rate": 3e-3,
                "version_2_with_negative": version_2,
            },
        },
        "data": {
            "class_path": DATA,
            "init_args": {
                **{f"{s}_file": f for s, f in files.items()},
                "max_length": 32,
                "doc_stride": 8,
                "batch_size": 8,
            },
        },
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False, **trainer},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    """One v2-mode fit on nested SQuAD JSON, then predict with the exported model: its run folder."""
    folder = tmp_path_factory.mktemp("qa-run")
    files = {
        "train": squad_file(folder / "train.json", sentiment_questions(48, seed=1)),
        "validation": squad_file(folder / "dev.json", sentiment_questions(16, seed=2)),
        "predict": squad_file(folder / "predict.json", sentiment_questions(12, seed=3)),
    }
    config = write_config(folder / "qa.yaml", tiny_bert, files)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("HFTRAIN_CACHE", str(folder / "cache"))
        main(["fit", "--config", config])
        run = folder / "runs" / "qa" / "version_0"
        main(
            [
                "predict",
                "--config",
                config,
                "--model.model_name_or_path",
                str(run / "hf_model"),
                "--prediction_writer.output_file",
                str(run / "predictions.jsonl"),
            ]
        )
    return {"run": run, "files": files, "config": config}


def test_fit_logs_squad_v2_metrics_over_whole_questions(trained):
    results = json.loads((trained["run"] / "results.json").read_text())
    final = results["final"]
    for key in (
        "val/exact_match",
        "val/f1",
        "val/HasAns_exact_match",
        "val/HasAns_f1",
        "val/NoAns_exact_match",
        "val/NoAns_f1",
        "val/loss",
    ):
        assert key in final
    for key in ("val/exact_match", "val/f1", "val/HasAns_f1", "val/NoAns_f1"):
        assert 0 <= final[key] <= 100
    assert results["monitor"] == "val/f1"
    events = EventAccumulator(str(trained["run"]), size_guidance={"tensors": 0}).Reload()
    table = events.Tensors("val/examples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert table.count("which word is good?") == 3  # question, gold answers, predicted answer per row
    # 16 questions, 4 unanswerable: the overall score is the count-weighted mean of HasAns and NoAns
    assert final["val/exact_match"] == pytest.approx(
        (12 * final["val/HasAns_exact_match"] + 4 * final["val/NoAns_exact_match"]) / 16, abs=1e-3
    )


def test_predict_writes_one_answer_per_question_taken_from_its_context(trained):
    rows = [json.loads(line) for line in (trained["run"] / "predictions.jsonl").read_text().splitlines()]
    questions = sentiment_questions(12, seed=3)
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(12)]
    for row, example in zip(rows, questions, strict=True):
        assert set(row) == {"id", "question", "context", "gold", "answer", "score"}
        assert (row["question"], row["context"]) == (example["question"], example["context"])
        assert row["gold"] == ([example["answer"]] if example["answer"] else [])
        assert row["answer"] in example["context"]
        assert 0 <= row["score"] <= 1


def pipeline_style_answer(model, tokenizer, question: str, context: str, max_answer_len: int = 30) -> str:
    """The v4 `question-answering` pipeline's decoding for a context that fits one window, without hftrain:
    softmax of start and end over context tokens, best product with 0 <= end - start < max_answer_len,
    text cut by token offsets (`align_to_words=False`)."""
    encoding = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = encoding.pop("offset_mapping")[0].tolist()
    outside = torch.tensor([s != 1 for s in encoding.sequence_ids(0)])
    with torch.no_grad():
        outputs = model(**encoding)
    start = outputs.start_logits[0].masked_fill(outside, -1e4).softmax(-1)
    end = outputs.end_logits[0].masked_fill(outside, -1e4).softmax(-1)
    scores = torch.tril(torch.triu(start[:, None] * end[None, :]), max_answer_len - 1)
    s, e = divmod(int(scores.argmax()), scores.shape[1])
    return context[offsets[s][0] : offsets[e][1]]


def module_answers(model_path: str, predict_file: str) -> dict[str, str]:
    from lightning.pytorch import Trainer

    module = QuestionAnswering(model_name_or_path=model_path)
    data = QuestionAnsweringData(tokenizer_name=model_path, predict_file=predict_file, max_length=64, doc_stride=8)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    batches = trainer.predict(module, datamodule=data)
    return {row["id"]: row["answer"] for batch in batches for row in batch}


def test_the_exported_model_gives_the_same_answers_without_hftrain(trained, tmp_path):
    model_path = str(trained["run"] / "hf_model")
    questions = [q for q in sentiment_questions(12, seed=3) if len(q["context"].split()) < 10]
    predict = squad_file(tmp_path / "short.json", questions)
    ours = module_answers(model_path, predict)
    model = AutoModelForQuestionAnswering.from_pretrained(model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    theirs = {
        f"q{i}": pipeline_style_answer(model, tokenizer, q["question"], q["context"]) for i, q in enumerate(questions)
    }
    assert ours == theirs


def test_the_exported_model_works_with_the_transformers_question_answering_pipeline(trained, tmp_path):
    from transformers.pipelines import SUPPORTED_TASKS, pipeline

    if "question-answering" not in SUPPORTED_TASKS:
        pytest.skip("this transformers version has no question-answering pipeline (removed in v5)")
    model_path = str(trained["run"] / "hf_model")
    questions = sentiment_questions(12, seed=3)
    predict = squad_file(tmp_path / "predict.json", questions)
    ours = module_answers(model_path, predict)
    qa = pipeline("question-answering", model=model_path, tokenizer=model_path)
    theirs = {
        f"q{i}": qa(
            question=q["question"],
            context=q["context"],
            max_answer_len=30,
            max_seq_len=64,
            doc_stride=8,
            align_to_words=False,
        )["answer"]
        for i, q in enumerate(questions)
    }
    assert ours == theirs


def test_flat_jsonl_rows_in_squad_shape_are_read(tiny_bert, tmp_path):
    examples = sentiment_questions(6, seed=4)
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": str(i),
                    "question": e["question"],
                    "context": e["context"],
                    "answers": {
                        "text": [e["answer"]] if e["answer"] else [],
                        "answer_start": [e["context"].index(e["answer"])] if e["answer"] else [],
                    },
                }
            )
            + "\n"
            for i, e in enumerate(examples)
        )
    )
    data = QuestionAnsweringData(
        tokenizer_name=tiny_bert,
        train_file=str(path),
        validation_split_percentage=0,
        max_length=32,
        doc_stride=8,
    )
    data.setup("fit")
    train = data.datasets["train"]
    assert len(train) > len(examples)  # long contexts give several windows
    assert {"input_ids", "start_positions", "end_positions"} <= set(train.column_names)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            {"answer_start": 3},
            "answer_start of 3 at row 2 (id 'q1') that does not point at its answer text 'good'",
        ),
        ({"context": "   "}, "empty context at row 2 (id 'q1', column 'context')"),
        (
            {"question": "which " * 40 + "word?"},
            "question too long for data.max_length=32 at row 2 (id 'q1')",
        ),
    ],
)
def test_bad_rows_are_a_clear_error_naming_the_row(tiny_bert, tmp_path, broken, message):
    examples = [{"question": "which word is good?", "context": "the film was good", "answer": "good"}] * 3
    path = tmp_path / "train.json"
    squad_file(path, [{**e, "id": f"q{i}"} for i, e in enumerate(examples)])
    squad = json.loads(path.read_text())
    paragraph = squad["data"][0]["paragraphs"][1]
    paragraph["context"] = broken.get("context", paragraph["context"])
    paragraph["qas"][0]["question"] = broken.get("question", paragraph["qas"][0]["question"])
    paragraph["qas"][0]["answers"][0]["answer_start"] = broken.get("answer_start", 13)
    path.write_text(json.dumps(squad))
    with pytest.raises(HFTrainError, match="train.json") as error:
        QuestionAnsweringData(
            tokenizer_name=tiny_bert,
            train_file=str(path),
            max_length=32,
            doc_stride=8,
            validation_split_percentage=0,
        )
    assert message in str(error.value)


@pytest.mark.slow
@pytest.mark.skipif(minilm_path() is None or not (SHARED_DATA / "squad").is_dir(), reason="needs MiniLM and data")
def test_minilm_on_the_squad_slice_reaches_f1_30(tmp_path, monkeypatch):
    """The documented real-data run (docs/question_answering.md, F1 30.7): about an hour on 2 busy CPU cores."""
    import subprocess
    import sys

    split = tmp_path / "squad-split"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "squad_split_by_article.py"),
            str(SHARED_DATA / "squad" / "dev-v2.0-first5.json"),
            str(split),
        ],
        check=True,
    )
    config = yaml.safe_load((REPO / "configs" / "qa" / "squad_slice_v1.yaml").read_text())
    config["data"]["init_args"].update(
        train_file=str(split / "train.json"), validation_file=str(split / "eval_answerable.json")
    )
    (tmp_path / "squad_slice_v1.yaml").write_text(yaml.safe_dump(config))
    main(
        [
            "fit",
            "--config",
            str(tmp_path / "squad_slice_v1.yaml"),
            "--model.model_name_or_path",
            minilm_path(),
        ]
    )
    results = json.loads((tmp_path / "runs" / "squad_slice_v1" / "version_0" / "results.json").read_text())
    assert results["best"]["val/f1"] >= 30


@pytest.mark.slow
def test_under_ddp_every_question_is_scored_once_and_the_metrics_match_one_process(trained, tmp_path):
    """Two CPU processes; 13 questions, so Lightning's sampler repeats one to give both ranks 7."""
    from lightning.pytorch import Trainer

    model_path = str(trained["run"] / "hf_model")
    questions = squad_file(tmp_path / "dev.json", sentiment_questions(13, seed=5))

    def validate(**trainer_args) -> dict[str, float]:
        module = QuestionAnswering(model_name_or_path=model_path, version_2_with_negative=True)
        data = QuestionAnsweringData(
            tokenizer_name=model_path,
            validation_file=questions,
            max_length=32,
            doc_stride=8,
            eval_batch_size=2,
        )
        trainer = Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False, **trainer_args)
        return trainer.validate(module, datamodule=data)[0]

    single = validate(devices=1)
    ddp = validate(accelerator="cpu", devices=2, strategy="ddp_spawn")
    # the loss is a plain mean over batches, repeated question included (as in every Lightning task)
    squad_keys = [k for k in single if k != "val/loss"]
    assert len(squad_keys) == 6
    assert {k: ddp[k] for k in squad_keys} == pytest.approx({k: single[k] for k in squad_keys})


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "qa").glob("*.yaml")), ids=lambda p: p.name)
def test_qa_config_instantiates(config, tiny_bert, tmp_path):
    """Every shipped QA config builds its model and data (with the tiny model, and a local file in place of
    its Hub dataset or split files)."""
    from hftrain.cli import HFTrainCLI

    files = squad_file(tmp_path / "train.json", sentiment_questions(8, seed=6))
    cli = HFTrainCLI(
        args=[
            "--config",
            str(config),
            "--model.model_name_or_path",
            tiny_bert,
            "--data.dataset_name",
            "null",
            "--data.train_file",
            files,
            "--data.validation_file",
            files,
        ],
        run=False,
    )
    expected = yaml.safe_load(config.read_text())
    assert cli.model.version_2_with_negative == expected["model"]["init_args"].get("version_2_with_negative", False)
    assert (cli.datamodule.max_length, cli.datamodule.doc_stride) == (384, 128)


def test_splitting_batches_by_length_is_refused(tiny_bert, tmp_path):
    """The start and end softmax runs over every position, padding included, so a part padded less has another
    loss (test_vs_hf_trainer's split run checks that the CPU default leaves the batches whole)."""
    train = squad_file(tmp_path / "train.json", sentiment_questions(8, seed=1))
    with pytest.raises(HFTrainError, match="counts the padded positions"):
        QuestionAnsweringData(tokenizer_name=tiny_bert, train_file=train, split_by_length=True)
