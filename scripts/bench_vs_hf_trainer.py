"""hftrain against the HF Trainer on the same work, side by side: training, or evaluation and prediction.

For each task of scripts/bench_tasks.py (MRPC, CoNLL-2003, the SQuAD slice, Multi30k, WikiText-2) both sides
start from the same weights, read the same tokenized data and use the settings of the task's config
(batch size, AdamW, warmup, clipping, seed, threads, dataloader workers, precision). Each run is a fresh
subprocess and the variants take turns (A B C, B C A, …), so drift in a shared machine's load falls on all.

`--mode train` (the default) trains `--max-steps` optimizer steps or `--epochs` epochs, then evaluates once.
Per run: train samples/s and real (non-pad) tokens/s from the end of the first optimizer step to the end
of the last (the first step's one-off costs are in "first step s"), samples per CPU-second, wall time
(process start to exit), peak RSS, the task's metrics after training, the pad share of the trained
batches, and the achieved training GFLOP/s (the model's arithmetic on the real tokens of those batches,
scripts/bench_common.py); with `--floor` (a `bench_matmul.py --json` file) also its share of the machine's
peak matmul rate at the run's precision and thread count.

`--mode evaluate` runs the validation split once through hftrain's `validate` and the HF Trainer's
`evaluate` (`Seq2SeqTrainer` with `predict_with_generate` for translation), then the predict split through
`predict` (generation for translation and LM), and reports the time, samples/s and tokens/s of each, the
ratios to the HF side by wall and by CPU time (the fairer one on a shared machine), the metrics, and how
many predictions equal the first run's. Evaluate a trained model (`--model`, e.g. one
saved by `--mode train --save-model DIR`): an untrained one generates to the length limit every time.

Variants: `hftrain` (length-grouped training batches) and `hf` (random ones), plus flags after `+`: `group`
(HF only: `train_sampling_strategy="group_by_length"`, which in transformers 5 also orders its evaluation
batches), `random` (hftrain only: `data.group_by_length false`, hftrain's default), `whole` (hftrain only:
`data.split_by_length false`; by default hftrain splits training batches by length on CPU), `1x`/`2x` (evaluation
batch = 1 or 2 times the training batch; hftrain's default is 2x, the HF side's here 1x), `cli` (hftrain only:
the run goes through `HFTrainCLI` with all its default callbacks, checkpoints, TensorBoard logs and the export
of the best checkpoint included, in a temporary run folder; without it both sides train without writing
anything), and a precision after `/`: `/bf16` (bf16-mixed, the HF Trainer's `bf16=True`) or `/16` (16-mixed,
`fp16=True`); plain is 32-bit.

    python scripts/bench_vs_hf_trainer.py --task mrpc --max-steps 60          # MRPC training, 2 repeats
    python scripts/bench_vs_hf_trainer.py --task conll --epochs 1 --repeats 1
    python scripts/bench_vs_hf_trainer.py --task multi30k --epochs 2 --repeats 1 --variants hftrain \\
        --save-model /tmp/t5-trained
    python scripts/bench_vs_hf_trainer.py --task multi30k --mode evaluate --model /tmp/t5-trained
    python scripts/bench_vs_hf_trainer.py --task mrpc --variants hftrain,hftrain/bf16,hf/bf16 --epochs 3
    python scripts/bench_vs_hf_trainer.py --task mrpc --accelerator gpu --variants hftrain/16,hf/16 --epochs 3
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_common import (
    alternate,
    machine_note,
    machine_record,
    markdown_table,
    median,
    peak_rss_mib,
    run_child,
    seq2seq_training_flops,
    training_flops,
)
from bench_tasks import TASKS, Task, hf_run, hftrain_data, hftrain_module, prepare

PRECISIONS = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
FLAGS = {"group", "random", "whole", "1x", "2x", "cli"}
DEFAULT_VARIANTS = {"train": "hftrain,hftrain+random,hf,hf+group", "evaluate": "hftrain,hf,hf+2x"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default="mrpc")
    parser.add_argument("--mode", choices=["train", "evaluate"], default="train")
    parser.add_argument("--variants", help=f"comma list; default {DEFAULT_VARIANTS}")
    parser.add_argument("--model", help="model folder both sides start from (default: the task's, see bench_tasks)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, taking turns")
    parser.add_argument("--max-steps", type=int, default=60, help="optimizer steps per run (ignored with --epochs)")
    parser.add_argument("--epochs", type=int, help="train full epochs instead of --max-steps")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=0, help="dataloader worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for both")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    parser.add_argument("--floor", help="a `bench_matmul.py --json` file: report GFLOP/s as a share of its peaks")
    parser.add_argument("--save-model", help="train mode: the first hftrain run saves its trained model here")
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "hftrain-bench"),
        help="models, data splits, tokenization cache and initial weights, reused by later runs",
    )
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_variant(name: str) -> tuple[str, set[str], str]:
    """`hf+group/bf16` -> ("hf", {"group"}, "bf16-mixed")."""
    base, _, precision = name.partition("/")
    side, *flags = base.split("+")
    if side not in ("hftrain", "hf") or not set(flags) <= FLAGS or (precision or "32") not in PRECISIONS:
        raise ValueError(f"unknown variant {name!r}: hftrain or hf, flags {sorted(FLAGS)}, /{list(PRECISIONS)}")
    return side, set(flags), PRECISIONS[precision or "32"]


def eval_batch_size(task: Task, side: str, flags: set[str]) -> int | None:
    """The evaluation batch of a variant; None leaves hftrain's default (twice the training batch)."""
    if "1x" in flags or (side == "hf" and "2x" not in flags):
        return task.batch_size
    return 2 * task.batch_size if "2x" in flags else None


# ---------------------------------------------------------------------------------------------- child side


class Meter:
    """Counts the rows, real and padded tokens and the real lengths of training batches, and times steps.

    Sums stay tensors on the batch's device (no host sync per step); lengths of batches after the first
    step are kept for the FLOPs of the timed steps. Targets (labels other than -100) count for seq2seq.
    """

    def __init__(self, targets: bool) -> None:
        self.targets = targets
        self.steps = self.rows_after_first = 0
        self.first_step_end = self.last_step_end = None
        self.first_step_cpu = self.last_step_cpu = None
        self.real = self.padded = 0
        self.lengths: list = []
        self.target_lengths: list = []

    def batch(self, batch) -> None:
        from hftrain.core.length_split import batch_parts

        for part in batch_parts(batch):
            self.part(part)

    def part(self, batch) -> None:
        mask = batch["attention_mask"]
        self.padded = self.padded + mask.numel()
        self.real = self.real + mask.sum()
        target = (batch["labels"] != -100).sum(-1) if self.targets else None
        if self.targets:
            self.padded = self.padded + batch["labels"].numel()
            self.real = self.real + target.sum()
        if self.steps > 0:
            self.rows_after_first += mask.shape[0]
            self.lengths.append(mask.sum(-1).flatten())  # a multiple-choice row: each choice is a sequence
            if self.targets:
                self.target_lengths.append(target)

    def step_end(self) -> None:
        self.steps += 1
        self.last_step_end, self.last_step_cpu = time.time(), time.process_time()
        self.peak_rss_at_last_step = peak_rss_mib()
        if self.first_step_end is None:
            self.first_step_end, self.first_step_cpu = self.last_step_end, self.last_step_cpu

    def figures(self, model, causal: bool) -> dict:
        import torch

        steady = self.last_step_end - self.first_step_end
        steady_cpu = self.last_step_cpu - self.first_step_cpu
        lengths = torch.cat(self.lengths).cpu().numpy() if self.lengths else []
        if self.targets and self.lengths:
            targets = torch.cat(self.target_lengths).cpu().numpy()
            flops, tokens = seq2seq_training_flops(model, lengths, targets), lengths.sum() + targets.sum()
        else:
            flops, tokens = training_flops(model, lengths, causal), sum(lengths)
        return {
            "steps": self.steps,
            "samples_per_s": self.rows_after_first / steady if steady > 0 else None,
            "samples_per_cpu_s": self.rows_after_first / steady_cpu if steady_cpu > 0 else None,
            "tokens_per_s": float(tokens) / steady if steady > 0 else None,
            "gflops": flops / steady / 1e9 if steady > 0 else None,
            "pad": 1 - float(self.real) / self.padded,
            "first_step_s": self.first_step_end,
            "peak_rss_training_mib": self.peak_rss_at_last_step,
        }


def lightning_trainer(args: argparse.Namespace, precision: str, **settings):
    from lightning.pytorch import Trainer

    return Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **settings,
    )


def hftrain_run(args: argparse.Namespace, task: Task, prepared: dict, flags: set[str]):
    from lightning.pytorch import seed_everything

    seed_everything(args.seed, verbose=False)
    data = hftrain_data(
        task,
        Path(args.workdir),
        prepared["model"],
        cache_dir=str(Path(args.workdir) / "cache"),
        seed=args.seed,
        num_workers=args.workers,
        group_by_length="random" not in flags,
        split_by_length=False if "whole" in flags else None,
        eval_batch_size=eval_batch_size(task, "hftrain", flags),
    )
    return data, hftrain_module(task, data, prepared["model"], torch_compile=args.compile)


def hftrain_cli(args, task: Task, prepared: dict, flags: set[str], precision: str):
    """hftrain as `hftrain fit` runs it: `HFTrainCLI`'s trainer, callbacks and run folder (in a temporary
    folder), validating at the end of training or of each epoch and exporting the best checkpoint."""
    from hftrain.cli import HFTrainCLI

    work = Path(args.workdir)
    os.chdir(tempfile.mkdtemp(prefix="hftrain-bench-run-"))
    data = {
        **task.data_settings(work),
        "batch_size": task.batch_size,
        "eval_batch_size": eval_batch_size(task, "hftrain", flags),
        "cache_dir": str(work / "cache"),
        "seed": args.seed,
        "num_workers": args.workers,
        "group_by_length": "random" not in flags,
        "split_by_length": False if "whole" in flags else None,
    }
    model = {
        "model_name_or_path": prepared["model"],
        "learning_rate": task.learning_rate,
        "warmup_steps": task.warmup,
        "weight_decay": task.weight_decay,
        "torch_compile": args.compile,
        **task.module_args,
    }
    trainer = {
        "accelerator": args.accelerator,
        "devices": 1,
        "precision": precision,
        "max_epochs": args.epochs or -1,
        "max_steps": -1 if args.epochs else args.max_steps,
        "gradient_clip_val": task.max_grad_norm,
        "enable_progress_bar": False,  # as the HF side's `disable_tqdm`
        "enable_model_summary": False,
    }
    config = {
        "seed_everything": args.seed,
        "model": {"class_path": task.module_class, "init_args": model},
        "data": {"class_path": task.data_class, "init_args": data},
        "trainer": trainer,
    }
    return HFTrainCLI(args=config, run=False)


def train_hftrain(args, task: Task, prepared: dict, flags: set[str], precision: str, meter: Meter) -> dict:
    from lightning.pytorch import Callback

    class Timing(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            meter.batch(batch)
            meter.step_end()

    if "cli" in flags:
        cli = hftrain_cli(args, task, prepared, flags, precision)
        data, module, trainer = cli.datamodule, cli.model, cli.trainer
        trainer.callbacks.append(Timing())
    else:
        data, module = hftrain_run(args, task, prepared, flags)
        trainer = lightning_trainer(
            args,
            precision,
            max_epochs=args.epochs or -1,
            max_steps=-1 if args.epochs else args.max_steps,
            gradient_clip_val=task.max_grad_norm,
            limit_val_batches=0,  # evaluate once at the end, as the HF side does
            callbacks=[Timing()],
        )
    trainer.fit(module, datamodule=data)
    train_end = time.time()
    metrics = lightning_trainer(args, precision).validate(module, datamodule=data, verbose=False)[0]
    if args.save_model and not Path(args.save_model).exists():
        module.model.save_pretrained(args.save_model)
        data.tokenizer.save_pretrained(args.save_model)
    return {
        "train_s": train_end - meter.first_step_end,
        "metrics": {key.removeprefix("val/"): value for key, value in metrics.items()},
        "model": module.model,
    }


def hf_arguments(args, task: Task, flags: set[str], precision: str, generate: bool):
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    extra = {"predict_with_generate": True} if generate else {}
    return (Seq2SeqTrainingArguments if generate else TrainingArguments)(
        output_dir=tempfile.mkdtemp(prefix="hf-bench-"),
        per_device_train_batch_size=task.batch_size,
        per_device_eval_batch_size=eval_batch_size(task, "hf", flags),
        learning_rate=task.learning_rate,
        weight_decay=task.weight_decay,
        warmup_steps=task.warmup,
        lr_scheduler_type="linear",
        max_grad_norm=task.max_grad_norm or 0.0,
        num_train_epochs=args.epochs or 1,
        max_steps=-1 if args.epochs else args.max_steps,
        seed=args.seed,
        dataloader_num_workers=args.workers,
        train_sampling_strategy="group_by_length" if "group" in flags else "random",
        use_cpu=args.accelerator == "cpu",
        fp16=precision == "16-mixed",
        bf16=precision == "bf16-mixed",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        torch_compile=args.compile,
        **extra,
    )


def hf_trainer(args, task: Task, task_name: str, prepared: dict, flags: set[str], precision: str, meter=None):
    from transformers import Seq2SeqTrainer, Trainer, TrainerCallback, set_seed

    set_seed(args.seed)
    run = hf_run(task_name, prepared)

    class Timing(TrainerCallback):
        def on_step_end(self, arguments, state, control, **kwargs):
            meter.step_end()

    class MeteredTrainer(Seq2SeqTrainer if run.generate else Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            meter.batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = MeteredTrainer(
        model=run.model,
        args=hf_arguments(args, task, flags, precision, run.generate),
        train_dataset=run.train,
        eval_dataset=run.validation,
        data_collator=run.collator,
        processing_class=run.tokenizer,
        compute_metrics=run.compute_metrics,
        callbacks=[Timing()] if meter else [],
    )
    return run, trainer


def train_hf(args, task: Task, prepared: dict, flags: set[str], precision: str, meter: Meter) -> dict:
    run, trainer = hf_trainer(args, task, args.task, prepared, flags, precision, meter)
    trainer.train()
    train_end = time.time()
    return {"train_s": train_end - meter.first_step_end, "metrics": run.evaluate(trainer), "model": trainer.model}


def clock() -> tuple[float, float]:
    """Wall and CPU time (all the process's threads) now."""
    return time.time(), time.process_time()


def durations(start: tuple[float, float], evaluated: tuple[float, float], predicted: tuple[float, float]) -> dict:
    """Evaluation's and prediction's wall and CPU seconds from three `clock()` readings."""
    return {
        "eval_s": evaluated[0] - start[0],
        "predict_s": predicted[0] - evaluated[0],
        "eval_cpu_s": evaluated[1] - start[1],
        "predict_cpu_s": predicted[1] - evaluated[1],
    }


def evaluate_hftrain(args, task: Task, prepared: dict, flags: set[str], precision: str) -> dict:
    data, module = hftrain_run(args, task, prepared, flags)
    data.setup()  # the tokenized splits are loaded before the clock starts, as the HF side's are
    trainer = lightning_trainer(args, precision)
    start = clock()
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    evaluated = clock()
    batches = trainer.predict(module, datamodule=data)
    predicted = clock()
    rows = [row for batch in batches for row in batch]
    order = data.predict_dataloader().sampler.order  # the longest-first order the rows came in
    predictions = [None] * len(rows)
    for index, row in zip(order.tolist(), rows, strict=True):
        predictions[index] = row[task.prediction]
    return {
        **durations(start, evaluated, predicted),
        "metrics": {key.removeprefix("val/"): value for key, value in metrics.items()},
        "predictions": predictions,
    }


def evaluate_hf(args, task: Task, prepared: dict, flags: set[str], precision: str) -> dict:
    run, trainer = hf_trainer(args, task, args.task, prepared, flags, precision)
    start = clock()
    metrics = run.evaluate(trainer)
    evaluated = clock()
    predictions = run.predict(trainer)
    predicted = clock()
    return {
        **durations(start, evaluated, predicted),
        "metrics": metrics,
        "predictions": predictions,
    }


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    task = TASKS[args.task]
    side, flags, precision = parse_variant(args.child)
    prepared = json.loads(Path(args.prepared).read_text())
    result: dict = {"variant": args.child}
    if args.mode == "train":
        meter = Meter(targets=task.auto_class == "AutoModelForSeq2SeqLM")
        trained = (train_hftrain if side == "hftrain" else train_hf)(args, task, prepared, flags, precision, meter)
        result.update(meter.figures(trained.pop("model"), causal=task.auto_class == "AutoModelForCausalLM"))
        result["first_step_s"] -= args.started
        result.update(trained)
    else:
        result.update((evaluate_hftrain if side == "hftrain" else evaluate_hf)(args, task, prepared, flags, precision))
    result.update(wall_s=time.time() - args.started, peak_rss_mib=peak_rss_mib())
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).write_text(json.dumps(result, default=float))


# ---------------------------------------------------------------------------------------------- parent side


def split_sizes(cache: str) -> dict[str, dict[str, int]]:
    """Rows and real input tokens of each tokenized split (a question's windows all count)."""
    import datasets
    import pyarrow.compute as pc

    sizes = {}
    for split, dataset in datasets.load_from_disk(cache).items():
        column = dataset.with_format("arrow")["input_ids"]
        while hasattr(column.type, "value_type") and hasattr(column.type.value_type, "value_type"):
            column = pc.list_flatten(column)  # QA evaluation rows hold a list of windows
        tokens = int(pc.sum(pc.list_value_length(column)).as_py())
        sizes[split] = {"rows": len(dataset), "tokens": tokens}
    return sizes


def floor_rates(path: str | None) -> dict[tuple[str, int], float]:
    """Peak GFLOP/s per (dtype, threads) of a `bench_matmul.py --json` file."""
    if not path:
        return {}
    peaks: dict[tuple[str, int], float] = {}
    for row in json.loads(Path(path).read_text())["rows"]:
        key = (row["dtype"], row["threads"])
        peaks[key] = max(peaks.get(key, 0.0), row["gflops"])
    return peaks


def fmt(value, spec: str) -> str:
    return "" if value is None or value != value else format(value, spec)


def train_table(runs: list[dict], variants: list[str], task: Task, peaks: dict, threads: int) -> str:
    references = [v for v in variants if parse_variant(v)[0] == "hf"]
    header = ["variant", "runs", "samples/s", "tokens/s", "samples/CPU-s", "wall s", "first step s"]
    header += ["peak RSS MiB (training, run)", *task.metrics, "pad", "GFLOP/s", "share of floor", "load"]
    header += [f"vs {ref} (wall, CPU)" for ref in references]
    rows = []
    for variant in variants:
        dtype = "bf16" if parse_variant(variant)[2] in ("bf16-mixed", "16-mixed") else "fp32"
        gflops = median(runs, variant, "gflops")
        peak = peaks.get((dtype, threads))
        row = [variant, str(sum(r["variant"] == variant for r in runs))]
        row += [fmt(median(runs, variant, k), f) for k, f in [("samples_per_s", ".2f"), ("tokens_per_s", ".0f")]]
        row += [fmt(median(runs, variant, k), f) for k, f in [("samples_per_cpu_s", ".2f"), ("wall_s", ".0f")]]
        rss = f"{median(runs, variant, 'peak_rss_training_mib'):.0f}, {median(runs, variant, 'peak_rss_mib'):.0f}"
        row += [fmt(median(runs, variant, "first_step_s"), ".1f"), rss]
        row += [fmt(median(runs, variant, f"metric:{m}"), ".4f") for m in task.metrics]
        row += [fmt(median(runs, variant, "pad"), ".1%"), fmt(gflops, ".1f")]
        row += [fmt(gflops / peak if peak else None, ".1%"), fmt(median(runs, variant, "load"), ".1f")]
        for ref in references:
            wall = median(runs, variant, "samples_per_s") / median(runs, ref, "samples_per_s")
            cpu = median(runs, variant, "samples_per_cpu_s") / median(runs, ref, "samples_per_cpu_s")
            row.append(f"{wall:.2f}x, {cpu:.2f}x")
        rows.append(row)
    return markdown_table(header, rows)


def evaluate_table(runs: list[dict], variants: list[str], task: Task, sizes: dict) -> str:
    references = [v for v in variants if parse_variant(v)[0] == "hf"]
    header = ["variant", "runs", "eval s", "eval samples/s", "eval tokens/s", "predict s", "predict samples/s"]
    header += ["peak RSS MiB", "wall s", *task.metrics, "same predictions", "load"]
    header += [f"vs {ref} (eval, predict; CPU: eval, predict)" for ref in references]
    rows = []
    for variant in variants:
        eval_s, predict_s = median(runs, variant, "eval_s"), median(runs, variant, "predict_s")
        row = [variant, str(sum(r["variant"] == variant for r in runs)), f"{eval_s:.1f}"]
        row += [f"{sizes['validation']['rows'] / eval_s:.1f}", f"{sizes['validation']['tokens'] / eval_s:.0f}"]
        row += [f"{predict_s:.1f}", f"{sizes['predict']['rows'] / predict_s:.1f}"]
        row += [fmt(median(runs, variant, "peak_rss_mib"), ".0f"), fmt(median(runs, variant, "wall_s"), ".0f")]
        row += [fmt(median(runs, variant, f"metric:{m}"), ".4f") for m in task.metrics]
        row += [fmt(median(runs, variant, "same_predictions"), ".1%"), fmt(median(runs, variant, "load"), ".1f")]
        for ref in references:
            keys = ("eval_s", "predict_s", "eval_cpu_s", "predict_cpu_s")
            ratios = [median(runs, ref, key) / median(runs, variant, key) for key in keys]
            row.append("{:.2f}x, {:.2f}x; {:.2f}x, {:.2f}x".format(*ratios))
        rows.append(row)
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    task = TASKS[args.task]
    variants = [v.strip() for v in (args.variants or DEFAULT_VARIANTS[args.mode]).split(",")]
    for variant in variants:
        side, flags, _ = parse_variant(variant)
        if "cli" in flags and (side != "hftrain" or args.mode != "train"):
            sys.exit(f"{variant}: the cli flag is for hftrain training runs.")
        if args.mode == "evaluate" and args.task == "squad" and side == "hf" and "group" in flags:
            sys.exit(
                "hf+group cannot evaluate QA: the HF Trainer's grouped evaluation batches come out of order, "
                "and run_qa's post-processing matches windows to questions by position."
            )
    work = Path(args.workdir)
    prepared = prepare(args.task, work, args.model, args.seed, str(work / "cache"))
    sizes = split_sizes(prepared["cache"])
    prepared_file = work / args.task / "prepared.json"
    prepared_file.parent.mkdir(parents=True, exist_ok=True)
    prepared_file.write_text(json.dumps(prepared))
    argv = [*argv, "--prepared", str(prepared_file)]
    print(f"{args.task}, {args.mode}: {sizes}; before: {machine_note()}", flush=True)
    runs, reference = [], None
    for repeat, variant in alternate(variants, args.repeats):
        run = run_child(__file__, argv, variant, args.threads)
        run.update({f"metric:{key}": value for key, value in run.pop("metrics").items()})
        if "predictions" in run:
            predictions = run.pop("predictions")
            side, flags, _ = parse_variant(variant)
            if not (side == "hf" and "group" in flags):  # whose predictions come out in the grouped order
                reference = reference or predictions
                same = sum(a == b for a, b in zip(predictions, reference, strict=True))
                run["same_predictions"] = same / len(reference)
        runs.append(run)
        headline = task.metrics[0]
        speed = (
            f"{run['samples_per_s']:.2f} samples/s"
            if args.mode == "train"
            else f"eval {run['eval_s']:.1f} s (CPU {run['eval_cpu_s']:.1f} s)"
        )
        print(
            f"[{repeat + 1}/{args.repeats}] {variant}: {speed}, {headline} {run[f'metric:{headline}']:.4f}, "
            f"wall {run['wall_s']:.0f} s, load {run['load']:.1f}",
            flush=True,
        )
    print(f"after: {machine_note()}")
    if args.mode == "train":
        print(train_table(runs, variants, task, floor_rates(args.floor), args.threads))
    else:
        print(evaluate_table(runs, variants, task, sizes))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {**machine_record(), "task": args.task, "mode": args.mode, "argv": argv, "sizes": sizes, "runs": runs},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
