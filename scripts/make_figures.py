"""Draw the pictures of README.md and docs/ from the measurements committed in docs/figures/data/.

    python scripts/make_figures.py            # rewrites docs/figures/*.png

Two kinds of input, both JSON, both committed so that a picture can be redrawn and checked without the run:
- `data/bench/*.json`: `scripts/bench_vs_hf_trainer.py --json` files (`mode: train`); their head says when,
  on which machine and at which commit they ran. The newest file of each task is drawn. Files transcribed
  from an older record carry a `source` saying so, and the caption says which.
- `data/history/<run>.json`: a documented run's `results.json` `history` (one entry per validation) with the
  command that made it, its date, and the metric it monitors (`monitor`). Copy a run's
  `results.json` there with those keys added, or write them by hand from a run folder that is gone (`source`).

Matplotlib (the `docs` extra) draws; nothing here imports hftrain, torch or the benchmarks.
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot is imported)

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"
# the benchmark's task names, as the docs name them
TASK_TITLES = {
    "mrpc": "MRPC",
    "conll": "CoNLL-2003",
    "squad": "SQuAD slice",
    "multi30k": "Multi30k",
    "wikitext2": "WikiText-2",
}
SIDES = {"hftrain+random": "hftrain, defaults", "hf": "HF Trainer, defaults"}
# PNG metadata without the matplotlib version, so that redrawing the same data changes no file
SAVE = {"dpi": 110, "metadata": {"Software": None}, "bbox_inches": "tight"}


def newest_benchmarks(folder: Path) -> dict[str, dict]:
    """The newest training benchmark of each task, by the date in the file."""
    found: dict[str, dict] = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("mode", "train") != "train":
            continue
        task = record["task"]
        if task not in found or record["date"] > found[task]["date"]:
            found[task] = record
    return dict(sorted(found.items(), key=lambda item: list(TASK_TITLES).index(item[0])))


def median_speed(record: dict, variant: str) -> float | None:
    speeds = [run["samples_per_s"] for run in record["runs"] if run["variant"] == variant]
    return statistics.median(speeds) if speeds else None


def speed_chart(records: dict[str, dict], out: Path) -> None:
    """Training samples/s per task, the two sides' defaults side by side, each pair's ratio above it."""
    tasks = [t for t in records if all(median_speed(records[t], v) for v in SIDES)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.1 * len(tasks), 3.2))
    for ax, task in zip(axes, tasks, strict=True):
        speeds = [median_speed(records[task], variant) for variant in SIDES]
        bars = ax.bar([0, 1], speeds, color=["#3b6ea8", "#b0b0b0"], width=0.7)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(f"{TASK_TITLES.get(task, task)}\n{speeds[0] / speeds[1]:.2f}×", fontsize=9)
        ax.set_xticks([])
        ax.set_ylim(0, max(speeds) * 1.2)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("training samples/s")
    fig.legend(bars, list(SIDES.values()), loc="lower center", ncol=2, fontsize=8, frameon=False)
    dates = sorted({records[t]["date"][:10] for t in tasks})
    fig.suptitle(f"Training speed on CPU, measured {', '.join(dates)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out, **SAVE)
    plt.close(fig)


def curve(run: dict, out: Path) -> None:
    """The monitored validation metric of a documented run, one point per validation."""
    metric = run["monitor"]
    points = [entry for entry in run["history"] if metric in entry]
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    ax.plot([p["epoch"] + 1 for p in points], [p[metric] for p in points], marker="o", color="#3b6ea8")
    for p in points:
        ax.annotate(
            f"{p[metric]:.4g}",
            (p["epoch"] + 1, p[metric]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_xticks([p["epoch"] + 1 for p in points])
    ax.margins(y=0.2)
    ax.set_title(f"{run['run']}, {run['date']}", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, **SAVE)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=FIGURES / "data", help="the folder of the JSON inputs")
    parser.add_argument("--out", type=Path, default=FIGURES, help="where the PNG files go")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    records = newest_benchmarks(args.data / "bench")
    if records:
        speed_chart(records, args.out / "train_speed.png")
        written.append("train_speed.png")
    for path in sorted((args.data / "history").glob("*.json")):
        run = json.loads(path.read_text())
        curve(run, args.out / f"curve_{path.stem}.png")
        written.append(f"curve_{path.stem}.png")
    print(f"wrote {', '.join(written)} to {args.out}")


if __name__ == "__main__":
    main()
