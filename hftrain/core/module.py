"""The base LightningModule: load a pretrained `AutoModelFor…`, optimize it, evaluate it, export it.

A task module is a dataclass that adds its own fields to the ones here, builds `self.model` with
`load_pretrained` in `__post_init__`, and writes `evaluate` (one validation or test batch), `log_metrics`
(the end of a validation or test) and `predict_step`. Training step, AdamW with weight-decay groups, the
warmup schedule and the `save_pretrained` export are shared. Being dataclasses, the constructor signature
*is* the config schema that LightningCLI reads.

What the callbacks need of a task (the contract, read through `task_monitor` and `TaskModule.export`):
`monitor` and `monitor_mode`, the validation metric that picks the best checkpoint and whether higher is
better, set in `__post_init__`; and `export`, which writes the `save_pretrained` folder.
"""

import inspect
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from hftrain.core import internals
from hftrain.core.errors import HFTrainError
from hftrain.core.pretrained import load_model, load_tokenizer

Stage = Literal["val", "test"]


@dataclass(eq=False, repr=False, kw_only=True)
class TaskModule(LightningModule):
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
            (in [0, 1)), as in the HF Trainer.
        gradient_checkpointing: Recompute activations in the backward pass to save memory (slower).
        torch_compile: Compile the model's forward and backward with `torch.compile` (generation stays eager).
            The first batches of each new sequence length pay for compilation; see docs/performance.md for
            when that pays off.
        trust_remote_code: Allow model code from the Hub repository to run. Only for repositories you trust.
        revision: Hub branch, tag or commit of the model.
        ignore_mismatched_sizes: Re-initialize weights whose shape differs from the checkpoint's (e.g. a
            classifier head fine-tuned for a different label set).
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

    # the model's own tokenizer, for tasks that decode what they generate (not a config field: no annotation)
    tokenizer = None

    def __post_init__(self) -> None:
        super().__init__()
        if self.learning_rate <= 0:
            raise HFTrainError(f"model.learning_rate must be positive, got {self.learning_rate}.")
        if self.warmup_steps < 0:
            raise HFTrainError(f"model.warmup_steps must be 0 or more, got {self.warmup_steps}.")
        self.save_hyperparameters()
        self.monitor = "val/loss"
        self.monitor_mode: Literal["min", "max"] = "min"

    def load_pretrained(self, auto_class: type, **config_overrides: Any) -> PreTrainedModel:
        """Load `model_name_or_path` with `auto_class`, overriding config fields (labels, problem type)."""
        model = load_model(
            auto_class,
            self.model_name_or_path,
            self.revision,
            self.trust_remote_code,
            self.ignore_mismatched_sizes,
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

    def setup(self, stage: str) -> None:
        # compiling `forward` (every step's model call) rather than wrapping the module keeps the state-dict
        # keys, checkpoints and the exported model as they are, and leaves `generate` eager
        if self.torch_compile and "forward" not in vars(self):
            self.forward = torch.compile(self.forward)

    def on_train_start(self) -> None:
        internals.restore_loader_position(self.trainer)

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

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**batch).loss
        # only at the steps the loggers write: Lightning turns a logged value into a Python number after
        # every step it is logged at (a host-device sync on a GPU), and moves its store each call
        if internals.logs_this_step(self.trainer):
            self.log("train/loss", loss)
        return loss

    # ------------------------------------------------------------------ evaluation, written by each task

    def evaluate(self, batch: dict[str, Any], stage: Stage) -> None:
        """One validation (`stage` "val") or test batch: update the stage's metrics and log its loss."""
        raise NotImplementedError

    def log_metrics(self, stage: Stage) -> None:
        """At the end of a validation or test: log what `evaluate` accumulated (nothing when the metrics were
        logged as torchmetrics objects, which Lightning computes itself)."""

    def log_loss(self, stage: Stage, loss: torch.Tensor, batch_size: int) -> None:
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_metrics("test")

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
        warmup = int(self.warmup_steps * total) if self.warmup_steps < 1 else int(self.warmup_steps)
        scheduler = get_scheduler(
            "constant_with_warmup" if self.lr_scheduler_type == "constant" else self.lr_scheduler_type,
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=total,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
        at the end, so a crash mid-write never leaves a half-written `folder`.
        """
        folder = Path(folder)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        weights = None
        if state_dict is not None:
            weights = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
        model, weights = self.exported_model(weights)
        model.save_pretrained(partial, state_dict=weights)
        if (tokenizer or self.tokenizer) is not None:
            (tokenizer or self.tokenizer).save_pretrained(partial)
        previous = folder.with_name(folder.name + ".previous")
        if folder.exists():
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
        partial.rename(folder)
        shutil.rmtree(previous, ignore_errors=True)
        return folder

    def exported_model(self, weights: dict[str, torch.Tensor] | None) -> tuple[PreTrainedModel, dict | None]:
        """The model `export` saves and the weights to save with it (None: the model's own)."""
        return self.model, weights


def task_monitor(module: LightningModule, needed_for: str) -> tuple[str, Literal["min", "max"]]:
    """The metric a task module is judged by and whether higher is better; only `TaskModule`s know theirs."""
    if not isinstance(module, TaskModule):
        raise HFTrainError(
            f"{type(module).__name__} is not an hftrain task module, so it names no metric for {needed_for}. "
            "Set the monitor (and mode) explicitly, or train a TaskModule subclass."
        )
    return module.monitor, module.monitor_mode
