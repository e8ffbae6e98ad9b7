"""The base LightningModule: load a pretrained `AutoModelFor…`, optimize it, evaluate it, export it.

A task module is a dataclass that adds its own fields to the ones here, builds `self.model` with
`load_pretrained` in `__post_init__`, and writes `evaluate` (one validation or test batch) and `predict_step`,
abstract here so that a task missing one cannot be built, and, where its metrics are not torchmetrics objects
logged per batch, `log_metrics` (the end of a validation or test). Training step, AdamW with weight-decay groups, the
warmup schedule and the `save_pretrained` export are shared. Being dataclasses, the constructor signature
*is* the config schema that LightningCLI reads.

What the callbacks need of a task (the contract, read through `monitor.monitored_metric` and `TaskModule.export`):
`monitor` and `monitor_mode`, the validation metric that picks the best checkpoint and whether higher is
better, set in `__post_init__`; and `export`, which writes the `save_pretrained` folder. Metrics are kept per
stage (`eval_stages`: `val`, or `val/<name>` for each of several validation sets, and `test`), and each
task feeds the user's `custom_metrics` with `update_custom_metrics`.
"""

import inspect
import json
import math
import os
import sys
from abc import ABCMeta, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, Metric
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from hftrain.core import internals
from hftrain.core.console import library_progress_bars_off
from hftrain.core.data import TaskDataModule
from hftrain.core.errors import HFTrainError
from hftrain.core.generation import log_text_table
from hftrain.core.length_split import batch_parts, batch_size
from hftrain.core.losses import TokenWeighting
from hftrain.core.pretrained import load_model, load_tokenizer
from hftrain.core.writes import replacing
from hftrain.metrics.custom import CustomMetricSpec, build_custom_metric

# "val" (or "val/<name>" for each of several validation sets) and "test"; metric keys start with it
Stage = str


def is_validation(stage: Stage) -> bool:
    return stage != "test"


@dataclass(eq=False, repr=False, kw_only=True)
class TaskModule(LightningModule, metaclass=ABCMeta):
    """Base for every task's module.

    Args:
        model_name_or_path: Pretrained model to fine-tune: a Hugging Face Hub id (`bert-base-uncased`) or a
            local folder written by `save_pretrained` (such as a run's `hf_model/`).
        learning_rate: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay, applied to all weights except biases and normalization layers.
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_epsilon: AdamW epsilon.
        lr_scheduler_type: Learning-rate schedule after warmup: `linear` decay to 0, `cosine`, or `constant`.
        warmup_steps: Linear warmup from 0: a number of optimizer steps (>= 1), or a fraction of all steps
            (in [0, 1), rounded up), as in the HF Trainer.
        gradient_checkpointing: Recompute activations in the backward pass to save memory (slower).
        torch_compile: Compile the model's forward and backward with `torch.compile` (generation stays eager).
            The first batches of each new sequence length pay for compilation; see docs/performance.md for
            when that pays off.
        trust_remote_code: Allow model code from the Hub repository to run. Only for repositories you trust.
        revision: Hub branch, tag or commit of the model.
        ignore_mismatched_sizes: Re-initialize weights whose shape differs from the checkpoint's (e.g. a
            classifier head fine-tuned for a different label set).
        custom_metrics: Metrics of your own, logged beside the task's as `val/<name>` (and `test/<name>`), so
            also usable as `checkpoint.monitor`: name -> the import path of a torchmetrics `Metric` class
            (or `{class_path: …, init_args: {…}}`), or of a function `f(predictions, labels)` returning a
            number or a dict of numbers. What they receive, per task: text classification the predicted and
            gold class ids (multi-label: probabilities and 0/1 targets; regression: scores); token
            classification the predicted and gold tag ids of each word, flat; question answering the
            answer texts and the lists of gold answers; seq2seq the generated texts and `[[reference], …]`;
            language modelling the predicted and gold next-token ids.
        validation_sets: Names of the validation sets when `data.validation_file` maps names to files; set by
            the CLI from the data (in Python pass `data.validation_sets`). Each is logged as
            `val/<name>/...`, and the first one picks the best checkpoint unless `checkpoint.monitor` names
            another.
        logged_examples: Validation rows written to TensorBoard as text at each validation (tag
            `val/examples`: input, gold answer, prediction), to see what the model gets right and wrong.
    """

    model_name_or_path: str
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: float = 0.0
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    ignore_mismatched_sizes: bool = False
    custom_metrics: dict[str, CustomMetricSpec] | None = None
    validation_sets: list[str] | None = None
    logged_examples: int = 3

    # the model's own tokenizer, for tasks that decode what they generate (not a config field: no annotation)
    tokenizer = None
    # the Hub's name for the task (model card, `transformers.pipeline`)
    pipeline_tag: ClassVar[str] = ""
    # settings read only while the model is loaded: changing one on a built module would change nothing
    load_settings: ClassVar[frozenset[str]] = frozenset(
        {
            "model_name_or_path",
            "revision",
            "trust_remote_code",
            "ignore_mismatched_sizes",
            "gradient_checkpointing",
            "label_names",
            "problem_type",
        }
    )
    # settings the optimizer and schedule are built from, which a resumed run restores from its checkpoint
    optimizer_settings: ClassVar[frozenset[str]] = frozenset(
        {
            "learning_rate",
            "weight_decay",
            "adam_beta1",
            "adam_beta2",
            "adam_epsilon",
            "lr_scheduler_type",
            "warmup_steps",
        }
    )

    def __post_init__(self) -> None:
        super().__init__()
        if self.learning_rate <= 0:
            raise HFTrainError(f"model.learning_rate must be positive, got {self.learning_rate}.")
        if self.warmup_steps < 0:
            raise HFTrainError(f"model.warmup_steps must be 0 or more, got {self.warmup_steps}.")
        self.save_hyperparameters()
        self.monitor = "val/loss"
        self.monitor_mode: Literal["min", "max"] = "min"
        self._logged_keys: set[str] = set()
        self.custom = torch.nn.ModuleDict(
            {
                stage: torch.nn.ModuleDict(
                    {name: build_custom_metric(name, spec) for name, spec in (self.custom_metrics or {}).items()}
                )
                for stage in self.eval_stages
            }
        )
        # each stage's loss, a mean over what the loss averages (`log_loss`), in float64 sums over a whole set;
        # nan_strategy "disable" would spare a host sync per batch, but torchmetrics 1.9 then drops the weights
        # (Lightning-AI/torchmetrics#3434)
        self.losses = torch.nn.ModuleDict({stage: MeanMetric().set_dtype(torch.float64) for stage in self.eval_stages})
        self.examples: list[tuple[str, str, str]] = []
        self.token_weighting = TokenWeighting()

    @property
    def val_stages(self) -> list[str]:
        """The stage name of each validation set, in dataloader order: `val`, or `val/<name>` per named set."""
        return [f"val/{name}" for name in self.validation_sets] if self.validation_sets else ["val"]

    @property
    def eval_stages(self) -> list[str]:
        """Every stage that has metrics: the validation sets and `test`."""
        return [*self.val_stages, "test"]

    def load_pretrained(
        self, auto_class: type, loading: dict[str, Any] | None = None, **config_overrides: Any
    ) -> PreTrainedModel:
        """Load `model_name_or_path` with `auto_class`, overriding config fields (labels, problem type), with
        `loading` options for `from_pretrained` (a quantization); the weights that did not come from it are kept
        in `load_report` for the run's first lines."""
        model, self.load_report = load_model(
            auto_class,
            self.model_name_or_path,
            self.revision,
            self.trust_remote_code,
            self.ignore_mismatched_sizes,
            loading=loading,
            **config_overrides,
        )
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    def load_tokenizer(self, pad_with_eos: bool = False) -> PreTrainedTokenizerBase:
        """The model's tokenizer, loaded exactly as the data module's (the CLI links the same three settings)."""
        return load_tokenizer(self.model_name_or_path, self.revision, self.trust_remote_code, pad_with_eos)

    @staticmethod
    def label_config(label_names: list[str] | None) -> dict[str, Any]:
        """The model config fields that name the classes, so the exported model's `id2label` reads them."""
        if not label_names:
            return {}
        return {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
        }

    @cached_property
    def model_inputs(self) -> frozenset[str]:
        """The batch keys the model's `forward` takes (as the HF Trainer reads them from its signature), so
        batches may carry bookkeeping (word ids, example ids) that never reaches the model."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return frozenset(inspect.signature(model.forward).parameters)

    def forward(self, **batch: Any):
        return self.model(**{k: v for k, v in batch.items() if k in self.model_inputs})

    def changed_hyperparameters(self) -> dict[str, Any]:
        """The settings changed on this object since `hparams` last recorded them (a notebook may set
        `model.learning_rate = 5e-5` between two fits), with their new values.

        A changed setting that only matters while the model loads (`load_settings`) is an error: the run
        would record a value it does not use.
        """
        changed = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name in self.hparams and self.hparams[f.name] != getattr(self, f.name)
        }
        for name in sorted(changed.keys() & self.load_settings):
            raise HFTrainError(
                f"model.{name} was changed from {self.hparams[name]!r} to {changed[name]!r} after the model was "
                f"loaded, so training would not use it. Build a new module with it (in a notebook: "
                f"hftrain.fit(config, model={{'{name}': ...}})), or set it back."
            )
        return changed

    def setup(self, stage: str) -> None:
        # what the checkpoints and the logger (which logs `hparams_initial`) record is what this run uses
        changed = self.changed_hyperparameters()
        if changed:
            self.save_hyperparameters({**self.hparams, **changed})
        # compiling `forward` (every step's model call) rather than wrapping the module keeps the state-dict
        # keys, checkpoints and the exported model as they are, and leaves `generate` eager
        if self.torch_compile and "forward" not in vars(self):
            self.forward = torch.compile(self.forward)

    def on_fit_start(self) -> None:
        """Make a fit on a module used before behave as on a new one (a notebook cell run again):

        - train in train mode (dropout on) whatever mode the module was left in, e.g. by `model.eval()`:
          Lightning keeps the mode it finds;
        - start from fresh metric states: a `validate` or `test` leaves them as tensors made under
          `torch.inference_mode`, which the fit's validation (run under `no_grad`) may not update in place;
        - refuse a fit that would do nothing because the trainer already reached its limits.
        """
        self.train()
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()
        trainer = self.trainer
        reached = [
            (limit, value)
            for limit, value, done in (
                ("max_epochs", trainer.max_epochs, trainer.current_epoch),
                ("max_steps", trainer.max_steps, trainer.global_step),
            )
            if value is not None and value >= 0 and done >= value
        ]
        replaced = self.replaced_optimizer()
        if replaced:
            settings = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in replaced.items() if k.startswith("optimizer."))
            schedule = f"schedule {replaced['lr_scheduler']}" if replaced["lr_scheduler"] else "no schedule"
            rank_zero_info(
                f"Optimizer: {replaced['optimizer']} ({settings}), {schedule}: --optimizer replaces hftrain's AdamW "
                f"and {self.lr_scheduler_type} warmup schedule, so model.{', '.join(sorted(self.optimizer_settings))} "
                "are not used."
            )
        if reached and trainer.ckpt_path is None:
            limit, value = reached[0]
            raise HFTrainError(
                f"This Trainer has already trained to {limit}={value} (epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}), so another fit would do nothing. In a Run of hftrain.fit, "
                "run.fit(epochs=1) trains on from the last checkpoint; with a Trainer of your own, "
                "build a new one to fine-tune further in a new run folder."
            )

    def on_train_start(self) -> None:
        internals.restore_loader_position(self.trainer)
        self.token_weighting = TokenWeighting()
        self.zero_grad(set_to_none=True)  # gradients a notebook cell left on the model (see optimizer_zero_grad)

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Seed each batch's randomness (dropout) from the run's seed and the batch's position in training,
        so a run resumed from a checkpoint draws exactly the masks an uninterrupted run draws.

        Only the generators that draw dropout are seeded: `torch.manual_seed` also visits every other
        backend, and on a tiny model that costs more than the step (0.6 ms of 9.5 ms measured on CPU).
        """
        seed = internals.global_seed() * 1_000_003 + internals.batches_trained(self.trainer)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        torch.default_generator.manual_seed(seed)

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Validate the final weights of a run that `max_steps` ends mid-epoch: Lightning would stop without
        validating them, and `results.json`'s final and `hf_model/` would miss the last steps. Lightning
        validates at a batch where the run asks to stop."""
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Step, then free the gradients at once, as the HF Trainer does. Lightning frees them in the next
        step's closure, after its forward pass, which then holds the last step's gradients on top of its
        activations: one more copy of the weights in peak memory (87 MiB for MiniLM)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        """Nothing to zero: `on_train_start` frees the gradients as training starts (the learning-rate finder's
        loop included), and `optimizer_step` after every step. Lightning's own zeroing as each step (or
        accumulation window) starts walks the optimizer's parameters to find none: ~0.07 ms a step in a tiny
        BERT's training loop on CPU."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        parts = batch_parts(batch)
        loss, tokens = self.split_batch_loss(parts) if len(parts) > 1 else (self(**batch).loss, None)
        # only at the steps the loggers write: Lightning turns a logged value into a Python number after
        # every step it is logged at (a host-device sync on a GPU), and moves its store each call
        if internals.logs_this_step(self.trainer):
            self.log("train/loss", loss)
        trainer = self.trainer
        if trainer.accumulate_grad_batches == 1 and trainer.world_size == 1:
            return loss
        if trainer.strategy.handles_gradient_accumulation:  # DeepSpeed scales the micro-batches itself
            return loss
        if len(parts) == 1:
            tokens = self.loss_tokens(batch)
        return loss if tokens is None else self.token_weighting.weigh(loss, tokens, trainer.world_size > 1)

    def split_batch_loss(self, parts: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mean loss of a batch served in parts of similar length (`data.split_by_length`), and the
        tokens it averages over (None for a loss over examples). Each part's mean is weighted by what it
        averages over, its tokens (`loss_tokens`) or its examples, so the loss and gradient are the whole
        batch's. A part with nothing to average over (a mean of 0/0) adds nothing, gradient included."""
        weighted, weights = [], []
        for part in parts:
            loss = self(**part).loss
            tokens = self.loss_tokens(part)
            weight = tokens.float() if tokens is not None else loss.new_tensor(float(batch_size(part)))
            weighted.append(torch.where(weight > 0, loss * weight, 0.0))
            weights.append(weight)
        total = torch.stack(weights).sum()
        return torch.stack(weighted).sum() / total, total if tokens is not None else None

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """What the training loss of `batch` is a mean over when that is not its examples (None, here): its
        tokens for a token-level loss, or the summed class weights of a class-weighted one. An optimizer step
        over several micro-batches or ranks then averages over all of them (`TokenWeighting`), as the HF
        Trainer does for tokens, and a batch split by length weighs its parts by them."""
        return None

    def on_after_backward(self) -> None:
        if self.token_weighting.tokens is not None and internals.steps_after_this_batch(self.trainer):
            self.token_weighting.finish_step(
                self.parameters(), self.trainer.accumulate_grad_batches, self.trainer.world_size
            )

    # ------------------------------------------------------------------ evaluation, written by each task

    @abstractmethod
    def evaluate(self, batch: dict[str, Any], stage: Stage) -> None:
        """One validation (`stage` "val") or test batch: update the stage's metrics and log its loss."""

    @abstractmethod
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One predict batch as one record per example (`with_rows` puts each row's id and input first): what
        `hftrain predict` writes to predictions.jsonl and `predict` returns. Lightning's own default would
        return the model's raw outputs."""

    def log_metrics(self, stage: Stage) -> None:
        """At the end of a validation or test: log what `evaluate` accumulated (nothing when the metrics were
        logged as torchmetrics objects, which Lightning computes itself)."""

    @staticmethod
    def require_labels(batch: dict[str, Any], stage: Stage) -> None:
        """Refuse to score a split whose rows have no labels (a classifier's test file may be unlabelled, as
        GLUE's are): the metrics would be computed on nothing."""
        if "labels" not in batch:
            raise HFTrainError(
                f"The {'validation' if is_validation(stage) else stage} data has no labels, so there is nothing to "
                "score. Give a labelled file, or use `hftrain predict` for the model's answers."
            )

    def log_loss(self, stage: Stage, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        """Add `batch`'s mean `loss` to the stage's `<stage>/loss`: the mean over every token (`loss_tokens`),
        or every example (row) for a loss over examples, of the whole set, across ranks too. Each batch weighs
        what its mean is over, so the same weights score the same whatever the batches (longest first, any
        size); a mean of the batches' means would weigh a token of a short batch more than one of a long
        batch. The HF Trainer's `eval_loss` is that mean of batch means (each weighed by the batch size)."""
        tokens = self.loss_tokens(batch)
        weight = (tokens if tokens is not None else loss.new_tensor(float(batch_size(batch)))).double()
        self.losses[stage].update(torch.where(weight > 0, loss.detach().double(), 0.0), weight)
        self.log(f"{stage}/loss", self.losses[stage], prog_bar=True)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's `log`, without the `/dataloader_idx_N` suffix it adds under several validation sets
        (the keys here already name their set: `val/<set>/accuracy`), noting the key so that a custom metric
        cannot silently overwrite one of the task's own."""
        kwargs["add_dataloader_idx"] = False
        self._logged_keys.add(name)
        super().log(name, value, *args, **kwargs)

    def on_validation_epoch_start(self) -> None:
        self._logged_keys.clear()

    def on_test_epoch_start(self) -> None:
        self._logged_keys.clear()

    def update_custom_metrics(self, stage: Stage, predictions: Any, labels: Any) -> None:
        """Feed the user's `custom_metrics` a batch (or, for tasks scored at the end, all) of a stage's
        predictions and labels."""
        for metric in self.custom[stage].values():
            metric.update(predictions, labels)

    def log_custom_metrics(self, stage: Stage) -> None:
        for name, metric in self.custom[stage].items():
            value = metric.compute()
            metric.reset()
            values = value if isinstance(value, dict) else {"": value}
            keyed = {f"{stage}/{name}" + (f"_{key}" if key else ""): v for key, v in values.items()}
            taken = sorted(self._logged_keys & set(keyed))
            if taken:
                raise HFTrainError(
                    f"model.custom_metrics.{name} would be logged as {', '.join(taken)}, which the task logs "
                    "itself. Give the custom metric another name."
                )
            self.log_dict(keyed)

    def examples_wanted(self, stage: Stage, rows: list | None) -> list:
        """Those of a batch's rows (`batch["row"]`, see `TaskDataModule.row_fields`) still wanted as
        TensorBoard examples: the first `logged_examples` of each validation (of its first set), none in the
        sanity check, on rank 0. Each task turns them into (input, gold, prediction) texts for `add_examples`."""
        if stage != self.val_stages[0] or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return []
        return list(rows or [])[: max(0, self.logged_examples - len(self.examples))]

    def add_examples(self, rows: Iterable[tuple[Any, Any, Any]]) -> None:
        """Keep (input, gold, prediction) rows for the validation's text table; numbers and lists as text."""
        self.examples.extend(tuple(_as_text(value) for value in row) for row in rows)

    @staticmethod
    def with_rows(batch: dict[str, Any], predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each prediction after its row's id, input and gold answer, so predictions.jsonl joins back to the
        input; a key the row has (the raw input text) wins over the prediction's own (the decoded one)."""
        rows = batch.get("row") or [{}] * len(predictions)
        return [
            {**row, **{k: v for k, v in prediction.items() if k not in row}}
            for row, prediction in zip(rows, predictions, strict=True)
        ]

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate(batch, self.val_stages[dataloader_idx])

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        for stage in self.val_stages:
            self.log_metrics(stage)
            self.log_custom_metrics(stage)
        log_text_table(self, "val/examples", ["input", "gold", "prediction"], self.examples)
        self.examples = []

    def on_test_epoch_end(self) -> None:
        self.log_metrics("test")
        self.log_custom_metrics("test")

    @torch.inference_mode()
    def predict(self, inputs: Any, data: TaskDataModule, batch_size: int | None = None) -> list[dict[str, Any]]:
        """Predict on raw inputs in memory: the records `hftrain predict` writes, one per input, in order.

        `inputs` is one input or a list: strings, tuples of strings (text pairs, question + context) or dicts
        of the data's columns; `data` turns them into batches as it does a predict file
        (`TaskDataModule.predict_loader`). Runs on the module's device in eval mode, then restores the mode.
        """
        was_training = self.training
        self.eval()
        try:
            rows: list[dict[str, Any]] = []
            for index, batch in enumerate(data.predict_loader(inputs, batch_size)):
                rows += self.predict_step(self.transfer_batch_to_device(batch, self.device, 0), index)
            return rows
        finally:
            self.train(was_training)

    def configure_optimizers(self):
        """AdamW without decay on biases and normalization weights, stepped per optimizer step."""
        norm_params = {
            id(p)
            for m in self.model.modules()
            if "norm" in type(m).__name__.lower()
            for p in m.parameters(recurse=False)
        }
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if name.endswith("bias") or id(param) in norm_params else decay).append(param)
        # the fused kernel updates all weights in one pass instead of a loop of small ops per tensor: several
        # times faster on CPU and GPU (35 ms against 223 ms per MiniLM step on one CPU thread), and the HF
        # Trainer's default. Under 16-mixed the gradient scaler unscales before clipping, which a fused AdamW
        # would do inside its step, so Lightning refuses the pair; bf16-mixed has no scaler (see
        # configure_gradient_clipping).
        fused = str(self.trainer.precision) != "16-mixed" and all(
            p.device.type in ("cpu", "cuda") for p in decay + no_decay
        )
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.learning_rate,
            betas=(self.adam_beta1, self.adam_beta2),
            eps=self.adam_epsilon,
            fused=fused or None,
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = math.ceil(self.warmup_steps * total) if self.warmup_steps < 1 else int(self.warmup_steps)
        scheduler = get_scheduler(
            "constant_with_warmup" if self.lr_scheduler_type == "constant" else self.lr_scheduler_type,
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=total,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def replaced_optimizer(self) -> dict[str, Any] | None:
        """The optimizer (with its settings) and schedule a fit runs instead of `configure_optimizers`' AdamW and
        warmup schedule, read from the trainer once it set them up; None when this module's own run.

        LightningCLI's `--optimizer` (optionally with `--lr_scheduler`) replaces `configure_optimizers` on the
        module object with its own; the first screen and the model card say so, rather than list AdamW's
        settings for a run that never used them."""
        if getattr(self.configure_optimizers, "__func__", None) is type(self).configure_optimizers:
            return None
        optimizers, schedules = self.trainer.optimizers, self.trainer.lr_scheduler_configs
        if not optimizers:
            return None
        optimizer = optimizers[0]
        settings = {
            f"optimizer.{key}": value
            for key, value in optimizer.defaults.items()
            if isinstance(value, int | float | str) and value is not False  # not the implementation switches
        }
        return {
            "optimizer": _class_path(type(optimizer)),
            **settings,
            "lr_scheduler": _class_path(type(schedules[0].scheduler)) if schedules else None,
        }

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as Lightning does, but under bf16-mixed clip the fused AdamW's gradients directly: Lightning's
        mixed-precision plugin refuses to clip for any fused optimizer, a guard against the gradient scaler of
        16-mixed, which bf16-mixed does not use."""
        if not gradient_clip_val or str(self.trainer.precision) != "bf16-mixed":
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    def export(
        self,
        folder: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write the model (and tokenizer, by default the module's own) with `save_pretrained`, replacing
        `folder` only once complete.

        `state_dict` is this module's state dict (keys `model.…`), e.g. from the best checkpoint; by default
        the current weights are written. The files land in a sibling temporary folder that is swapped in
        at the end (`writes.replacing`), so a crash or a full disk mid-write never leaves a half-written `folder`.
        """
        folder = Path(folder)
        weights = None
        if state_dict is not None:
            weights = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
        model, weights = self.exported_model(weights)
        with replacing(folder, needed=lambda: _weight_bytes(model, weights)) as partial:
            with library_progress_bars_off():  # transformers' "Writing model shards" bar, mid-way through the output
                model.save_pretrained(partial, state_dict=weights)
            if (tokenizer or self.tokenizer) is not None:
                (tokenizer or self.tokenizer).save_pretrained(partial)
            _modes_as_umask(partial)
        return folder

    def exported_model(self, weights: dict[str, torch.Tensor] | None) -> tuple[PreTrainedModel, dict | None]:
        """The model `export` saves and the weights to save with it (None: the model's own)."""
        return self.model, weights


def _class_path(cls: type) -> str:
    """A class's shortest import path, as a user writes it (`torch.optim.SGD`, not `torch.optim.sgd.SGD`)."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = sys.modules.get(".".join(parts[:end]))
        if getattr(module, cls.__qualname__, None) is cls:
            return f"{'.'.join(parts[:end])}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _modes_as_umask(folder: Path) -> None:
    """Give every file in `folder` the mode a plain `open` gives it (644 under the usual umask 022).
    safetensors 0.8 writes `model.safetensors` through a temporary file of mode 600, which made a run folder
    shared with a team unreadable to it while the export's other files were not."""
    umask = os.umask(0)  # the only way to read it; set straight back
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _weight_bytes(model: PreTrainedModel, weights: dict[str, torch.Tensor] | None) -> int:
    """About the bytes an export writes: its weights (the tokenizer's files are small beside them)."""
    return sum(t.nbytes for t in (model.state_dict() if weights is None else weights).values())


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False)
