"""The Python API for notebooks: `hftrain.fit` / `Run`, in-memory predictions, cells run again, `hftrain.trainer`."""

import json
import signal
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from conftest import SOURCE_WORDS, counting, sentiment_rows, write_csv
from helpers import TEXT_CLASSIFICATION, TEXT_CLASSIFICATION_DATA, classification_config, run_cli, write_jsonl
from lightning.pytorch.callbacks import RichProgressBar
from test_question_answering import sentiment_questions, squad_file
from test_seq2seq import cipher_rows
from test_token_classification import ner_rows

import hftrain
from hftrain.cli import HFTrainCLI
from hftrain.core.progress import TrainingProgress


def quiet(**trainer) -> dict:
    return {"enable_model_summary": False, "enable_progress_bar": False, **trainer}


@pytest.fixture
def config(tiny_bert, sentiment_files, tmp_path) -> Path:
    return classification_config(tmp_path / "sentiment.yaml", tiny_bert, sentiment_files)


def test_fit_returns_the_run_with_the_cli_run_folder_and_metrics(config):
    run = hftrain.fit(config, model={"learning_rate": 1e-2}, trainer={"max_epochs": 5})
    assert run.folder == Path("runs/sentiment/version_0")  # named after the config, as on the command line
    assert (run.folder / "config.yaml").is_file() and (run.export_dir / "config.json").is_file()
    assert [h["epoch"] for h in run.history] == [0, 1, 2, 3, 4]
    # best: the highest accuracy, a tie going to the lower validation loss
    assert run.best == max(run.history, key=lambda h: (h["val/accuracy"], -h["val/loss"]))
    assert run.final == run.history[-1]
    assert run.best["val/accuracy"] >= 0.9
    # the module holds the best checkpoint's weights, as hf_model/ does
    best = torch.load(run.results["best_checkpoint"], weights_only=False)["state_dict"]
    assert all(torch.equal(value, best[name]) for name, value in run.module.state_dict().items())
    assert run.validate()["val/accuracy"] == pytest.approx(run.best["val/accuracy"])
    assert run.test()["test/accuracy"] >= 0.8
    assert set(run.results) >= {"validate", "test"}
    assert "sentiment/version_0" in repr(run) and "val/accuracy" in repr(run)


def test_user_errors_raise_hftrain_error_in_python_and_exit_2_on_the_command_line(config, tmp_path):
    with pytest.raises(hftrain.HFTrainError, match="learnig_rate"):
        hftrain.Run(config, model={"learnig_rate": 1e-3})
    with pytest.raises(hftrain.HFTrainError, match="missing.csv' does not exist"):
        hftrain.Run(config, data={"train_file": "missing.csv"})
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [")
    with pytest.raises(hftrain.HFTrainError, match="broken.yaml is not valid YAML"):
        hftrain.Run(broken)
    assert run_cli("fit", "--config", config, "--data.train_file", "missing.csv") == 2


def test_a_second_fit_continues_the_run_or_says_why_it_cannot(config):
    run = hftrain.fit(config, trainer=quiet(max_epochs=1))
    steps = run.trainer.global_step
    with pytest.raises(hftrain.HFTrainError, match=r"already trained to max_epochs=1 .*run.fit\(epochs=1\)"):
        run.fit()
    run.validate()  # leaves inference-mode metric states behind, which the next fit's validation must not trip on
    run.fit(epochs=2)
    assert run.trainer.global_step == 3 * steps and run.folder == Path("runs/sentiment/version_0")
    assert [h["epoch"] for h in run.history] == [0, 1, 2]
    assert not Path("runs/sentiment/version_1").exists()


def test_every_fit_trains_in_train_mode(config):
    run = hftrain.Run(config, trainer=quiet(max_epochs=1))
    run.module.eval()  # as after looking at outputs in a notebook
    modes = []
    step = run.module.training_step

    def spy(batch, batch_idx):
        modes.append(run.module.model.training)
        return step(batch, batch_idx)

    run.module.training_step = spy
    run.fit()
    assert modes and all(modes)


def test_settings_changed_on_the_module_are_what_the_run_uses_and_records(config):
    run = hftrain.Run(config, trainer=quiet(max_epochs=1))
    run.module.learning_rate = 0.02
    run.fit()
    assert run.trainer.optimizers[0].param_groups[0]["initial_lr"] == 0.02
    saved = yaml.safe_load((run.folder / "config.yaml").read_text())
    assert saved["model"]["init_args"]["learning_rate"] == 0.02
    assert yaml.safe_load((run.folder / "hparams.yaml").read_text())["learning_rate"] == 0.02
    checkpoint = torch.load(run.folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["learning_rate"] == 0.02
    # continuing would restore the optimizer at the old rate: refused, not recorded wrongly
    run.module.learning_rate = 0.03
    with pytest.raises(hftrain.HFTrainError, match="learning_rate was changed since this run trained"):
        run.fit(epochs=1)
    run.module.learning_rate = 0.02
    run.module.model_name_or_path = "another-model"
    with pytest.raises(hftrain.HFTrainError, match="model_name_or_path was changed .* after the model was loaded"):
        run.fit(epochs=1)


def test_a_fit_interrupted_from_the_notebook_raises_keyboard_interrupt_and_keeps_ctrl_c_working(config):
    run = hftrain.Run(config, trainer=quiet(max_epochs=1))
    handler = signal.getsignal(signal.SIGINT)

    def interrupt(batch, batch_idx):
        raise KeyboardInterrupt

    run.module.training_step = interrupt
    with pytest.raises(KeyboardInterrupt, match="keeps its checkpoints"):
        run.fit()
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning had set it to SIG_IGN


def test_plain_lightning_path_gets_the_cli_defaults(tiny_bert, sentiment_files, config):
    lightning.seed_everything(42)
    data = hftrain.TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=sentiment_files["train"],
        validation_file=sentiment_files["validation"],
        batch_size=16,
    )
    model = hftrain.TextClassification(model_name_or_path=tiny_bert, label_names=data.label_names, learning_rate=1e-2)
    trainer = hftrain.trainer(name="plain", max_epochs=2, enable_model_summary=False)
    cli = HFTrainCLI(args=["--config", str(config), "--trainer.enable_progress_bar=true"], run=False)
    kinds = sorted(type(c).__name__ for c in trainer.callbacks)
    cli_only = {"SaveRunConfig", "PredictionWriter"}  # the config file and `hftrain predict`'s output
    assert kinds == sorted(type(c).__name__ for c in cli.trainer.callbacks if type(c).__name__ not in cli_only)
    assert trainer.gradient_clip_val == cli.trainer.gradient_clip_val == 1.0
    trainer.fit(model, datamodule=data)
    folder = Path("runs/plain/version_0")
    results = json.loads((folder / "results.json").read_text())
    assert results["monitor"] == "val/accuracy" and len(results["history"]) == 2
    assert (folder / "hf_model" / "model.safetensors").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
    # a changed setting is what a new trainer's fit uses and the hyperparameters record
    model.learning_rate = 0.02
    again = hftrain.trainer(name="plain", max_epochs=1, enable_model_summary=False, enable_progress_bar=False)
    again.fit(model, datamodule=data)
    assert model.hparams.learning_rate == 0.02 and again.optimizers[0].param_groups[0]["initial_lr"] == 0.02
    assert yaml.safe_load(Path("runs/plain/version_1/hparams.yaml").read_text())["learning_rate"] == 0.02
    with pytest.raises(hftrain.HFTrainError, match="already trained to max_epochs=1"):
        again.fit(model, datamodule=data)


def test_progress_display_is_the_cli_default_unless_turned_off_or_replaced(config):
    def progress_bars(*args):
        cli = HFTrainCLI(args=["--config", str(config), *args], run=False)
        return [type(c) for c in cli.trainer.callbacks if isinstance(c, TrainingProgress | RichProgressBar)]

    assert progress_bars("--trainer.enable_progress_bar=true") == [TrainingProgress]
    assert progress_bars() == []  # the test config turns it off
    replaced = '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.RichProgressBar"}]'
    assert progress_bars("--trainer.enable_progress_bar=true", replaced) == [RichProgressBar]


def test_no_profiler_costs_nothing_and_a_chosen_profiler_still_profiles(config):
    """Lightning wraps each of ~90 hook calls a step in `profiler.profile`; with none chosen, hftrain's is a
    shared null context, not a new generator per call. A profiler the user names gets every call."""
    for trainer in (HFTrainCLI(args=["--config", str(config)], run=False).trainer, hftrain.trainer()):
        context = trainer.profiler.profile("[Callback]TrainingLog.on_train_batch_start")
        assert context is trainer.profiler.profile("run_training_batch")
        with context:
            pass
    cli = HFTrainCLI(args=["--config", str(config), "--trainer.profiler=simple", "--trainer.max_epochs=1"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert type(cli.trainer.profiler).__name__ == "SimpleProfiler"
    steps = len(cli.trainer.profiler.recorded_durations["[Callback]TrainingLog.on_train_batch_start"])
    assert steps == cli.trainer.global_step > 0


# ------------------------------------------------------------------ in-memory prediction, every task


def predict_case(task: str, folder: Path, models: dict[str, str]) -> tuple[dict, list]:
    """A Run's sections for `task` with a predict file, and the same inputs as Python objects."""
    if task == "text pairs":
        pairs = zip(sentiment_rows(9, 1), sentiment_rows(9, 2), strict=True)
        rows = [{"a": r["text"], "b": s["text"]} for r, s in pairs]
        train = [{**row, "label": i % 2} for i, row in enumerate(rows)]
        files = {
            "train_file": str(write_csv(folder / "t.csv", train)),
            "predict_file": write_jsonl(folder / "p.jsonl", rows),
        }
        settings = {"text_column": "a", "text_pair_column": "b", "validation_split_percentage": 0}
        return {"class": "text_classification.TextClassification", "model": models["bert"], **files, **settings}, [
            (r["a"], r["b"]) for r in rows
        ]
    if task == "ner":
        rows = ner_rows(9, seed=1)
        predict = write_jsonl(folder / "p.jsonl", [{"tokens": r["tokens"]} for r in rows])
        files = {"train_file": write_jsonl(folder / "t.jsonl", rows), "predict_file": predict}
        inputs = [" ".join(r["tokens"]) for r in rows[:5]] + [r["tokens"] for r in rows[5:]]
        return {"class": "token_classification.TokenClassification", "model": models["bert"], **files}, inputs
    if task == "qa":
        questions = sentiment_questions(9, seed=1)
        rows = [{"id": str(i), "question": q["question"], "context": q["context"]} for i, q in enumerate(questions)]
        files = {
            "train_file": squad_file(folder / "t.json", questions),
            "predict_file": write_jsonl(folder / "p.jsonl", rows),
        }
        settings = {"max_length": 32, "doc_stride": 8, "validation_split_percentage": 0}
        return {"class": "question_answering.QuestionAnswering", "model": models["bert"], **files, **settings}, [
            (r["question"], r["context"]) for r in rows
        ]
    if task == "seq2seq":
        rows = cipher_rows(9, seed=1)
        files = {
            "train_file": write_jsonl(folder / "t.jsonl", rows),
            "predict_file": write_jsonl(folder / "p.jsonl", [{"source": r["source"]} for r in rows]),
        }
        model = {"max_new_tokens": 6}
        return {"class": "seq2seq.Seq2Seq", "model": models["t5"], "model_args": model, **files}, [
            r["source"] for r in rows
        ]
    prompts = [" ".join(doc.split()[:3]) for doc in counting(9, seed=1)]
    files = {
        "train_file": write_jsonl(folder / "t.jsonl", [{"text": d} for d in counting(9, 2)]),
        "predict_file": write_jsonl(folder / "p.jsonl", [{"text": p} for p in prompts]),
    }
    model = {"max_new_tokens": 4, "do_sample": False}
    return {
        "class": "language_modeling.LanguageModeling",
        "model": models["gpt2"],
        "model_args": model,
        **files,
    }, prompts


def rounded(rows: list[dict]) -> list[dict]:
    return [{k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


@pytest.mark.parametrize("task", ["text pairs", "ner", "qa", "seq2seq", "lm"])
def test_predict_on_inputs_in_memory_gives_the_records_hftrain_predict_writes(
    task, tiny_bert, tiny_t5, tiny_gpt2, tmp_path
):
    case, inputs = predict_case(task, tmp_path, {"bert": tiny_bert, "t5": tiny_t5, "gpt2": tiny_gpt2})
    task_class = f"hftrain.tasks.{case.pop('class')}"
    model = {
        "class_path": task_class,
        "init_args": {"model_name_or_path": case.pop("model"), **case.pop("model_args", {})},
    }
    data = {"class_path": f"{task_class}Data", "init_args": {**case, "batch_size": 4}}
    run = hftrain.Run(model=model, data=data, trainer=quiet())
    from_file = run.predict()  # the predict split, through Lightning's predict loop and the JSONL writer
    written = [json.loads(line) for line in (run.folder / "predictions.jsonl").read_text().splitlines()]
    in_memory = run.predict(inputs)
    assert len(in_memory) == len(inputs) == len(written)
    # scores to 5 places: a batch of other lengths pads differently, which moves the last float digits
    assert rounded(in_memory) == rounded(written) == rounded(from_file)
    assert sorted(p.name for p in run.folder.iterdir() if p.name.startswith("predictions")) == ["predictions.jsonl"]


def test_bad_inputs_to_predict_are_named(config):
    run = hftrain.Run(config, trainer=quiet())
    with pytest.raises(hftrain.HFTrainError, match="Nothing to predict"):
        run.predict([])
    with pytest.raises(hftrain.HFTrainError, match="the inputs given to predict.* at row 2"):
        run.predict(["fine", None])
    with pytest.raises(
        hftrain.HFTrainError,
        match=r"Input 2 to predict is a pair of texts \('Great value.', 'Really.'\), but this model was trained on "
        r"single texts \(column 'text'\)\. Give one string per input",
    ):
        run.predict(["fine", ("Great value.", "Really.")])
    assert run.predict("a good film")[0]["label"] in ("neg", "pos")  # one input is a list of one


def test_pairs_need_both_texts(tiny_bert, tmp_path):
    rows = [{"a": r["text"], "b": r["text"], "label": r["label"]} for r in sentiment_rows(8, 1)]
    data = {"train_file": str(write_csv(tmp_path / "t.csv", rows)), "text_column": "a", "text_pair_column": "b"}
    run = hftrain.Run(
        model={"class_path": TEXT_CLASSIFICATION, "init_args": {"model_name_or_path": tiny_bert}},
        data={"class_path": TEXT_CLASSIFICATION_DATA, "init_args": data},
        trainer=quiet(),
    )
    with pytest.raises(
        hftrain.HFTrainError,
        match=r"Input 1 to predict is a single text 'just one', but this model was trained on pairs of texts \(a, b\)",
    ):
        run.predict(["just one"])
    assert len(run.predict([("one", "two"), {"a": "three", "b": "four"}])) == 2


def test_source_words_predict_through_a_translation_column(tiny_t5, tmp_path):
    pairs = [{"translation": {"en": r["source"], "de": r["target"]}} for r in cipher_rows(8, 1)]
    run = hftrain.Run(
        model={
            "class_path": "hftrain.tasks.seq2seq.Seq2Seq",
            "init_args": {"model_name_or_path": tiny_t5, "max_new_tokens": 4},
        },
        data={
            "class_path": "hftrain.tasks.seq2seq.Seq2SeqData",
            "init_args": {
                "train_file": write_jsonl(tmp_path / "t.jsonl", pairs),
                "source_lang": "en",
                "target_lang": "de",
            },
        },
        trainer=quiet(),
    )
    rows = run.predict([" ".join(SOURCE_WORDS[:3])])
    assert rows[0]["source"] == " ".join(SOURCE_WORDS[:3]) and isinstance(rows[0]["prediction"], str)
