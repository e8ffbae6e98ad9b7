"""Each row of README's `TrainingArguments` table that hftrain implements (rather than plain Lightning)
does what the HF Trainer's field does."""

import pytest
import torch
from helpers import classification_config, run_cli
from lightning.pytorch import Callback, Trainer
from safetensors.torch import load_file

from hftrain.core.runs import read_results
from hftrain.tasks.text_classification import TextClassification, TextClassificationData


def fitted(tiny_bert, files, max_steps=8, max_epochs=None, accumulate=1, batch_size=8, **model_args):
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
    trainer = Trainer(
        max_steps=max_steps,
        max_epochs=max_epochs,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
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

    data = TextClassificationData(tokenizer_name=tiny_bert, train_file=sentiment_files["train"], batch_size=8)
    module = TextClassification(model_name_or_path=tiny_bert, label_names=data.label_names)
    Trainer(
        max_steps=2,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Gradients()],
    ).fit(module, datamodule=data)
    assert held == [True, False, True, False]  # accumulating after batches 1 and 3, freed after each step


def test_gradient_checkpointing(tiny_bert, sentiment_files):
    module, _, _ = fitted(tiny_bert, sentiment_files, max_steps=2, gradient_checkpointing=True)
    assert module.model.is_gradient_checkpointing


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
    data = TextClassificationData(tokenizer_name=tiny_bert, train_file=sentiment_files["train"], batch_size=8)
    module = TextClassification(model_name_or_path=tiny_bert, label_names=data.label_names)
    trainer = Trainer(
        max_steps=3,
        precision="bf16-mixed",
        gradient_clip_val=0.5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    assert trainer.optimizers[0].defaults["fused"]
    assert clipped == [0.5, 0.5, 0.5]


def test_load_best_model_at_end_exports_the_best_checkpoint(tiny_bert, sentiment_files, tmp_path):
    # "best" = lowest accuracy: ties keep the first, so the best checkpoint is the first epoch's, not the last
    config = classification_config(
        tmp_path / "best.yaml",
        tiny_bert,
        sentiment_files,
        trainer__max_epochs=3,
        checkpoint__monitor="val/accuracy",
        checkpoint__mode="min",
    )
    assert run_cli("fit", "--config", config) == 0
    run = tmp_path / "runs" / "best" / "version_0"
    results = read_results(run)
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
