"""Per-step framework overhead: hftrain, the HF Trainer and a bare PyTorch loop on a model too small to matter.

With a 2-layer BERT of hidden size 32 and sentences of a few tokens, the arithmetic of a step is close to
zero, so what a step costs is the framework's own per-step work: the loop, hooks and callbacks, logging,
reseeding, the dataloader, and host syncs. All sides train the same saved model
(`BertForSequenceClassification`, random init, a WordPiece tokenizer built as in tests/conftest.py) on
the same rows, tokenized the same way, with batch size 32, fused AdamW in two weight-decay groups, a linear
schedule and gradient clipping at norm 1.0:

- `bare`: the floor. A `DataLoader` with `DataCollatorWithPadding`, then forward, backward,
  `clip_grad_norm_`, `optimizer.step()`, `scheduler.step()`, `zero_grad()`; nothing else.
- `lightning`: the bare loop's model, loader, optimizer, schedule and clipping in a minimal
  `LightningModule` (`training_step` returns the loss) under a Lightning `Trainer` with no logger, callbacks or
  progress bar: what Lightning's loop costs by itself, the floor of any trainer built on it.
- `hf`: `transformers.Trainer` at its defaults (tqdm bar, logging every 500 steps, no reporting
  integration), `max_grad_norm=1.0`; `hf-no-progress-bar` with `disable_tqdm=True`.
- `hftrain`: `hftrain.cli.HFTrainCLI(args=..., run=False)`, so the trainer carries the CLI's defaults
  (TensorBoard logger, progress display, TrainingLog, StopOnNonFiniteLoss, TaskCheckpoint, export
  and results callbacks, per-batch reseeding, `self.log` of the loss), then `trainer.fit`.
- `hftrain-no-<part>` (ablations, `--variants all`): hftrain with one part of its per-step work taken
  away, so the difference to `hftrain` is that part's cost (`hftrain-no-free-profiler` puts Lightning's
  own profiler back, so there the difference is what hftrain's saves); `hftrain-bare-lightning` takes all
  of them away.

Each run is a fresh subprocess and the variants alternate, each repeat starting one variant later
(A B C, B C A, C A B, …), so drift in a shared machine's load falls on all of them. A run times `--steps`
optimizer steps after `--warmup` steps (start-up, the first steps' allocations and kernel choices are
excluded) from step end to step end, so everything a framework does between two steps is counted,
whichever hook it runs in. The table gives medians over
the repeats of the mean time per step (periodic work such as logging every 50 steps included), of
the median step (robust to a neighbour's burst of load), and of CPU time per step. `--parts` also times
the parts of the hftrain and bare steps in place (µs per step: the loader, each hook and callback, the
forward, `self.log`, …), which resolves costs far below what subprocess ablations can on a loaded machine.

    python scripts/bench_step_overhead.py                               # bare, hf, hftrain; 3 repeats
    python scripts/bench_step_overhead.py --variants all --repeats 3    # with the ablations
    python scripts/bench_step_overhead.py --variants bare,hftrain --parts   # where hftrain's step goes
    python scripts/bench_step_overhead.py --variants hftrain --repeats 1 --profile /tmp/steps   # /tmp/steps.hftrain.txt
    python scripts/bench_step_overhead.py --accelerator gpu             # where per-step overhead decides
"""

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPO, alternate, machine_record, median, run_child

ABLATIONS = {
    # name: what it takes away from hftrain's defaults
    "progress-bar": "trainer.enable_progress_bar false (hftrain's progress line)",
    "log-loss": "no self.log('train/loss') at logging steps in training_step",
    "reseed": "no torch.manual_seed in on_train_batch_start",
    "training-log": "no TrainingLog (learning rate, gradient norm, throughput)",
    "nonfinite": "no StopOnNonFiniteLoss",
    "checkpoint": "no TaskCheckpoint",
    "logger": "trainer.logger false (TensorBoard), and so no TrainingLog either",
    "stateful-loader": "torch DataLoader instead of torchdata's StatefulDataLoader",
    "free-profiler": "Lightning's PassThroughProfiler (a new generator per hook call) instead of hftrain's NoProfiler",
}
VARIANTS = ["bare", "lightning", "hf", "hf-no-progress-bar", "hftrain"] + [f"hftrain-no-{a}" for a in ABLATIONS]
VARIANTS.append("hftrain-bare-lightning")
DEFAULT_VARIANTS = "bare,hf,hftrain"
# Lightning's hooks of a training step, each dispatched to every callback
STEP_HOOKS = [
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {VARIANTS}, or `all`")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternating")
    parser.add_argument("--warmup", type=int, default=30, help="optimizer steps (>= 1) before the timing starts")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps timed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--log-every",
        type=int,
        help="steps between logged points on both sides (hftrain's log_every_n_steps, the HF Trainer's "
        "logging_steps); default: each side's own (hftrain sizes it to the run, every 8 steps here; HF every 500)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for all")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--workdir", help="folder for the model, data and runs (default: a fresh temporary one)")
    parser.add_argument("--profile", help="profile the timed steps of each run into files with this prefix")
    parser.add_argument("--profiler", choices=["pyinstrument", "cprofile"], default="pyinstrument")
    parser.add_argument("--parts", action="store_true", help="time the parts of the hftrain and bare steps")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- setup


def prepare(workdir: Path, args: argparse.Namespace) -> None:
    """Write the tiny model (with its tokenizer) once, and the training rows for this many steps; every run
    reads them."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import corpus, sentiment_rows, train_wordpiece, write_csv

    # one epoch holds every step, so no epoch boundary (validation, sampler reset) falls into the timing
    rows = [
        {"text": row["text"], "label": int(row["label"] == "pos")}
        for row in sentiment_rows(args.batch_size * (args.warmup + args.steps), seed=1)
    ]
    write_csv(workdir / "train.csv", rows)
    write_csv(workdir / "dev.csv", rows[:64])
    if (workdir / "model" / "config.json").is_file():
        return
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = train_wordpiece(workdir / "model", corpus())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    BertForSequenceClassification(config).save_pretrained(workdir / "model")


# ---------------------------------------------------------------------------------------------- child side


class StepClock:
    """Wall and CPU time at the end of every optimizer step; optionally profiles the timed steps.

    `profiler` `pyinstrument` (sampling: little distortion; `pip install pyinstrument`) writes the call tree
    to `profile`.txt, each function's inclusive time per step to `profile`.functions.txt and the session
    to `profile`.pyisession; `cprofile` (deterministic: exact call counts, but each Python call costs
    more, so Python-heavy code looks slower than it is) writes pstats to `profile`.prof.
    """

    def __init__(
        self, warmup: int, steps: int, profile: str | None = None, profiler: str = "pyinstrument", gpu: bool = False
    ) -> None:
        self.warmup = warmup
        self.gpu = gpu
        self.steps = steps
        self.parts = PartTimer()
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.profile = profile
        self.kind = profiler
        self.profiler = None

    def step_end(self) -> None:
        if self.gpu:  # the clock reads host time: wait for the step the GPU still runs
            import torch

            torch.cuda.synchronize()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if len(self.wall) == self.warmup:
            self.parts.reset()
        if self.profiler is not None and len(self.wall) == self.warmup + self.steps:
            self._stop_profiler()
        if self.profile and len(self.wall) == self.warmup:
            if self.kind == "pyinstrument":
                from pyinstrument import Profiler

                self.profiler = Profiler(interval=0.0002)
                self.profiler.start()
            else:
                import cProfile

                self.profiler = cProfile.Profile()
                self.profiler.enable()

    def _stop_profiler(self) -> None:
        if self.kind == "pyinstrument":
            self.profiler.stop()
            self.profiler.last_session.save(f"{self.profile}.pyisession")  # `pyinstrument --load` renders it
            Path(f"{self.profile}.txt").write_text(self.profiler.output_text(unicode=True, show_all=True))
            per_step = inclusive_times(self.profiler.last_session.root_frame(), self.steps)
            lines = [f"{1e6 * seconds:10.0f} us/step  {name}" for name, seconds in per_step]
            Path(f"{self.profile}.functions.txt").write_text("\n".join(lines) + "\n")
        else:
            self.profiler.disable()
            self.profiler.dump_stats(f"{self.profile}.prof")
        self.profiler = None

    def finish(self) -> dict:
        wall, cpu = self.wall[self.warmup - 1 :], self.cpu[self.warmup - 1 :]  # from the end of step `warmup`
        steps = len(wall) - 1
        gaps = [b - a for a, b in zip(wall, wall[1:], strict=False)]
        return {
            "parts": self.parts.per_step(steps, (wall[-1] - wall[0]) / steps),
            "steps_timed": steps,
            "ms_per_step": 1000 * (wall[-1] - wall[0]) / steps,
            "median_ms": 1000 * statistics.median(gaps),
            "cpu_ms_per_step": 1000 * (cpu[-1] - cpu[0]) / steps,
        }


def lightning_clock(clock: StepClock):
    """A Lightning callback that reads `clock` at the end of every training batch (Lightning imported here:
    only the child that runs it loads it)."""
    from lightning.pytorch import Callback

    class Clock(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.step_end()

    return Clock()


def inclusive_times(root, steps: int) -> list[tuple[str, float]]:
    """Seconds per step spent in each function of a pyinstrument call tree, callees included (a recursive
    function counted once), longest first."""
    totals: dict[str, float] = {}

    def walk(frame, active: frozenset) -> None:
        name = f"{frame.class_name + '.' if frame.class_name else ''}{frame.function}  {frame.file_path_short}"
        if name not in active:
            totals[name] = totals.get(name, 0.0) + frame.time / steps
            active = active | {name}
        for child in frame.children:
            walk(child, active)

    walk(root, frozenset())
    return sorted(totals.items(), key=lambda item: -item[1])


class PartTimer:
    """Wall time spent in chosen functions (the parts of a step), per timed step, in the run's own process.

    Subprocess ablations cannot resolve a few hundred microseconds on a shared machine; timing each part in
    place can, since every part of one run sees the same load. Wrapping costs two clock reads per call.
    Parts may nest (`training_step` holds `self.log` and the model's forward): dots mark the depth.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner, attribute: str, label: str, only=None) -> None:
        """Time `owner.attribute` under `label`: every call, or those whose arguments `only` accepts."""
        function = getattr(owner, attribute)
        self.seconds[label], self.calls[label] = 0.0, 0  # the table keeps this order

        @functools.wraps(function)  # keeps the signature: hftrain passes a model only the inputs its forward names
        def timed(*args, **kwargs):
            if only is not None and not only(*args):
                return function(*args, **kwargs)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, attribute, timed)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)

    def per_step(self, steps: int, step_seconds: float) -> dict[str, dict[str, float]]:
        """µs and calls per step of each part, plus what no part holds: the loop's own work between them."""
        parts = {
            label: {"us": 1e6 * seconds / steps, "calls": self.calls[label] / steps}
            for label, seconds in self.seconds.items()
        }
        if parts:
            outer = sum(part["us"] for label, part in parts.items() if not label.startswith("·"))
            parts["rest of the loop (step - unindented parts)"] = {"us": 1e6 * step_seconds - outer, "calls": 1.0}
        return parts


def time_lightning_parts(parts: PartTimer) -> None:
    """Wrap the parts of a Lightning training step and hftrain's per-step hooks (before the trainer exists)."""
    import torch
    from lightning.pytorch.core.module import LightningModule
    from lightning.pytorch.loops.fetchers import _PrefetchDataFetcher
    from lightning.pytorch.loops.optimization.automatic import Closure
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.strategies import Strategy
    from lightning.pytorch.trainer import call
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
    from transformers import BertForSequenceClassification

    from hftrain.core.module import TaskModule

    for owner, attribute, label in [
        (_PrefetchDataFetcher, "__next__", "next batch (fetcher, loader, sampler, collate)"),
        (Strategy, "batch_to_device", "batch to device"),
        (_LoggerConnector, "on_batch_start", "logger connector on_batch_start"),
        (TaskModule, "on_train_batch_start", "module on_train_batch_start (reseed)"),
        (Precision, "optimizer_step", "optimizer_step (Lightning)"),
        (torch.optim.AdamW, "step", "· AdamW.step: runs the closure, then clipping"),
        (Closure, "__call__", "·· closure"),
        (TaskModule, "optimizer_zero_grad", "··· zero_grad"),
        (TaskModule, "training_step", "··· training_step"),
        (BertForSequenceClassification, "forward", "···· model forward (transformers)"),
        (LightningModule, "log", "···· self.log"),
        (LightningModule, "backward", "··· backward"),
        (Precision, "clip_gradients", "·· clip gradients"),
        (_LoggerConnector, "on_batch_end", "logger connector on_batch_end (metrics)"),
        (_TrainingEpochLoop, "update_lr_schedulers", "lr scheduler"),
        (_LoggerConnector, "update_train_step_metrics", "logger connector update_train_step_metrics"),
    ]:
        parts.wrap(owner, attribute, label)
    parts.wrap(
        call,
        "_call_callback_hooks",
        "callback hooks of the step (Lightning's dispatch to every callback, the callbacks' work)",
        only=lambda trainer, hook, *args: hook in STEP_HOOKS,
    )


def time_callbacks(parts: PartTimer, callbacks: list) -> None:
    """Wrap every per-step hook a callback overrides (inside the dispatch `time_lightning_parts` times)."""
    from lightning.pytorch import Callback

    for callback in callbacks:
        for hook in STEP_HOOKS:
            if getattr(type(callback), hook) is not getattr(Callback, hook):
                parts.wrap(callback, hook, f"· callback {type(callback).__name__}.{hook}")


def bare_setup(args: argparse.Namespace, workdir: Path):
    """The bare loop's loader, model (in training mode), fused AdamW in two groups and linear schedule."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    train = datasets.load_dataset("csv", data_files=str(workdir / "train.csv"), split="train")
    train = train.map(lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text"])
    train = train.rename_column("label", "labels")
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=DataCollatorWithPadding(tokenizer),
        pin_memory=device.type == "cuda",
    )
    model = AutoModelForSequenceClassification.from_pretrained(workdir / "model").to(device).train()
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        fused=True,
    )
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=args.warmup + args.steps)
    return device, loader, model, optimizer, scheduler


def run_bare(args: argparse.Namespace, workdir: Path, clock: StepClock) -> None:
    import torch

    device, loader, model, optimizer, scheduler = bare_setup(args, workdir)
    total = args.warmup + args.steps
    if args.parts:
        for owner, attribute, label in [
            (torch.utils.data.dataloader._BaseDataLoaderIter, "__next__", "next batch (loader, sampler, collate)"),
            (model, "forward", "model forward (transformers)"),
            (torch.Tensor, "backward", "backward"),
            (torch.nn.utils, "clip_grad_norm_", "clip gradients"),
            (optimizer, "step", "AdamW.step"),
            (scheduler, "step", "lr scheduler"),
            (optimizer, "zero_grad", "zero_grad"),
        ]:
            clock.parts.wrap(owner, attribute, label)
    for step, batch in enumerate(loader):
        if step == total:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step_end()


def run_lightning(args: argparse.Namespace, workdir: Path, clock: StepClock) -> None:
    """The bare loop's work under Lightning's loop and nothing else. The model is put in training mode
    before the fit: Lightning 2.6 keeps the modes of submodules, and `from_pretrained` returns a model in
    evaluation mode, which would train without dropout: faster, and not the same work."""
    from lightning.pytorch import LightningModule, Trainer

    _, loader, model, optimizer, scheduler = bare_setup(args, workdir)

    class Plain(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    trainer = Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_steps=args.warmup + args.steps,
        gradient_clip_val=args.max_grad_norm,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[lightning_clock(clock)],
    )
    trainer.fit(Plain(), loader)


def run_hf(args: argparse.Namespace, workdir: Path, clock: StepClock, progress_bar: bool) -> None:
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    train = datasets.load_dataset("csv", data_files=str(workdir / "train.csv"), split="train")
    train = train.map(lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text"])

    class Clock(TrainerCallback):
        def on_step_end(self, arguments, state, control, **kwargs):
            clock.step_end()

    training_args = TrainingArguments(
        output_dir=str(workdir / "hf-output"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm,
        max_steps=args.warmup + args.steps,
        seed=args.seed,
        use_cpu=args.accelerator == "cpu",
        disable_tqdm=not progress_bar,
        **({"logging_steps": args.log_every} if args.log_every else {}),
    )
    model = AutoModelForSequenceClassification.from_pretrained(workdir / "model")
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()


def hftrain_config(args: argparse.Namespace, workdir: Path, removed: set[str]) -> dict:
    trainer = {
        "max_steps": args.warmup + args.steps,
        "accelerator": args.accelerator,
        "devices": 1,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    if args.log_every:
        trainer["log_every_n_steps"] = args.log_every
    if "progress-bar" in removed:
        trainer["enable_progress_bar"] = False
    if "logger" in removed:
        trainer["logger"] = False
    return {
        "seed_everything": args.seed,
        "model": {
            "class_path": "hftrain.tasks.text_classification.TextClassification",
            "init_args": {"model_name_or_path": str(workdir / "model"), "learning_rate": args.learning_rate},
        },
        "data": {
            "class_path": "hftrain.tasks.text_classification.TextClassificationData",
            "init_args": {
                "train_file": str(workdir / "train.csv"),
                "validation_file": str(workdir / "dev.csv"),
                "batch_size": args.batch_size,
                "cache_dir": str(workdir / "hftrain-cache"),
                "seed": args.seed,
                # the batches the other sides take: the overhead is measured here, not the padding
                "split_by_length": False,
            },
        },
        "trainer": trainer,
    }


def run_hftrain(args: argparse.Namespace, workdir: Path, clock: StepClock, removed: set[str]) -> None:
    """hftrain with the CLI's defaults, less the parts in `removed` (patched here, not in the package)."""
    import torch
    from lightning.pytorch.profilers import PassThroughProfiler

    from hftrain.core import callbacks, loaders
    from hftrain.core.module import TaskModule
    from hftrain.core.training_log import TrainingLog

    if "log-loss" in removed:
        TaskModule.training_step = lambda self, batch, batch_idx: self(**batch).loss
    if "reseed" in removed:
        TaskModule.on_train_batch_start = lambda self, batch, batch_idx: None
    if "stateful-loader" in removed:
        loaders.StatefulDataLoader = torch.utils.data.DataLoader
    if args.parts:
        time_lightning_parts(clock.parts)
    from hftrain.cli import HFTrainCLI

    cli = HFTrainCLI(args=hftrain_config(args, workdir, removed), run=False)
    drop = {
        "training-log": TrainingLog,
        "logger": TrainingLog,  # nothing to log to
        "nonfinite": callbacks.StopOnNonFiniteLoss,
        "checkpoint": callbacks.TaskCheckpoint,
    }
    kinds = tuple(drop[part] for part in removed if part in drop)
    cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not (kinds and isinstance(c, kinds))]
    if "free-profiler" in removed:
        cli.trainer.profiler = PassThroughProfiler()

    if args.parts:
        time_callbacks(clock.parts, cli.trainer.callbacks)
    cli.trainer.callbacks.append(lightning_clock(clock))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    os.chdir(workdir)  # hftrain's runs/ folder lands here
    profile = f"{args.profile}.{args.child}" if args.profile else None
    clock = StepClock(args.warmup, args.steps, profile, args.profiler, gpu=args.accelerator == "gpu")
    if args.child == "bare":
        run_bare(args, workdir, clock)
    elif args.child == "lightning":
        run_lightning(args, workdir, clock)
    elif args.child.startswith("hf-") or args.child == "hf":
        run_hf(args, workdir, clock, progress_bar=args.child == "hf")
    elif args.child == "hftrain-bare-lightning":
        run_hftrain(args, workdir, clock, set(ABLATIONS))
    else:
        run_hftrain(args, workdir, clock, {args.child.removeprefix("hftrain-no-")} - {"hftrain"})
    result = {"variant": args.child, "wall_s": time.time() - args.started, **clock.finish()}
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- parent side


def table(runs: list[dict], variants: list[str]) -> str:
    """Medians per variant, with each row's time per step against the bare loop's and the HF Trainer's."""

    references = [v for v in ("bare", "hf", "hftrain") if v in variants]
    header = ["variant", "runs", "steps/s", "ms/step", "median step ms", "CPU ms/step", "load"]
    header += [f"vs {ref}" for ref in references]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        ms = median(runs, variant, "ms_per_step")
        cells = [
            variant,
            str(sum(r["variant"] == variant for r in runs)),
            f"{1000 / ms:.1f}",
            f"{ms:.2f}",
            f"{median(runs, variant, 'median_ms'):.2f}",
            f"{median(runs, variant, 'cpu_ms_per_step'):.2f}",
            f"{median(runs, variant, 'load'):.1f}",
        ]
        cells += [f"{ms / median(runs, ref, 'ms_per_step'):.2f}x" for ref in references]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parts_table(runs: list[dict], variants: list[str]) -> str:
    """Median µs per step of each timed part, per variant; `·` marks a part inside the one above."""
    labels = list(dict.fromkeys(label for r in runs if r["variant"] in variants for label in r["parts"]))
    lines = ["| part (µs/step) | " + " | ".join(variants) + " |", "|" + "---|" * (len(variants) + 1)]
    for label in labels:
        cells = []
        for variant in variants:
            values = [r["parts"][label]["us"] for r in runs if r["variant"] == variant and label in r["parts"]]
            cells.append(f"{statistics.median(values):.0f}" if values else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    variants = VARIANTS if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hftrain-step-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    prepare(workdir, args)
    argv = [*argv, "--workdir", str(workdir)]
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    runs = []
    for repeat, variant in alternate(variants, args.repeats):
        run = run_child(__file__, argv, variant, args.threads)
        runs.append(run)
        print(
            f"[{repeat + 1}/{args.repeats}] {variant}: {run['ms_per_step']:.2f} ms/step "
            f"(median {run['median_ms']:.2f}, CPU {run['cpu_ms_per_step']:.2f}), load {run['load']:.1f}",
            flush=True,
        )
    print(table(runs, variants))
    if args.parts:
        print(parts_table(runs, [v for v in variants if v != "hf" and not v.startswith("hf-")]))
    for variant in variants:
        part = variant.removeprefix("hftrain-no-")
        if part in ABLATIONS:
            print(f"- {variant}: {ABLATIONS[part]}")
    if args.json:
        Path(args.json).write_text(json.dumps({**machine_record(), "argv": argv, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
