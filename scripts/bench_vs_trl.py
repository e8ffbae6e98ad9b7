"""hftrain against TRL's SFTTrainer on chat data, side by side: the loss curves and final validation loss (parity),
and the training speed, without packing and with it.

Both sides start from the same small random GPT-2 (`make_lm_model.py`, dropout off) whose tokenizer has a ChatML
template, and read the same conversations of varied lengths (a few turns of counting on; answers of 3 to 150
numbers). They train on the same tokens: TRL's `assistant_only_loss` labels what the template's `{% generation %}`
markers enclose, the assistant's content and its `<|im_end|>`, which is what hftrain labels from the template's
rendering without markers (`data.train_on: assistant`); tests/test_vs_trl.py checks that the token ids and labels
agree conversation by conversation. The settings are the same: AdamW at `--lr` with linear decay after `--warmup`
steps, no weight decay, clipping at 1.0, fp32 on CPU, `--batch-size` conversations a step (packed: `--blocks`
rows). Validation runs after training, over the whole validation file in one batch on the TRL side, so that its
`eval_loss` is, like hftrain's `val/loss`, the mean over every scored token.

Variants: `hftrain` and `trl` (one conversation per row, padded to the batch's longest), and `+packed`: hftrain's
`data.packing` (conversations whole in `--max-length` blocks, positions restarting and attention block-diagonal)
against TRL's `packing=True` with its default strategy, best-fit decreasing, which turns on padding-free batches (a
step's blocks flattened into one row, `position_ids` restarting per conversation; transformers derives the
block-diagonal mask from them on sdpa). A packed step holds `--blocks` blocks on both sides. `hftrain+whole`:
unpacked with `data.split_by_length: false`, padded batches as TRL's; by default, on CPU, hftrain cuts each batch
into parts of similar length, which saves most of the work padding costs.

Each side shuffles with the seed (hftrain's sampler, the HF Trainer's), so two sides differ as two seeds do: the
parity figure is the gap between the sides' mean curves next to the spread between seeds. `--same-order` gives
TRL hftrain's order of rows instead (packed: hftrain's packed rows too, trained padding-free), and the two then
take the same steps up to rounding (tests/test_vs_trl.py).

Speed: real (conversation, not padding) tokens per second and per CPU-second (the fairer figure on a machine
shared with other jobs) over the training steps after the first, each run in a fresh process, the variants taking
turns (A B C D, B C D A, ...), with the machine's load beside each figure.

    python scripts/bench_vs_trl.py                           # parity: seeds 0,1,2, 40 steps, four variants
    python scripts/bench_vs_trl.py --variants hftrain,hftrain+whole,hftrain+packed,trl,trl+packed \
        --max-steps 20 --every 5                            # speed
    python scripts/bench_vs_trl.py --seeds 0 --variants hftrain,trl --same-order --max-steps 30
"""

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_common import alternate, machine_note, machine_record, markdown_table, median, run_child
from make_lm_model import add_chat_template, make_model

VARIANTS = ("hftrain", "trl", "hftrain+packed", "trl+packed")


@dataclass
class Settings:
    """One training run, the same on both sides."""

    model: str
    train_file: str
    validation_file: str
    seed: int = 0
    packed: bool = False
    split_by_length: bool | None = None  # hftrain's `data.split_by_length` (unset: on, on CPU)
    max_steps: int = 60
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 6
    blocks: int = 4  # rows of a packed step
    max_length: int = 512  # the longest conversation (unpacked) and the block size (packed)
    eval_batch_size: int = 64  # at least the validation rows: one batch, so TRL's eval_loss is a token mean


# ---------------------------------------------------------------------------------------------- data and model


def conversation(rng: random.Random, longest_answer: int = 150, most_turns: int = 3) -> dict[str, list[dict[str, str]]]:
    """A chat in OpenAI's format: an optional system prompt, then 1 to `most_turns` turns of a user giving a few
    numbers and the assistant counting on from them for 3 to `longest_answer` numbers (log-uniform), so lengths vary
    widely: from ~45 to ~460 tokens (median ~140) with the benchmark's tokenizer and the defaults."""
    messages = [{"role": "system", "content": "Count on."}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, most_turns)):
        start, given = rng.randrange(0, 90), rng.randint(2, 6)
        answer = round(3 * (longest_answer / 3) ** rng.random())
        messages.append({"role": "user", "content": " ".join(map(str, range(start, start + given)))})
        messages.append(
            {"role": "assistant", "content": " ".join(map(str, range(start + given, start + given + answer)))}
        )
    return {"messages": messages}


def write_conversations(path: Path, rows: int, seed: int, longest_answer: int = 150, most_turns: int = 3) -> str:
    rng = random.Random(seed)
    chats = (conversation(rng, longest_answer, most_turns) for _ in range(rows))
    path.write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    return str(path)


def counting_text(rows: int, seed: int) -> list[str]:
    """Numbers counted on in runs, what the tokenizer learns its pieces from."""
    rng = random.Random(seed)
    return [" ".join(map(str, range(s, s + 40))) for s in (rng.randrange(0, 250) for _ in range(rows))]


def prepare(workdir: Path, train_rows: int, validation_rows: int, size: dict[str, int]) -> dict[str, str]:
    """The chat model and the conversation files, built once in `workdir` and reused."""
    model = workdir / f"model-{size['n_layer']}x{size['n_embd']}"
    if not (model / "config.json").is_file():
        make_model(model, counting_text(2000, seed=0), **size)
        add_chat_template(model, dropout=0.0)
    return {
        "model": str(model),
        "train_file": write_conversations(workdir / "train.jsonl", train_rows, seed=1),
        "validation_file": write_conversations(workdir / "validation.jsonl", validation_rows, seed=2),
    }


# ---------------------------------------------------------------------------------------------- the two sides


def real_tokens(batch, pad_token_id: int) -> int:
    """Conversation tokens in a training batch (in all its parts, where hftrain split it by length): those its
    attention mask keeps or, in packed rows without one, those that are not padding (the padding token, EOS here,
    is never in the conversations)."""
    from hftrain.core.length_split import batch_parts

    total = 0
    for part in batch_parts(batch):
        mask = part.get("attention_mask")
        total += int(mask.sum() if mask is not None else (part["input_ids"] != pad_token_id).sum())
    return total


class Steps:
    """Per optimizer step: the loss, the real tokens, and the wall and CPU time it ended at."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.tokens: list[int] = []
        self.ends: list[tuple[float, float]] = []

    def step(self, loss, tokens: int) -> None:
        self.losses.append(float(loss))
        self.tokens.append(tokens)
        self.ends.append((time.perf_counter(), time.process_time()))

    def figures(self) -> dict:
        """The curve, and the real tokens per second and per CPU-second (the fairer one on a machine shared with
        other jobs) after the first step, whose one-off costs they leave out."""
        wall, cpu = (self.ends[-1][i] - self.ends[0][i] if len(self.ends) > 1 else 0.0 for i in (0, 1))
        timed = sum(self.tokens[1:])
        return {
            "losses": self.losses,
            "tokens": sum(self.tokens),
            "tokens_per_s": timed / wall if wall > 0 else None,
            "tokens_per_cpu_s": timed / cpu if cpu > 0 else None,
        }


def hftrain_run(settings: Settings):
    """hftrain's data and task modules for the run."""
    from lightning.pytorch import seed_everything

    from hftrain.tasks.language_modeling import LanguageModeling, LanguageModelingData

    seed_everything(settings.seed, verbose=False)
    data = LanguageModelingData(
        tokenizer_name=settings.model,
        train_file=settings.train_file,
        validation_file=settings.validation_file,
        messages_column="messages",
        packing=settings.packed,
        max_length=settings.max_length,
        block_size=settings.max_length,
        batch_size=settings.blocks if settings.packed else settings.batch_size,
        eval_batch_size=settings.eval_batch_size,
        seed=settings.seed,
        split_by_length=settings.split_by_length,
        cache_dir=str(Path(settings.train_file).parent / "cache"),
    )
    module = LanguageModeling(
        model_name_or_path=settings.model,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        weight_decay=0.0,
        do_sample=False,
    )
    return data, module


def hftrain_rows(settings: Settings) -> dict:
    """hftrain's tokenized training and validation rows (`rows_of`)."""
    data, _ = hftrain_run(settings)
    data.setup("fit")
    return rows_of(data)


def rows_of(data) -> dict:
    """A set-up data module's training and validation rows: `input_ids`, `labels` and, packed, `position_ids`."""
    rows = {}
    for split in ("train", "validation"):
        dataset = data.datasets[split]
        kept = [c for c in ("input_ids", "labels", "position_ids") if c in dataset.column_names]
        rows[split] = dataset.select_columns(kept)
    return rows


def train_order(settings: Settings) -> list[list[int]]:
    """The token ids of hftrain's training rows (conversations, or packed rows) in the order its sampler draws
    them in the first epoch."""
    from hftrain.core.sampling import EpochShuffleSampler

    train = hftrain_rows(settings)["train"]
    sampler = EpochShuffleSampler(len(train), settings.seed)
    sampler.set_epoch(0)
    return [train[i]["input_ids"] for i in sampler.order().tolist()]


def train_hftrain(settings: Settings) -> dict:
    """Train and validate with hftrain; the curve, speed, validation loss and the tokenized training rows."""
    from lightning.pytorch import Callback, Trainer

    data, module = hftrain_run(settings)
    steps = Steps()

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            steps.step(outputs["loss"].detach(), real_tokens(batch, data.tokenizer.pad_token_id))

    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    Trainer(
        **quiet, max_steps=settings.max_steps, gradient_clip_val=1.0, limit_val_batches=0, callbacks=[Record()]
    ).fit(module, datamodule=data)
    metrics = Trainer(**quiet).validate(module, datamodule=data, verbose=False)[0]
    rows = rows_of(data)
    return {
        **steps.figures(),
        "val_loss": metrics["val/loss"],
        "rows": rows["train"],
        "validation_rows": rows["validation"],
    }


def trl_trainer(settings: Settings, steps: Steps | None = None, order: list[list[int]] | None = None, packed_rows=None):
    """TRL's SFTTrainer for the run, its data prepared: its own tokenization (and packing) of the conversations,
    or `packed_rows` (hftrain's packed training rows: `input_ids`, `labels`, `position_ids`) as they are, trained
    padding-free. `order` (the token ids of rows, `train_order`'s) replaces its random sampler: it draws its own
    rows that hold those ids. `steps` records each training step."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    pending = {}

    class Recording(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            if order is None:
                return super()._get_train_sampler(train_dataset)
            rows = {tuple(ids): i for i, ids in enumerate(self.train_dataset["input_ids"])}
            missing = sum(tuple(ids) not in rows for ids in order)
            if missing:
                raise ValueError(f"{missing} of hftrain's {len(order)} training rows are not among TRL's")
            return [rows[tuple(ids)] for ids in order]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                pending.update(loss=loss.detach(), tokens=real_tokens(inputs, self.processing_class.pad_token_id))
            return loss

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.step(pending["loss"], pending["tokens"])

    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        seed=settings.seed,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.blocks if settings.packed else settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        assistant_only_loss=packed_rows is None,  # packed rows come labelled
        # packed rows given: trained as they are, padding-free (TRL's packed batches); it refuses a max_length then
        max_length=None if packed_rows is not None else settings.max_length,
        packing=settings.packed and packed_rows is None,
        padding_free=packed_rows is not None,
        eval_packing=False,  # one batch: eval_loss is the mean over all scored tokens, as hftrain's val/loss
        bf16=False,  # SFTConfig's default is bf16; hftrain's is fp32
        activation_checkpointing=False,  # SFTConfig turns it on by default, hftrain not (the same steps, slower)
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=False,
    )
    rows = {
        split: datasets.load_dataset("json", data_files=file, split="train")
        for split, file in [("train", settings.train_file), ("validation", settings.validation_file)]
    }
    if packed_rows is not None:
        rows = {split: as_trl_packed(packed) for split, packed in packed_rows.items()}
    return Recording(
        model=AutoModelForCausalLM.from_pretrained(settings.model),
        args=config,
        train_dataset=rows["train"],
        eval_dataset=rows["validation"],
        processing_class=AutoTokenizer.from_pretrained(settings.model),
        callbacks=[StepEnd()] if steps else [],
    )


def as_trl_packed(rows):
    """hftrain's packed rows as TRL's packing writes them: each row's sequence lengths instead of its positions."""
    import datasets

    lengths = [sequence_lengths(positions) for positions in rows["position_ids"]]
    return datasets.Dataset.from_dict(
        {"input_ids": rows["input_ids"], "labels": rows["labels"], "seq_lengths": lengths}
    )


def sequence_lengths(position_ids: list[int]) -> list[int]:
    """The lengths of a packed row's sequences, from where its positions restart."""
    starts = [i for i, position in enumerate(position_ids) if position == 0] + [len(position_ids)]
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]


def train_trl(settings: Settings, order: list[list[int]] | None = None, packed_rows=None) -> dict:
    """Train and validate with TRL's SFTTrainer (`trl_trainer`); the curve, speed, validation loss and its training
    rows."""
    steps = Steps()
    trainer = trl_trainer(settings, steps, order, packed_rows)
    trainer.train()
    metrics = trainer.evaluate()
    return {**steps.figures(), "val_loss": metrics["eval_loss"], "rows": trainer.train_dataset}


def same_tokens(hftrain_rows, trl_rows) -> float:
    """The share of training conversations both sides tokenized and labelled identically (unpacked rows)."""
    same = sum(
        a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
        for a, b in zip(hftrain_rows, trl_rows, strict=True)
    )
    return same / len(hftrain_rows)


# ---------------------------------------------------------------------------------------------- the runs


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    side, *flags = args.child.split("+")
    settings = Settings(**json.loads(Path(args.prepared).read_text()), packed="packed" in flags)
    if "whole" in flags:
        settings.split_by_length = False
    if side == "hftrain":
        result = train_hftrain(settings)
    else:
        same = {"order": train_order(settings)} if args.same_order else {}
        if args.same_order and settings.packed:
            same["packed_rows"] = hftrain_rows(settings)
        result = train_trl(settings, **same)
    for key in ("rows", "validation_rows"):
        result.pop(key, None)
    Path(args.result).write_text(json.dumps({"variant": args.child, "seed": settings.seed, **result}))


def curve_table(runs: list[dict], variants: list[str], every: int) -> str:
    """Every `every`-th step's loss: per variant the mean over seeds ± their standard deviation."""
    steps = min(len(r["losses"]) for r in runs)
    header = ["step", *variants]
    rows = []
    for step in [*range(0, steps, every), steps - 1][: steps // every + 1]:
        row = [str(step + 1)]
        for variant in variants:
            values = [r["losses"][step] for r in runs if r["variant"] == variant]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            row.append(f"{statistics.mean(values):.3f}{spread}")
        rows.append(row)
    return markdown_table(header, rows)


def summary_table(runs: list[dict], variants: list[str]) -> str:
    header = ["variant", "runs", "final val loss (per seed)", "mean", "seed sd", "tokens/s", "tokens/CPU-s", "load"]
    rows = []
    for variant in variants:
        mine = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        losses = [r["val_loss"] for r in mine]
        spread = f"{statistics.stdev(losses):.4f}" if len(losses) > 1 else ""
        rows.append(
            [
                variant,
                str(len(mine)),
                ", ".join(f"{loss:.4f}" for loss in losses),
                f"{statistics.mean(losses):.4f}",
                spread,
                f"{median(runs, variant, 'tokens_per_s'):.0f}",
                f"{median(runs, variant, 'tokens_per_cpu_s'):.0f}",
                f"{median(runs, variant, 'load'):.1f}",
            ]
        )
    return markdown_table(header, rows)


def gaps(runs: list[dict], pairs: list[tuple[str, str]]) -> list[str]:
    """Per pair of variants: the mean gap between their mean curves over the steps, beside the steps' mean spread
    between seeds; the gap between their mean final validation losses with its standard error (from the spread
    between seeds); their speed ratio."""
    lines = []
    for a, b in pairs:
        mine = {v: [r for r in runs if r["variant"] == v] for v in (a, b)}
        if not all(mine.values()):
            continue
        steps = min(len(r["losses"]) for v in (a, b) for r in mine[v])
        at = {v: [[r["losses"][s] for r in mine[v]] for s in range(steps)] for v in (a, b)}
        pairs_at = zip(at[a], at[b], strict=True)
        curve_gap = statistics.mean(abs(statistics.mean(x) - statistics.mean(y)) for x, y in pairs_at)
        spread = statistics.mean(statistics.stdev(x) for v in (a, b) for x in at[v]) if len(mine[a]) > 1 else 0
        val = {v: [r["val_loss"] for r in mine[v]] for v in (a, b)}
        error = sum(statistics.variance(val[v]) / len(val[v]) for v in (a, b)) ** 0.5 if len(mine[a]) > 1 else 0
        gap = statistics.mean(val[a]) - statistics.mean(val[b])
        speed = [median(runs, a, key) / median(runs, b, key) for key in ("tokens_per_s", "tokens_per_cpu_s")]
        lines.append(
            f"{a} vs {b}: curves {curve_gap:.3f} apart on average (seed sd per step {spread:.3f}); final val loss "
            f"{statistics.mean(val[a]):.4f} vs {statistics.mean(val[b]):.4f}, gap {gap:+.4f} ± {error:.4f} (standard "
            f"error); tokens/s {speed[0]:.2f}x, tokens/CPU-s {speed[1]:.2f}x"
        )
    return lines


def report(runs: list[dict], variants: list[str], every: int) -> str:
    """The curve table, the summary table and the gaps between the pairs of variants compared."""
    pairs = [("hftrain", "trl"), ("hftrain+packed", "trl+packed"), ("hftrain+packed", "hftrain")]
    pairs += [("hftrain+packed", "hftrain+whole"), ("trl+packed", "trl")]
    tables = [curve_table(runs, variants, every), summary_table(runs, variants), "\n".join(gaps(runs, pairs))]
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2", help="one run of each variant per seed, taking turns")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per unpacked step")
    parser.add_argument("--blocks", type=int, default=4, help="blocks per packed step")
    parser.add_argument("--max-length", type=int, default=512, help="longest conversation; the packed block size")
    parser.add_argument("--lr", type=float, default=1e-3, help="a from-scratch model takes a large step")
    parser.add_argument("--warmup", type=int, default=6, help="warmup steps")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--validation-rows", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--same-order", action="store_true", help="TRL trains on hftrain's order of rows")
    parser.add_argument("--every", type=int, default=10, help="the curve table's step interval")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "hftrain-bench-trl"))
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--report", help="print the tables of a --json file again, and run nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    if args.report:
        runs = json.loads(Path(args.report).read_text())["runs"]
        print(report(runs, list(dict.fromkeys(r["variant"] for r in runs)), args.every))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = {"vocab_size": 2048, "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": 4, "n_positions": 512}
    prepared = prepare(work, args.train_rows, args.validation_rows, size)
    variants = [v.strip() for v in args.variants.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{len(variants)} variants x seeds {seeds}, {args.max_steps} steps; before: {machine_note()}", flush=True)
    runs = []
    for repeat, variant in alternate(variants, len(seeds)):
        settings = Settings(
            **prepared,
            seed=seeds[repeat],
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            blocks=args.blocks,
            learning_rate=args.lr,
            warmup_steps=args.warmup,
            max_length=args.max_length,
            eval_batch_size=args.validation_rows,
        )
        settings_file = work / f"settings-{seeds[repeat]}.json"
        chosen_by_variant = ("packed", "split_by_length")
        settings_file.write_text(json.dumps({k: v for k, v in asdict(settings).items() if k not in chosen_by_variant}))
        extra = ["--same-order"] if args.same_order else []
        run = run_child(
            __file__, [*extra, "--threads", str(args.threads), "--prepared", str(settings_file)], variant, args.threads
        )
        runs.append(run)
        print(
            f"seed {run['seed']} {variant}: final train loss {run['losses'][-1]:.4f}, val loss {run['val_loss']:.4f}, "
            f"{run['tokens_per_s']:.0f} tokens/s, load {run['load']:.1f}",
            flush=True,
        )
    print(f"after: {machine_note()}\n")
    print(report(runs, variants, args.every))
    if args.json:
        Path(args.json).write_text(json.dumps({**machine_record(), "argv": argv, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
