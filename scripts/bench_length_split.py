"""What splitting random training batches by length buys, and what a part costs (`data.split_by_length`).

In one process, on the task's model and tokenized training data (as `bench_vs_hf_trainer.py` prepares them),
each of `--batches` random training batches is trained on (forward and backward, no optimizer step, so
every plan sees the same weights) once per plan, the plans taking turns within each batch:

- `whole`: the batch as the collator pads it;
- `cost=C`: the batch cut by `split_points` with a part cost of C padded positions (hftrain uses
  `length_split.PART_COST`);
- `parts=K`: the batch cut into K parts of equal row counts after sorting, for comparison.

Per plan: ms per batch (median and mean over the batches after the first), speed against `whole`, positions
computed per real token, and parts per batch. In-process turns are the steadiest way to compare plans on a
shared machine: load drift falls on every plan within seconds.

    python scripts/bench_length_split.py --task mrpc --batches 24
    python scripts/bench_length_split.py --task conll --batches 16 --plans whole,cost=64,cost=256
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench_common import machine_note, markdown_table
from bench_tasks import TASKS, hftrain_data, hftrain_module, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="mrpc")
    parser.add_argument("--batches", type=int, default=24, help="random training batches, each run by every plan")
    parser.add_argument("--plans", default="whole,cost=0,cost=32,cost=64,cost=128,cost=256,parts=2,parts=4,parts=8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default="/tmp/hftrain-bench", help="as bench_vs_hf_trainer.py's")
    return parser.parse_args(argv)


def cut(lengths: list[int], plan: str) -> list[tuple[int, int]]:
    """Row ranges of a batch sorted longest first, by `plan`."""
    from hftrain.core.length_split import split_points

    kind, _, value = plan.partition("=")
    if kind == "whole":
        return [(0, len(lengths))]
    if kind == "cost":
        return split_points(lengths, int(value))
    if kind == "parts":
        bounds = [round(i * len(lengths) / int(value)) for i in range(int(value) + 1)]
        return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    sys.exit(f"unknown plan {plan!r}: whole, cost=C or parts=K")


def main() -> None:
    args = parse_args()
    import torch

    from hftrain.core.sampling import EpochShuffleSampler

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    task = TASKS[args.task]
    prepared = prepare(args.task, work, None, args.seed, str(work / "cache"))
    data = hftrain_data(task, work, prepared["model"], cache_dir=str(work / "cache"), seed=args.seed)
    data.setup("fit")
    module = hftrain_module(task, data, prepared["model"])
    module.train()
    train, collate = data.datasets["train"], data.collator
    key = data.tokenizer.model_input_names[0]
    order = EpochShuffleSampler(len(train), args.seed).order().tolist()
    plans = [p.strip() for p in args.plans.split(",")]
    times: dict[str, list[float]] = {plan: [] for plan in plans}
    slots: dict[str, int] = dict.fromkeys(plans, 0)
    parts: dict[str, int] = dict.fromkeys(plans, 0)
    real = 0
    for number in range(args.batches):
        rows = [train[i] for i in order[number * task.batch_size : (number + 1) * task.batch_size]]
        rows.sort(key=lambda row: -len(row[key]))
        lengths = [len(row[key]) for row in rows]
        real += sum(lengths)
        for plan in plans:
            ranges = cut(lengths, plan)
            batches = [collate(rows[a:b]) for a, b in ranges]
            start = time.perf_counter()
            if len(batches) == 1:
                loss = module(**batches[0]).loss
            else:
                loss, _ = module.split_batch_loss(batches)
            loss.backward()
            module.zero_grad(set_to_none=True)
            if number > 0:
                times[plan].append(time.perf_counter() - start)
            slots[plan] += sum((b - a) * lengths[a] for a, b in ranges)
            parts[plan] += len(ranges)
    whole = statistics.median(times[plans[0]])
    table = []
    for plan in plans:
        median = statistics.median(times[plan])
        table.append(
            [
                plan,
                f"{1000 * median:.0f}",
                f"{1000 * statistics.mean(times[plan]):.0f}",
                f"{whole / median:.2f}x",
                f"{slots[plan] / real:.3f}",
                f"{parts[plan] / args.batches:.1f}",
            ]
        )
    print(
        f"{args.task}: {args.batches} random batches of {task.batch_size}, {args.threads} thread(s); {machine_note()}"
    )
    header = ["plan", "ms median", "ms mean", f"speed vs {plans[0]}", "positions per real token", "parts per batch"]
    print(markdown_table(header, table))


if __name__ == "__main__":
    main()
