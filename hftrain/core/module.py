"""The base LightningModule: load a pretrained `AutoModelFor…`, optimize it, export it.

A task module is a dataclass that adds its own fields to the ones here, builds `self.model` with
`load_pretrained` in `__post_init__`, and writes its validation/test/predict steps. Training step,
AdamW with weight-decay groups, the warmup schedule and the `save_pretrained` export are shared.
Being dataclasses, the constructor signature *is* the config schema that LightningCLI reads.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from hftrain.core.errors import HFTrainError


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
        options = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        try:
            config = AutoConfig.from_pretrained(self.model_name_or_path, **options, **config_overrides)
            model = auto_class.from_pretrained(
                self.model_name_or_path,
                config=config,
                ignore_mismatched_sizes=self.ignore_mismatched_sizes,
                **options,
            )
        except OSError as err:
            where = (
                f"the folder {Path(self.model_name_or_path).resolve()} does not hold a model"
                if Path(self.model_name_or_path).exists()
                else "it is neither an existing folder nor a Hub id that could be downloaded"
            )
            raise HFTrainError(
                f"Could not load the model '{self.model_name_or_path}': {where}. Check the path or Hub id; "
                "offline (no network, or HF_HUB_OFFLINE=1), only local folders and models already in the "
                f"Hugging Face cache load. Details: {str(err).splitlines()[0]}"
            ) from err
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            raise HFTrainError(
                f"The model '{self.model_name_or_path}' has weights of another shape than this task needs "
                "(e.g. a classifier head for a different number of labels). Set "
                f"model.ignore_mismatched_sizes=true to re-initialize them. Details: {str(err).splitlines()[0]}"
            ) from err
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        # from_pretrained leaves the model in eval mode, and Lightning keeps each submodule's mode as found:
        # without this, dropout would stay off during training
        return model.train()

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    def setup(self, stage: str) -> None:
        # compiling `forward` (every step's model call) rather than wrapping the module keeps the state-dict
        # keys, checkpoints and the exported model as they are, and leaves `generate` eager
        if self.torch_compile and "forward" not in vars(self):
            self.forward = torch.compile(self.forward)

    def on_train_start(self) -> None:
        """Give a resumed run its dataloader position back.

        `configure_optimizers` reads `trainer.estimated_stepping_batches`, which builds the train loader
        before the checkpoint is restored; Lightning then skips loading the saved loader state
        (Lightning issue #20550) and a run resumed mid-epoch would start the epoch over. Load the pending
        state and restart the fetcher's iterator, as Lightning's own resume path does.
        """
        fit_loop = self.trainer.fit_loop
        if fit_loop.restarting and getattr(fit_loop, "_combined_loader_states_to_load", None):
            fit_loop._load_combined_loader_states()
            iter(fit_loop._data_fetcher)

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Seed each batch's randomness (dropout) from the run's seed and the batch's position in training,
        so a run resumed from a checkpoint draws exactly the masks an uninterrupted run draws."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed(seed * 1_000_003 + self.trainer.fit_loop.epoch_loop.total_batch_idx)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**batch).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

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
        # times faster on CPU and GPU, and the HF Trainer's default. Lightning's mixed-precision plugins
        # (16-mixed and bf16-mixed) refuse gradient clipping with it, so they keep the default implementation.
        fused = "mixed" not in str(self.trainer.precision) and all(
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

    def export(
        self,
        folder: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write the model (and tokenizer) with `save_pretrained`, replacing `folder` only once complete.

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
        self.model.save_pretrained(partial, state_dict=weights)
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        previous = folder.with_name(folder.name + ".previous")
        if folder.exists():
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
        partial.rename(folder)
        shutil.rmtree(previous, ignore_errors=True)
        return folder
