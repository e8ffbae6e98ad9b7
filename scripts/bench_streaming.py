"""Streaming's figures (issue 30): resume time against the HF Trainer, training throughput against the same data
pre-tokenized, and memory as the corpus grows.

The corpora are JSON-lines shards written to a temporary folder (`corpus`), never inside the repository: rows
are WikiText-2's sentences (its valid and test text split after each " . "), drawn cycle after cycle in a new
seeded order, `{"id": n, "text": ...}`, 100,000 rows (~15 MB) a shard. Subsets are folders of links to the
shards: `resume` (the first 20 shards, 2,000,000 rows), `100mb` (the first shards that reach 100 MB) and `big`
(all of them, `--gb`). `wikitext2` holds WikiText-2's paragraphs themselves (valid + test, 5,352 rows) in 4
shards, plus `wikitext2.jsonl`, the same rows in one file for the map-style side.

`resume` measures, per position (a share of the `resume` stream), the time from process start to the end of
the first optimizer step of a run resumed from a checkpoint written at that position. Both sides train the
documented small GPT-2 (`configs/lm/wikitext2_local.yaml`: 4 layers, width 256, 8k vocabulary) on 128-token
blocks packed across documents, with the same batch size, shuffle buffer and dataloader workers.
- hf: the HF Trainer with `run_clm`'s streaming pipeline (`load_dataset(..., streaming=True)`, a seeded shuffle
  buffer, tokenizing and `group_texts` maps, each document ended with EOS as hftrain ends it). On resume it
  skips `global_step` batches: accelerate's `skip_first_batches` reads, tokenizes, packs and collates each one
  (transformers' `Trainer._run_epoch` → `get_resumed_dataloader`). Its checkpoint at a position is a real
  checkpoint of one step whose `trainer_state.json` global step (and scheduler step) is set to the position:
  the step count is all that its resume reads of the position, so it skips exactly as after a run to there.
  Its side is capped at 15 minutes (reported "> 15 min").
- hftrain: `data.streaming: true`. Its checkpoints at the positions come from one run over the stream with
  cheap steps (the loss is 0 x the sum of the weights: no forward pass, so the data loader, not the model, sets
  the pace) that saves a checkpoint at each position: the stream's state in them is the real one.
Weights at the position differ from a run that trained all the way there; a resume's time does not depend on
their values. Each resume reports wall seconds and the CPU seconds of its process and workers (/proc): on a
shared machine the wall time is mostly the share of the CPU the others left. A run cut off at the cap notes the
CPU seconds it had used just before.

`throughput` trains `--max-steps` steps and reports training tokens/s from the end of the first step to the end
of the last (bench_vs_hf_trainer.py's `Meter`), tokens per CPU-second of the process and its workers over the
same steps, and the peak memory of the process tree (main process and dataloader workers, summed, sampled every
0.2 s) and of the main process. Variants are `<side>@<corpus>`: `stream` (hftrain, `data.streaming: true`,
tokenizing in the workers) or `map` (hftrain map-style on the same rows tokenized ahead into its cache, not
timed), on `wikitext2`, `100mb` or `big`. `map@big` pre-tokenizes only the first two shards of `big` (200,000
rows, more than a run reads): tokenizing 5 GB ahead takes about two hours of a core here; its rows are the same
sentences as every other shard's.

    python scripts/bench_streaming.py corpus --gb 5.2
    python scripts/bench_streaming.py resume --variants hftrain,hf --positions 0.1,0.5,0.9
    python scripts/bench_streaming.py throughput --model /tmp/stream-bench/models/gpt2-small --batch-size 16 \
        --max-steps 40 --variants map@wikitext2,stream@wikitext2,stream@100mb,stream@big,map@big
    python scripts/bench_streaming.py corpus --delete
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from itertools import chain
from pathlib import Path

from bench_common import alternate, machine_note, machine_record, markdown_table, median, peak_rss_mib, run_child
from bench_tasks import DATA, gpt2_wikitext2

WORK = Path(tempfile.gettempdir()) / "stream-bench"
ROWS_PER_SHARD = 100_000
RESUME_SHARDS = 20  # 2,000,000 rows
BLOCK_SIZE = 128
HF_CAP_S = 15 * 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workdir", type=Path, default=WORK, help="corpora, model, checkpoints and caches")
    common.add_argument(
        "--model", help="a folder from scripts/make_lm_model.py (default: configs/lm/wikitext2_local.yaml's, made here)"
    )
    common.add_argument("--batch-size", type=int, default=64, help="blocks of 128 tokens per step, both sides")
    common.add_argument("--workers", type=int, default=1, help="dataloader worker processes, both sides")
    common.add_argument("--shuffle-buffer", type=int, default=1000, help="rows in the shuffle buffer, both sides")
    common.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for both")
    common.add_argument("--repeats", type=int, default=1, help="runs of each variant, taking turns")
    common.add_argument("--seed", type=int, default=42)
    common.add_argument("--json", help="also write every run's figures to this file")
    common.add_argument("--child", help=argparse.SUPPRESS)
    common.add_argument("--started", type=float, help=argparse.SUPPRESS)
    common.add_argument("--result", help=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    corpus = commands.add_parser("corpus", parents=[common], help="write (or --delete) the JSON-lines corpora")
    corpus.add_argument("--gb", type=float, default=5.2, help="size of the `big` corpus in GB (1e9 bytes)")
    corpus.add_argument("--delete", action="store_true", help="delete the corpora and checkpoints")
    resume = commands.add_parser("resume", parents=[common], help="time to the first resumed step")
    resume.add_argument("--positions", default="0.1,0.5,0.9", help="shares of the 2M-row stream to resume at")
    resume.add_argument("--variants", default="hftrain,hf")
    resume.add_argument("--cap", type=float, default=HF_CAP_S, help="seconds after which a resume is cut off")
    resume.add_argument("--position", type=float, help=argparse.SUPPRESS)
    throughput = commands.add_parser("throughput", parents=[common], help="tokens/s and peak memory")
    throughput.add_argument("--variants", default="map@wikitext2,stream@wikitext2")
    throughput.add_argument("--max-steps", type=int, default=60)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- corpora


def wikitext_paragraphs() -> list[str]:
    return [
        line.strip()
        for name in ("valid.txt", "test.txt")
        for line in (DATA / "wikitext2" / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def wikitext_sentences() -> list[str]:
    """WikiText-2's paragraphs cut after each " . " (its tokenized full stops); headings stay whole."""
    return [s for p in wikitext_paragraphs() for s in re.split(r"(?<= \.) ", p) if s.strip()]


def write_rows(path: Path, texts: list[str], first_id: int) -> None:
    """JSON lines `{"id": n, "text": ...}` with ids from `first_id`; each text is JSON-escaped by the caller."""
    lines = (f'{{"id": {first_id + i}, "text": {text}}}\n' for i, text in enumerate(texts))
    path.write_text("".join(lines), encoding="utf-8")


def link_subset(folder: Path, shards: list[Path]) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for shard in shards:
        (folder / shard.name).symlink_to(shard)
    return {
        "glob": str(folder / "*.jsonl"),
        "shards": len(shards),
        "rows": len(shards) * ROWS_PER_SHARD,
        "bytes": sum(s.stat().st_size for s in shards),
    }


def write_corpus(work: Path, gb: float, seed: int) -> dict:
    """Write the shards and the subsets' folders of links; return and save the manifest."""
    import numpy as np

    corpus = work / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    shards_dir = corpus / "shards"
    shards_dir.mkdir(parents=True)
    sentences = [json.dumps(s) for s in wikitext_sentences()]
    rng = np.random.default_rng(seed)
    order: list[int] = []
    shards: list[Path] = []
    written = 0
    while written < gb * 1e9 or len(shards) < RESUME_SHARDS:
        while len(order) < ROWS_PER_SHARD:
            order.extend(rng.permutation(len(sentences)).tolist())
        rows, order = order[:ROWS_PER_SHARD], order[ROWS_PER_SHARD:]
        shard = shards_dir / f"shard-{len(shards):05d}.jsonl"
        write_rows(shard, [sentences[i] for i in rows], len(shards) * ROWS_PER_SHARD)
        written += shard.stat().st_size
        shards.append(shard)
    small = next(n for n in range(1, len(shards) + 1) if sum(s.stat().st_size for s in shards[:n]) >= 100e6)
    manifest = {
        "resume": link_subset(corpus / "resume", shards[:RESUME_SHARDS]),
        "100mb": link_subset(corpus / "100mb", shards[:small]),
        "big": link_subset(corpus / "big", shards),
        "big-prefix": link_subset(corpus / "big-prefix", shards[:2]),
    }
    paragraphs = [json.dumps(p) for p in wikitext_paragraphs()]
    folder = corpus / "wikitext2"
    folder.mkdir()
    quarter = -(-len(paragraphs) // 4)
    for i in range(4):
        write_rows(folder / f"shard-{i}.jsonl", paragraphs[i * quarter : (i + 1) * quarter], i * quarter)
    write_rows(corpus / "wikitext2.jsonl", paragraphs, 0)
    manifest["wikitext2"] = {"glob": str(folder / "*.jsonl"), "file": str(corpus / "wikitext2.jsonl")}
    manifest["wikitext2"].update(shards=4, rows=len(paragraphs), bytes=(corpus / "wikitext2.jsonl").stat().st_size)
    manifest["big-prefix"]["file"] = str(corpus / "big-prefix.jsonl")
    with open(corpus / "big-prefix.jsonl", "wb") as joined:
        for shard in shards[:2]:
            joined.write(shard.read_bytes())
    (corpus / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def model_folder(args: argparse.Namespace) -> str:
    """`--model`, else configs/lm/wikitext2_local.yaml's small GPT-2, made by its documented command."""
    return args.model or gpt2_wikitext2(args.workdir)


def manifest(work: Path) -> dict:
    path = work / "corpus" / "manifest.json"
    if not path.is_file():
        sys.exit(f"No corpus in {work}: run `python scripts/bench_streaming.py corpus` first.")
    return json.loads(path.read_text())


def corpus_command(args: argparse.Namespace) -> None:
    if args.delete:
        for folder in ("corpus", "checkpoints", "cache"):
            shutil.rmtree(args.workdir / folder, ignore_errors=True)
        print(f"Deleted the corpora, checkpoints and caches under {args.workdir}.")
        return
    start = time.time()
    written = write_corpus(args.workdir, args.gb, args.seed)
    for name, subset in written.items():
        print(f"{name}: {subset['rows']:,} rows in {subset['shards']} shards, {subset['bytes'] / 1e9:.2f} GB")
    print(f"written in {time.time() - start:.0f} s to {args.workdir / 'corpus'}")


# ---------------------------------------------------------------------------------------------- resume: HF side


def hf_stream(files: list[str], tokenizer, args: argparse.Namespace):
    """`run_clm.py`'s streaming pipeline: a seeded shuffle buffer over the rows, then tokenize and `group_texts`
    maps (each document ended with EOS, as hftrain ends it; run_clm's `group_texts` drops the last short block)."""
    import datasets

    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return {"input_ids": [ids + [eos] for ids in tokenizer(batch["text"], verbose=False)["input_ids"]]}

    def group_texts(batch: dict[str, list]) -> dict[str, list]:
        joined = list(chain.from_iterable(batch["input_ids"]))
        blocks = [joined[i : i + BLOCK_SIZE] for i in range(0, len(joined) // BLOCK_SIZE * BLOCK_SIZE, BLOCK_SIZE)]
        return {"input_ids": blocks, "attention_mask": [[1] * BLOCK_SIZE] * len(blocks), "labels": blocks}

    stream = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    stream = stream.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer)
    return stream.map(tokenize, batched=True, remove_columns=["id", "text"]).map(group_texts, batched=True)


def hf_trainer(args: argparse.Namespace, model_dir: str, output_dir: Path, total_steps: int, callbacks: list):
    import glob

    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.loss_type = "ForCausalLM"  # see bench_tasks.hf_language_modeling
    files = sorted(glob.glob(manifest(args.workdir)["resume"]["glob"]))
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        warmup_steps=0.05,
        lr_scheduler_type="linear",
        max_steps=total_steps,
        seed=args.seed,
        dataloader_num_workers=args.workers,
        use_cpu=True,
        save_strategy="steps",
        save_steps=10**9,  # saves only when a callback asks
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    return Trainer(
        model=model,
        args=arguments,
        train_dataset=hf_stream(files, tokenizer, args),
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def first_step_callback(marks: dict):
    """A TrainerCallback that notes when training begins and ends the run after its first optimizer step."""
    from transformers import TrainerCallback

    class FirstStep(TrainerCallback):
        def on_train_begin(self, arguments, state, control, **kwargs):
            marks["train_begin"] = time.time()
            marks["resumed_at"] = state.global_step

        def on_step_end(self, arguments, state, control, **kwargs):
            marks.setdefault("first_step", time.time())
            marks.setdefault("first_step_cpu", tree_cpu_s())
            control.should_training_stop = True
            control.should_save = marks.get("save", False)

    return FirstStep()


def hf_checkpoint(args: argparse.Namespace, model_dir: str, total_steps: int, step: int) -> Path:
    """A checkpoint that the HF Trainer resumes as one written at `step`: one real step's checkpoint (model,
    optimizer, scheduler, RNG states) with its global step, and its scheduler's, set to `step`."""
    import torch

    root = args.workdir / "checkpoints" / "hf"
    target = root / f"checkpoint-{step}"
    if (target / "trainer_state.json").is_file():
        return target
    base = root / "checkpoint-1"
    if not base.is_dir():
        hf_trainer(args, model_dir, root, total_steps, [first_step_callback({"save": True})]).train()
    shutil.copytree(base, target)
    state = json.loads((target / "trainer_state.json").read_text())
    state["global_step"] = step
    (target / "trainer_state.json").write_text(json.dumps(state, indent=2))
    scheduler = torch.load(target / "scheduler.pt", weights_only=False)
    scheduler["last_epoch"] = scheduler["_step_count"] = step
    torch.save(scheduler, target / "scheduler.pt")
    return target


def hf_resume(args: argparse.Namespace, plan: dict) -> dict:
    marks: dict = {}
    checkpoint = plan["hf"][str(args.position)]
    trainer = hf_trainer(
        args,
        plan["model"],
        Path(tempfile.mkdtemp(prefix="hf-resume-")),
        plan["total_steps"],
        [first_step_callback(marks)],
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    return marks


# ---------------------------------------------------------------------------------------------- resume: hftrain side


def hftrain_fit_parts(args: argparse.Namespace, plan: dict, callbacks: list):
    """hftrain's data module streaming the `resume` corpus, its LM module and a Lightning trainer of the stream's
    length in steps (no validation, logging or checkpoints of its own)."""
    from bench_vs_hf_trainer import lightning_trainer
    from lightning.pytorch import seed_everything

    from hftrain.tasks.language_modeling import LanguageModeling

    seed_everything(args.seed, verbose=False)
    data = hftrain_lm_data(args, "stream", "resume")
    module = LanguageModeling(model_name_or_path=plan["model"], learning_rate=1e-3, warmup_steps=0.05)
    trainer = lightning_trainer(
        argparse.Namespace(accelerator="cpu"),
        "32-true",
        max_steps=plan["total_steps"],
        limit_val_batches=0,
        callbacks=callbacks,
    )
    return data, module, trainer


def hftrain_positions(args: argparse.Namespace, plan: dict) -> dict:
    """One run over the stream with cheap steps that saves a checkpoint at each position, as a checkpoint
    callback saves one (`trainer.save_checkpoint` at the end of the step): the stream's state in each is the
    real one. The step's loss is 0 x the sum of the weights, so no forward pass sets the pace."""
    from lightning.pytorch import Callback

    folder = args.workdir / "checkpoints" / "hftrain"
    targets = {step: folder / f"step-{step}.ckpt" for step in plan["steps"].values()}
    started = time.time()

    class SaveAtPositions(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step in targets:
                trainer.save_checkpoint(targets[trainer.global_step])
                print(f"{trainer.global_step} steps in {time.time() - started:.0f} s", flush=True)
            trainer.should_stop = trainer.global_step >= max(targets)

    data, module, trainer = hftrain_fit_parts(args, plan, [SaveAtPositions()])
    module.training_step = lambda batch, batch_idx: sum(p.sum() for p in module.parameters()) * 0.0
    trainer.fit(module, datamodule=data)
    return {"steps_per_s": max(targets) / (time.time() - started)}


def hftrain_resume(args: argparse.Namespace, plan: dict) -> dict:
    """`trainer.fit(ckpt_path=...)` from the checkpoint at the position, stopped after its first step."""
    from lightning.pytorch import Callback

    marks: dict = {}

    class FirstStep(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            marks["train_begin"], marks["resumed_at"] = time.time(), trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            marks.setdefault("first_step", time.time())
            marks.setdefault("first_step_cpu", tree_cpu_s())
            trainer.should_stop = True

    data, module, trainer = hftrain_fit_parts(args, plan, [FirstStep()])
    trainer.fit(module, datamodule=data, ckpt_path=plan["hftrain"][str(args.position)])
    return marks


# ---------------------------------------------------------------------------------------------- resume: harness


def resume_plan(args: argparse.Namespace, argv: list[str], positions: list[float], variants: list[str]) -> dict:
    """The model, the stream's length in steps, and a checkpoint per side and position (made here, not timed;
    hftrain's in a child process, `hftrain_positions`). Saved as `checkpoints/plan.json` for the runs."""
    from transformers import AutoTokenizer

    model_dir = model_folder(args)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sentences = wikitext_sentences()
    # every row is one of these sentences, drawn cycle after cycle: the stream's tokens are rows x their mean
    tokens = sum(len(ids) + 1 for ids in tokenizer(sentences, verbose=False)["input_ids"]) / len(sentences)
    rows = manifest(args.workdir)["resume"]["rows"]
    total_steps = int(rows * tokens / BLOCK_SIZE / args.batch_size)
    steps = {str(p): round(p * total_steps) for p in positions}
    plan = {"model": model_dir, "total_steps": total_steps, "rows": rows, "tokens_per_row": tokens, "steps": steps}
    plan_file = args.workdir / "checkpoints" / "plan.json"
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    if "hf" in variants:
        plan["hf"] = {p: str(hf_checkpoint(args, model_dir, total_steps, step)) for p, step in steps.items()}
    if "hftrain" in variants:
        folder = args.workdir / "checkpoints" / "hftrain"
        plan["hftrain"] = {p: str(folder / f"step-{step}.ckpt") for p, step in steps.items()}
        plan_file.write_text(json.dumps(plan, indent=2))
        if not all(Path(path).is_file() for path in plan["hftrain"].values()):
            setup = run_child(__file__, argv, "hftrain-positions", args.threads)
            plan["hftrain_setup"] = setup
            print(
                f"hftrain's checkpoints: one pass with cheap steps, {setup['steps_per_s']:.1f} steps/s, "
                f"load {setup['load']:.2f}",
                flush=True,
            )
    plan_file.write_text(json.dumps(plan, indent=2))
    return plan


def resume_command(args: argparse.Namespace, argv: list[str]) -> None:
    positions = [float(p) for p in args.positions.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    print(f"resume: preparing checkpoints; {machine_note()}", flush=True)
    plan = resume_plan(args, argv, positions, variants)
    print(
        f"stream: {plan['rows']:,} rows, ~{plan['total_steps']:,} steps of {args.batch_size} x {BLOCK_SIZE} tokens; "
        f"positions {plan['steps']}; {machine_note()}",
        flush=True,
    )
    runs = []
    for position in positions:
        for repeat, variant in alternate(variants, args.repeats):
            run = run_child(__file__, [*argv, "--position", str(position)], variant, args.threads, timeout=args.cap)
            run.update(position=position, step=plan["steps"][str(position)])
            runs.append(run)
            print(
                f"[{repeat + 1}/{args.repeats}] {position:.0%} {variant}: {describe_resume(run)}, "
                f"load {run['load']:.2f}",
                flush=True,
            )
    print(f"after: {machine_note()}")
    print(resume_table(runs, positions, variants, args.cap))
    write_json(args, argv, runs, plan=plan)


def describe_resume(run: dict) -> str:
    if run.get("timed_out"):
        return f"> {run['timed_out'] / 60:.0f} min (cut off; {run.get('cpu_s_at_cap', float('nan')):.0f} CPU-s by then)"
    return (
        f"first resumed step {run['first_step_s']:.1f} s after start ({run.get('first_step_cpu_s', float('nan')):.1f} "
        f"CPU-s; training began at {run['train_begin_s']:.1f} s)"
    )


def resume_table(runs: list[dict], positions: list[float], variants: list[str], cap: float) -> str:
    """Per position, each side's median time from process start to the end of its first resumed step, in wall
    seconds and in CPU seconds of the process and its workers."""
    header = ["position", "step", *[f"{v}: start to first resumed step (CPU s)" for v in variants], "load (5 min)"]
    rows = []
    for position in positions:
        mine = [r for r in runs if r["position"] == position]
        cells = []
        for variant in variants:
            theirs = [r for r in mine if r["variant"] == variant]
            if any(r.get("timed_out") for r in theirs):
                cells.append(f"> {cap / 60:.0f} min (> {median(theirs, variant, 'cpu_s_at_cap'):.0f})")
            else:
                wall, cpu = median(theirs, variant, "first_step_s"), median(theirs, variant, "first_step_cpu_s")
                cells.append(f"{wall:.1f} s ({cpu:.1f})")
        load = " / ".join(f"{r['load']:.1f}" for r in mine)
        rows.append([f"{position:.0%}", f"{mine[0]['step']:,}", *cells, load])
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------------------------- throughput


def process_tree() -> list[int]:
    """This process and its descendants (the dataloader workers), from /proc."""
    found, pending = [], [os.getpid()]
    while pending:
        pid = pending.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                pending += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process, its live descendants and its waited-for ones: on
    a machine shared with other jobs, the work a run did, which its wall time mixes with its wait for a core."""
    ticks = 0
    for pid in process_tree():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(v) for v in fields[11 : 15 if pid == os.getpid() else 13])  # utime stime (cutime cstime)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss() -> int:
    """Resident bytes of this process and its descendants, summed."""
    total = 0
    for pid in process_tree():
        try:
            total += next(
                int(line.split()[1]) * 1024
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        except (OSError, StopIteration):
            pass
    return total


class TreeMemory:
    """The peak of `tree_rss` (the process and its dataloader workers), sampled every `interval` seconds in a
    thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss())


def throughput_run(args: argparse.Namespace, variant: str) -> dict:
    import torch
    from bench_vs_hf_trainer import Meter, lightning_trainer
    from lightning.pytorch import Callback, seed_everything

    from hftrain.tasks.language_modeling import LanguageModeling

    side, _, corpus = variant.partition("@")
    seed_everything(args.seed, verbose=False)
    torch.set_num_threads(args.threads)
    meter = Meter(targets=False)

    cpu: list[float] = []

    class Timing(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            meter.batch(batch)
            meter.step_end()
            if trainer.global_step in (1, args.max_steps):
                cpu.append(tree_cpu_s())

    with TreeMemory() as memory:
        data = hftrain_lm_data(args, side, corpus)
        module = LanguageModeling(model_name_or_path=model_folder(args), learning_rate=1e-3, warmup_steps=0.05)
        trainer = lightning_trainer(
            argparse.Namespace(accelerator="cpu"),
            "32-true",
            max_steps=args.max_steps,
            limit_val_batches=0,
            callbacks=[Timing()],
        )
        trainer.fit(module, datamodule=data)
    figures = meter.figures(module.model, causal=True)
    tokens = figures["tokens_per_s"] * (meter.last_step_end - meter.first_step_end)
    return {**figures, "tokens_per_cpu_s": tokens / (cpu[-1] - cpu[0]), "peak_tree_mib": memory.peak / 2**20}


def hftrain_lm_data(args: argparse.Namespace, side: str, corpus: str, **settings):
    """hftrain's LM data module on a corpus: its shards streamed, or its rows (one file) from the cache."""
    from hftrain.tasks.language_modeling import LanguageModelingData

    subset = manifest(args.workdir)["big-prefix" if (side, corpus) == ("map", "big") else corpus]
    common = {
        "tokenizer_name": model_folder(args),
        "block_size": BLOCK_SIZE,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "seed": args.seed,
        "validation_split_percentage": 0,
        "cache_dir": str(args.workdir / "cache"),
    }
    if side == "map":
        return LanguageModelingData(train_file=subset["file"], **common, **settings)
    return LanguageModelingData(
        train_file=subset["glob"], streaming=True, shuffle_buffer=args.shuffle_buffer, **common, **settings
    )


def throughput_command(args: argparse.Namespace, argv: list[str]) -> None:
    variants = [v.strip() for v in args.variants.split(",")]
    for variant in variants:
        if variant.startswith("map@"):  # tokenize ahead, untimed, as a map-style user's first run does once
            hftrain_lm_data(args, "map", variant.partition("@")[2]).prepare_data()
    print(
        f"throughput: {variants}, {args.max_steps} steps of {args.batch_size} x {BLOCK_SIZE}; {machine_note()}",
        flush=True,
    )
    runs = []
    for repeat, variant in alternate(variants, args.repeats):
        run = run_child(__file__, argv, variant, args.threads)
        runs.append(run)
        print(
            f"[{repeat + 1}/{args.repeats}] {variant}: {run['tokens_per_s']:.0f} tokens/s, peak RSS "
            f"{run['peak_tree_mib']:.0f} MiB (tree), {run['peak_rss_mib']:.0f} MiB (main), load {run['load']:.2f}",
            flush=True,
        )
    print(f"after: {machine_note()}")
    header = ["variant", "runs", "tokens/s", "tokens/CPU-s", "peak RSS MiB (process + workers)", "peak RSS MiB (main)"]
    header += ["wall s", "load (5 min)"]
    rows = []
    for variant in variants:
        row = [variant, str(sum(r["variant"] == variant for r in runs))]
        row += [f"{median(runs, variant, k):{f}}" for k, f in [("tokens_per_s", ".0f"), ("tokens_per_cpu_s", ".0f")]]
        row += [f"{median(runs, variant, k):.0f}" for k in ("peak_tree_mib", "peak_rss_mib", "wall_s")]
        rows.append([*row, f"{median(runs, variant, 'load'):.2f}"])
    print(markdown_table(header, rows))
    write_json(args, argv, runs)


# ---------------------------------------------------------------------------------------------- entry points


def write_json(args: argparse.Namespace, argv: list[str], runs: list[dict], **extra) -> None:
    if args.json:
        record = {**machine_record(), "command": args.command, "argv": argv, **extra, "runs": runs}
        Path(args.json).write_text(json.dumps(record, indent=2, default=float))


def note_at_cap(args: argparse.Namespace) -> None:
    """Shortly before the parent cuts a resume off, write the CPU seconds it has used (the parent keeps them)."""
    time.sleep(max(args.cap - 5 - (time.time() - args.started), 0))
    note = {"variant": args.child, "cpu_s_at_cap": tree_cpu_s(), "cap_noted_s": time.time() - args.started}
    Path(args.result).write_text(json.dumps(note))


def child(args: argparse.Namespace) -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    result: dict = {"variant": args.child}
    if args.command == "resume" and args.child != "hftrain-positions":
        threading.Thread(target=note_at_cap, args=(args,), daemon=True).start()
    if args.child == "hftrain-positions":
        result.update(hftrain_positions(args, json.loads((args.workdir / "checkpoints" / "plan.json").read_text())))
    elif args.command == "resume":
        plan = json.loads((args.workdir / "checkpoints" / "plan.json").read_text())
        marks = (hf_resume if args.child == "hf" else hftrain_resume)(args, plan)
        result.update(resumed_at=marks["resumed_at"], train_begin_s=marks["train_begin"] - args.started)
        result.update(first_step_s=marks["first_step"] - args.started, first_step_cpu_s=marks["first_step_cpu"])
    else:
        result.update(throughput_run(args, args.child))
        result["first_step_s"] -= args.started
    result.update(wall_s=time.time() - args.started, peak_rss_mib=peak_rss_mib())
    Path(args.result).write_text(json.dumps(result, default=float))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
    elif args.command == "corpus":
        corpus_command(args)
    elif args.command == "resume":
        resume_command(args, argv)
    else:
        throughput_command(args, argv)


if __name__ == "__main__":
    main()
