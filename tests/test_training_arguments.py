"""docs/migration.md's table of `TrainingArguments` fields and example-script flags: every key it names exists, and
each row that hftrain implements (rather than plain Lightning) does what the HF Trainer's field does."""

import csv

import pytest
import torch
from conftest import sentiment_rows
from helpers import classification_config, hf_flag_table, quiet_trainer, readme_table, run_cli
from lightning.pytorch import Callback, Trainer
from safetensors.torch import load_file

from hftrain.cli import HFTrainCLI
from hftrain.core.errors import HFTrainError
from hftrain.core.runs import read_results
from hftrain.tasks.text_classification import TextClassification, TextClassificationData


def fitted(tiny_bert, files, max_steps=8, max_epochs=None, accumulate=1, batch_size=8, trainer_args=None, **model_args):
    """Train the tiny model on `files` with a plain Lightning Trainer (no logging, checkpoints or validation)."""
    data = TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=files["train"],
        validation_file=files["validation"],
        batch_size=batch_size,
        eval_batch_size=5,
    )
    module = TextClassification(
        model_name_or_path=tiny_bert, label_names=data.label_names, problem_type=data.problem_type, **model_args
    )
    trainer = quiet_trainer(
        max_steps=max_steps, max_epochs=max_epochs, accumulate_grad_batches=accumulate, **(trainer_args or {})
    )
    trainer.fit(module, datamodule=data)
    return module, data, trainer


def test_learning_rate_weight_decay_and_batch_sizes(tiny_bert, sentiment_files):
    module, data, trainer = fitted(tiny_bert, sentiment_files, learning_rate=3e-4, weight_decay=0.05)
    decay, no_decay = trainer.optimizers[0].param_groups
    assert decay["lr"] == no_decay["lr"] == 3e-4 * trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0](8)
    assert decay["initial_lr"] == 3e-4
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"bert.embeddings.LayerNorm.weight", "classifier.bias"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.model.parameters()))
    assert data.train_dataloader().batch_size == 8 and data.val_dataloader().batch_size == 5


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected"),
    [
        ("linear", 0.25, {0: 0.0, 1: 0.5, 2: 1.0, 5: 0.5, 8: 0.0}),  # ratio: 25% of 8 steps
        ("linear", 4, {0: 0.0, 2: 0.5, 4: 1.0, 6: 0.5}),  # steps
        ("cosine", 0.0, {0: 1.0, 4: 0.5, 8: 0.0}),
        ("constant", 2, {0: 0.0, 1: 0.5, 2: 1.0, 7: 1.0}),
    ],
)
def test_schedules_and_warmup(tiny_bert, sentiment_files, schedule, warmup, expected):
    _, _, trainer = fitted(tiny_bert, sentiment_files, max_steps=8, lr_scheduler_type=schedule, warmup_steps=warmup)
    factor = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert {step: pytest.approx(factor(step), abs=1e-6) for step in expected} == expected


def test_gradient_accumulation_sizes_the_schedule_in_optimizer_steps(tiny_bert, sentiment_files):
    # 96 rows / batch 8 = 12 batches per epoch; accumulating 2 makes 6 optimizer steps
    _, _, trainer = fitted(tiny_bert, sentiment_files, max_steps=-1, max_epochs=1, accumulate=2, warmup_steps=0.5)
    factor = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert trainer.estimated_stepping_batches == 6
    assert factor(3) == pytest.approx(1.0)  # warmup is half of the 6 optimizer steps


def test_gradients_are_freed_after_each_optimizer_step_and_kept_while_accumulating(tiny_bert, sentiment_files):
    # held until the next step's forward, they would add a copy of the weights to peak memory
    held = []

    class Gradients(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            held.append(any(p.grad is not None for p in pl_module.parameters()))

    fitted(tiny_bert, sentiment_files, max_steps=2, accumulate=2, trainer_args={"callbacks": [Gradients()]})
    assert held == [True, False, True, False]  # accumulating after batches 1 and 3, freed after each step


def test_gradients_left_on_the_model_never_reach_a_step_and_each_step_zeroes_once(
    tiny_bert, sentiment_files, monkeypatch
):
    # hftrain zeroes as training starts and after each step, not as each step starts (Lightning's zeroing
    # then found nothing): gradients left from before the fit must still not reach its first step
    def train(stale: bool):
        torch.manual_seed(0)
        data = TextClassificationData(tokenizer_name=tiny_bert, train_file=sentiment_files["train"], batch_size=8)
        module = TextClassification(model_name_or_path=tiny_bert, label_names=data.label_names)
        for parameter in module.parameters():
            parameter.grad = torch.full_like(parameter, 100.0) if stale else None  # left by a notebook cell
        quiet_trainer(max_steps=3, accumulate_grad_batches=2).fit(module, datamodule=data)
        return module

    calls = []
    zero_grad = torch.optim.AdamW.zero_grad
    monkeypatch.setattr(
        torch.optim.AdamW, "zero_grad", lambda self, *a, **k: calls.append(1) or zero_grad(self, *a, **k)
    )
    clean, stale = train(stale=False), train(stale=True)
    for (name, weight), other in zip(clean.named_parameters(), stale.parameters(), strict=True):
        torch.testing.assert_close(other, weight, msg=name)
    assert len(calls) == 2 * 3  # per fit, one after each of the 3 steps


def test_gradient_checkpointing(tiny_bert, sentiment_files):
    module, _, _ = fitted(tiny_bert, sentiment_files, max_steps=2, gradient_checkpointing=True)
    assert module.model.is_gradient_checkpointing


@pytest.mark.slow  # compiling takes most of its time
def test_torch_compile_keeps_checkpoint_and_export_keys(tiny_bert, sentiment_files, tmp_path):
    config = classification_config(
        tmp_path / "compiled.yaml", tiny_bert, sentiment_files, trainer__max_epochs=1, model__torch_compile=True
    )
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert run_cli("fit", "--config", config) == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the steps ran compiled
    run = tmp_path / "runs" / "compiled" / "version_0"
    assert torch.isfinite(torch.tensor(read_results(run)["final"]["val/loss"]))
    eager = TextClassification(model_name_or_path=tiny_bert, label_names=["neg", "pos"])
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert saved.keys() == eager.state_dict().keys()
    assert load_file(run / "hf_model" / "model.safetensors").keys() == eager.model.state_dict().keys()


def test_bf16_mixed_precision_trains_on_cpu(tiny_bert, sentiment_files, tmp_path):
    config = classification_config(
        tmp_path / "bf16.yaml", tiny_bert, sentiment_files, trainer__max_epochs=1, trainer__precision="bf16-mixed"
    )
    assert run_cli("fit", "--config", config) == 0
    final = read_results(tmp_path / "runs" / "bf16" / "version_0")["final"]
    assert torch.isfinite(torch.tensor(final["val/loss"]))


def test_bf16_mixed_uses_the_fused_adamw_and_still_clips(tiny_bert, sentiment_files, monkeypatch):
    # Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients; the loop AdamW that
    # would avoid that takes 6x longer per step on CPU
    clipped = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda params, norm: clipped.append(norm) or clip(params, norm)
    )
    _, _, trainer = fitted(
        tiny_bert, sentiment_files, max_steps=3, trainer_args={"precision": "bf16-mixed", "gradient_clip_val": 0.5}
    )
    assert trainer.optimizers[0].defaults["fused"]
    assert clipped == [0.5, 0.5, 0.5]


def test_load_best_model_at_end_exports_the_best_checkpoint(tiny_bert, sentiment_files, tmp_path):
    # "best" = highest validation loss, which training lowers, so not the last epoch's: the export must hold
    # the weights of the validation the history ranks best, not the final ones
    config = classification_config(
        tmp_path / "best.yaml",
        tiny_bert,
        sentiment_files,
        trainer__max_epochs=3,
        checkpoint__monitor="val/loss",
        checkpoint__mode="max",
    )
    assert run_cli("fit", "--config", config) == 0
    run = tmp_path / "runs" / "best" / "version_0"
    results = read_results(run)
    worst = max(results["history"], key=lambda row: row["val/loss"])  # the first of equals, as the ranking
    assert worst is not results["history"][-1], results["history"]
    assert f"step={worst['step']}." in results["best_checkpoint"]
    assert results["best_checkpoint"] != results["last_checkpoint"]
    exported = load_file(run / "hf_model" / "model.safetensors")
    for which, same in (("best_checkpoint", True), ("last_checkpoint", False)):
        state = torch.load(results[which], map_location="cpu", weights_only=False)["state_dict"]
        weight = state["model.classifier.weight"]
        assert torch.equal(exported["classifier.weight"], weight) is same


def test_output_dir_and_seed_make_reproducible_runs(tiny_bert, sentiment_files, tmp_path):
    config = classification_config(tmp_path / "seeded.yaml", tiny_bert, sentiment_files, trainer__max_epochs=1)
    out = tmp_path / "elsewhere"
    for _ in range(2):
        assert (
            run_cli("fit", "--config", config, "--trainer.logger.init_args.save_dir", out, "--seed_everything", 7) == 0
        )
    first, second = (read_results(out / "seeded" / f"version_{v}")["history"] for v in (0, 1))
    assert first == second


# ----------------------------------------------------------------- the migration table as a whole


def test_every_config_key_in_the_readme_table_exists():
    import dataclasses
    import inspect

    from lightning.pytorch.callbacks import ModelCheckpoint

    from hftrain.tasks import (
        language_modeling,
        masked_language_modeling,
        question_answering,
        seq2seq,
        token_classification,
    )

    classes = {
        "model": [TextClassification, token_classification.TokenClassification, question_answering.QuestionAnswering],
        "data": [TextClassificationData, token_classification.TokenClassificationData],
    }
    classes["model"] += [seq2seq.Seq2Seq, language_modeling.LanguageModeling]
    classes["data"] += [question_answering.QuestionAnsweringData, seq2seq.Seq2SeqData]
    classes["data"] += [language_modeling.LanguageModelingData]
    classes["model"] += [masked_language_modeling.MaskedLanguageModeling]
    classes["data"] += [masked_language_modeling.MaskedLanguageModelingData]
    known = {part: {f.name for c in found for f in dataclasses.fields(c)} for part, found in classes.items()}
    known["trainer"] = set(inspect.signature(Trainer).parameters)
    known["checkpoint"] = set(inspect.signature(ModelCheckpoint).parameters)
    rows = readme_table()
    assert len(rows) > 50
    for names, keys in rows:
        for key, _ in keys:
            part, *rest = key.split(".")
            name = rest[-1] if part in ("model", "data") else (rest[0] if rest else part)
            assert part == "seed_everything" or name in known[part], f"migration table row {names}: no config key {key}"
    flags = hf_flag_table()
    for name in ("max_steps", "eval_steps", "save_steps", "save_total_limit", "metric_for_best_model"):
        assert flags[name] is not None, name
    for name in ("label_smoothing_factor", "report_to", "max_train_samples", "max_eval_samples", "overwrite_cache"):
        assert flags[name] is not None, name
    for name in ("preprocessing_num_workers", "predict_with_generate", "generation_num_beams", "greater_is_better"):
        assert flags[name] is not None, name
    assert {"pad_to_max_length", "push_to_hub", "resume_from_checkpoint", "load_best_model_at_end"} <= set(flags)


# ------------------------------------------------------------------------------------- rows, one by one


def test_max_steps_wins_over_max_epochs_and_says_so_in_help(tiny_bert, sentiment_files, tmp_path, capsys):
    # 96 rows / batch 16 = 6 steps per epoch: max_epochs 1 would stop at 6, the HF Trainer runs 15
    config = classification_config(tmp_path / "steps.yaml", tiny_bert, sentiment_files, trainer__max_epochs=1)
    assert run_cli("fit", "--config", config, "--trainer.max_steps", 15) == 0
    results = read_results(tmp_path / "runs" / "steps" / "version_0")
    assert results["global_step"] == 15
    assert run_cli("fit", "--help") == 0
    assert "max_steps wins over max_epochs" in " ".join(capsys.readouterr().out.split())


def test_a_train_file_replaces_a_configs_hub_dataset(tiny_bert, sentiment_files, caplog):
    # offline (the tests set HF_HUB_OFFLINE): going to the Hub would fail
    data = TextClassificationData(
        tokenizer_name=tiny_bert, dataset_name="glue", dataset_config_name="mrpc", train_file=sentiment_files["train"]
    )
    assert data.dataset_name is None and len(data.raw["train"]) + len(data.raw["validation"]) == 96
    assert "replaces the Hub dataset 'glue'" in caplog.text


def test_max_samples_and_overwrite_cache(tiny_bert, sentiment_files):
    files = {f"{split}_file": path for split, path in sentiment_files.items()}
    data = TextClassificationData(
        tokenizer_name=tiny_bert, max_train_samples=10, max_eval_samples=5, max_predict_samples=3, **files
    )
    assert {split: len(rows) for split, rows in data.raw.items()} == {
        "train": 10,
        "validation": 5,
        "test": 3,
        "predict": 3,
    }
    assert data.raw["train"]["text"] == [row["text"] for row in sentiment_rows(10, seed=1)]  # the first rows
    data.prepare_data()
    marker = data.cache_path() / "marker"
    marker.write_text("stale")
    data.prepare_data()
    assert marker.exists()  # reused
    fresh = TextClassificationData(
        tokenizer_name=tiny_bert,
        max_train_samples=10,
        max_eval_samples=5,
        max_predict_samples=3,
        overwrite_cache=True,
        **files,
    )
    assert fresh.cache_path() == data.cache_path()  # overwrite_cache is not part of the cache key
    fresh.prepare_data()
    assert not marker.exists()


def test_preprocessing_num_workers_tokenize_the_same(tiny_bert, sentiment_files, tmp_path):
    splits, keys = {}, {}
    for workers in (None, 2):
        config = classification_config(
            tmp_path / f"workers-{workers}.yaml",
            tiny_bert,
            sentiment_files,
            data__preprocessing_num_workers=workers,
            data__cache_dir=f"cache-{workers}",
        )
        cli = HFTrainCLI(args=["--config", str(config)], run=False)
        data = cli.datamodule
        data.trainer = cli.trainer  # as in a fit: the trainer (its callbacks hold the parser) does not pickle
        data.setup("fit")
        splits[workers], keys[workers] = data.datasets["train"]["input_ids"][:], data.cache_path().name
    assert splits[None] == splits[2]
    assert keys[None] == keys[2]  # not part of the cache key: any number of workers reuses one copy


def test_batches_are_padded_to_their_longest_row_not_max_length(tiny_bert, sentiment_files):
    data = TextClassificationData(
        tokenizer_name=tiny_bert, train_file=sentiment_files["train"], validation_file=sentiment_files["validation"]
    )
    data.setup("fit")
    loader = data.val_dataloader()
    batch = next(iter(loader))
    rows = list(loader.sampler)[: len(batch["input_ids"])]  # evaluation batches are formed longest first
    longest = max(len(data.datasets["validation"][i]["input_ids"]) for i in rows)
    assert batch["input_ids"].shape[1] == longest < data.max_length


def test_label_smoothing_and_class_weights_set_the_loss(tiny_bert):
    import torch.nn.functional as F

    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(5, 60, (6, 7)), "labels": torch.tensor([0, 1, 1, 0, 1, 1])}
    plain = TextClassification(model_name_or_path=tiny_bert, label_names=["neg", "pos"])
    plain.eval()  # no dropout: the same logits every call
    logits = plain(**batch).logits.detach()
    assert plain(**batch).loss.item() == pytest.approx(F.cross_entropy(logits, batch["labels"]).item(), abs=1e-5)
    for options, loss in (
        ({"label_smoothing_factor": 0.2}, lambda x, y: F.cross_entropy(x, y, label_smoothing=0.2)),
        ({"class_weights": {"neg": 3.0}}, lambda x, y: F.cross_entropy(x, y, weight=torch.tensor([3.0, 1.0]))),
    ):
        module = TextClassification(model_name_or_path=tiny_bert, label_names=["neg", "pos"], **options).eval()
        outputs = module(**batch)
        own = F.cross_entropy(outputs.logits, batch["labels"]).item()
        assert outputs.loss.item() == pytest.approx(loss(outputs.logits, batch["labels"]).item(), abs=1e-5)
        assert outputs.loss.item() != pytest.approx(own, abs=1e-4)
    with pytest.raises(HFTrainError, match="'nuetral'.*does not have"):
        TextClassification(model_name_or_path=tiny_bert, label_names=["neg", "pos"], class_weights={"nuetral": 2})
    with pytest.raises(HFTrainError, match="regression"):
        TextClassification(model_name_or_path=tiny_bert, problem_type="regression", label_smoothing_factor=0.1)


def test_label_smoothing_and_class_weights_for_token_classification(tiny_bert):
    import torch.nn.functional as F

    from hftrain.tasks.token_classification import TokenClassification

    tags = ["B-PER", "I-PER", "O"]
    torch.manual_seed(0)
    labels = torch.tensor([[-100, 0, 1, 2, -100], [-100, 2, 2, -100, -100]])
    batch = {"input_ids": torch.randint(5, 60, (2, 5)), "labels": labels}
    module = TokenClassification(
        model_name_or_path=tiny_bert, label_names=tags, label_smoothing_factor=0.1, class_weights={"O": 0.5}
    )
    module.eval()
    logits = module(**batch).logits.detach()
    expected = F.cross_entropy(
        logits.reshape(-1, 3), labels.reshape(-1), weight=torch.tensor([1.0, 1.0, 0.5]), label_smoothing=0.1
    )
    assert module(**batch).loss.item() == pytest.approx(expected.item(), abs=1e-5)


METRICS_MODULE = """
def agreement(predictions, labels):
    return {"share": float((predictions == labels).float().mean()), "count": len(labels)}
"""


def test_custom_metrics_several_validation_sets_monitor_and_model_card(
    tiny_bert, sentiment_files, tmp_path, monkeypatch
):
    """`compute_metrics`, several eval sets, `metric_for_best_model`/`greater_is_better`, and the model card."""
    from huggingface_hub import ModelCard

    (tmp_path / "my_metrics.py").write_text(METRICS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    files = {"train": sentiment_files["train"]}
    config = classification_config(
        tmp_path / "custom.yaml",
        tiny_bert,
        files,
        trainer__max_epochs=2,
        data__validation_file={"dev": sentiment_files["validation"], "other": sentiment_files["test"]},
        model__custom_metrics={
            "agreement": "my_metrics.agreement",
            "acc": {"class_path": "torchmetrics.classification.BinaryAccuracy"},
        },
        checkpoint__monitor="val/other/agreement_share",
        checkpoint__mode="max",
    )
    assert run_cli("fit", "--config", config) == 0
    run = tmp_path / "runs" / "custom" / "version_0"
    results = read_results(run)
    final = results["final"]
    for name in ("dev", "other"):
        assert final[f"val/{name}/agreement_share"] == pytest.approx(final[f"val/{name}/accuracy"])
        assert final[f"val/{name}/acc"] == pytest.approx(final[f"val/{name}/accuracy"])
        assert final[f"val/{name}/agreement_count"] == 32
    assert results["monitor"] == "val/other/agreement_share"
    assert results["best"] == max(results["history"], key=lambda h: h["val/other/agreement_share"])
    card = ModelCard.load(run / "hf_model" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.library_name == "transformers"
    assert "val/other/agreement_share" in card.text and "model.learning_rate | 0.01" in card.text
    assert "train.csv (96 rows)" in card.text and "transformers " in card.text


def test_a_custom_metric_may_not_shadow_the_tasks_own(tiny_bert, sentiment_files, tmp_path):
    config = classification_config(
        tmp_path / "clash.yaml",
        tiny_bert,
        sentiment_files,
        trainer__max_epochs=1,
        model__custom_metrics={"accuracy": "torchmetrics.classification.BinaryAccuracy"},
    )
    assert run_cli("fit", "--config", config) == 2


def test_the_default_monitor_is_the_first_validation_sets(tiny_bert):
    from hftrain.core.monitor import monitored_metric

    module = TextClassification(model_name_or_path=tiny_bert, label_names=["a", "b"], validation_sets=["x", "y"])
    assert monitored_metric(quiet_trainer(), module) == ("val/x/accuracy", "max")
    assert module.val_stages == ["val/x", "val/y"] and set(module.metrics) == {"val/x", "val/y", "test"}


def test_report_to_another_logger(tiny_bert, sentiment_files, tmp_path):
    config = classification_config(tmp_path / "csv.yaml", tiny_bert, sentiment_files, trainer__max_epochs=1)
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", tmp_path / "csv"]
    assert run_cli("fit", "--config", config, *logger) == 0
    (metrics,) = (tmp_path / "csv").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.read_text().splitlines()))
    assert "val/accuracy" in rows[0]
    # the training log writes to whichever loggers the trainer has, not only TensorBoard
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_sec", "train/tokens_per_sec"):
        assert len([row for row in rows if row[tag]]) == 6, tag  # every step of a 6-step run


def test_generation_rows(tiny_t5):
    from hftrain.tasks.seq2seq import Seq2Seq

    module = Seq2Seq(model_name_or_path=tiny_t5, num_beams=3, max_new_tokens=7)
    assert module.predict_with_generate  # on by default, as the examples' --predict_with_generate
    config = module.model.generation_config
    assert (config.num_beams, config.max_new_tokens) == (3, 7)
