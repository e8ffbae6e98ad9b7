"""The run folder: where a run writes, and how a later command finds what an earlier one wrote.

A run lives in `runs/<name>/version_N/` (`config.yaml`, TensorBoard events, `checkpoints/`, `hf_model/`,
`results.json`, `predictions.jsonl`). These are plain functions of paths and values, in the spirit of the
HF Trainer's `get_last_checkpoint(output_dir)`: the CLI and the callbacks call them, tests call them
directly. The one question asked of a Trainer is `run_folder`, where its run writes.
"""

import atexit
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from hftrain.core.errors import HFTrainError
from hftrain.core.internals import best_model_path_in
from hftrain.core.writes import write_text

RUNS_DIR = "runs"
RESULTS_FILE = "results.json"
EXPORT_DIR = "hf_model"
CHECKPOINTS_DIR = "checkpoints"  # Lightning's own choice for `ModelCheckpoint` inside the log folder
LAST_CHECKPOINT = "last.ckpt"
DEFAULT_LOGGER_NAME = "lightning_logs"  # what TensorBoard's and CSV's loggers call a run without a name


def run_folder(trainer: Trainer) -> str:
    """Where a run's files go: the log folder of a TensorBoard or CSV logger (a broadcast under DDP, so every rank
    must ask), else the trainer's root folder, which the CLI sets to `runs/<name>/version_N`. Another logger's
    `save_dir`, which Lightning takes as its log folder, is where that tracker keeps its own files (W&B's
    `wandb/`, MLflow's file store), or None for a tracking server: not the run folder."""
    if trainer.loggers and isinstance(trainer.loggers[0], TensorBoardLogger | CSVLogger):
        return trainer.log_dir
    return trainer.default_root_dir


def run_name(config_files: Sequence[tuple[str, Mapping | None]], task_class_path: str) -> str:
    """The name of a run: the last config file that sets the model or data (`mrpc` for
    `configs/glue/mrpc.yaml`, also with trainer presets layered after it), else the last config file,
    else the task's class name. `config_files` holds each file's path and parsed content."""
    tasks = [path for path, content in config_files if {"model", "data"} & set(content or {})]
    files = [path for path, _ in config_files]
    if files:
        return Path(str((tasks or files)[-1])).stem
    return task_class_path.rsplit(".", 1)[-1].lower()


def version_dir(root: str | Path, version: int | str) -> Path:
    """A run folder under `root` as TensorBoard's logger names it: `version_N` for a number, else the name."""
    return Path(root) / (version if isinstance(version, str) else f"version_{version}")


def fit_runs(root: str | Path) -> list[Path]:
    """The `version_N` folders under `root` that a `fit` made (it creates `checkpoints/` when it starts), oldest
    first by N (`version_12345` of a SLURM job counts by its job id)."""
    found = [
        (int(d.name.removeprefix("version_")), d)
        for d in Path(root).glob("version_*")
        if d.name.removeprefix("version_").isdigit() and (d / CHECKPOINTS_DIR).is_dir()
    ]
    return [d for _, d in sorted(found)]


def find_checkpoint(run_dir: str | Path, which: str) -> Path:
    """The `best` or `last` checkpoint file of a run folder.

    `last` is the newer of `checkpoints/last.ckpt` and a SLURM requeue checkpoint (`hpc_ckpt_N.ckpt`); `best`
    is what `results.json` recorded, else the best path that the checkpoint callback kept in `last.ckpt` (a
    run stopped before its end wrote no results yet).
    """
    run_dir = Path(run_dir)
    last = run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT
    if which == "last":
        candidates = [c for c in [newest_resume_point(run_dir)] if c is not None]
    else:
        best = read_results(run_dir).get("best_checkpoint")
        if not best and last.is_file():
            best = best_model_path_in(last)
        candidates = [Path(best)] if best and Path(best).is_file() else []
    if not candidates:
        others = ", ".join(d.name for d in fit_runs(run_dir.parent) if d != run_dir) or "none"
        raise HFTrainError(
            f"--ckpt_path {which}: {run_dir} has no {which} checkpoint (it stopped before its first save, or "
            f"has no validated checkpoint). Start a new run without --ckpt_path, choose another run of this "
            f"config with --trainer.logger.init_args.version N (others here: {others}), or pass the path of a "
            ".ckpt file."
        )
    return candidates[0]


def newest_resume_point(run_dir: str | Path) -> Path | None:
    """The newer of `checkpoints/last.ckpt` and a SLURM requeue checkpoint (`hpc_ckpt_N.ckpt`), if any."""
    run_dir = Path(run_dir)
    found = [c for c in [run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT, *run_dir.glob("hpc_ckpt_*.ckpt")] if c.is_file()]
    return max(found, key=lambda c: c.stat().st_mtime, default=None)


def next_version(root: str | Path) -> int:
    """The N of the next `version_N` under `root`, as TensorBoard's logger numbers its folders."""
    numbers = [int(d.name[8:]) for d in Path(root).glob("version_*") if d.name[8:].isdigit()]
    return max(numbers, default=-1) + 1


# the folders above each claimed run folder that its claim created: released with it when it stays empty
_created_for: dict[Path, list[Path]] = {}


def claim_version(root: str | Path) -> Path:
    """Create the folder of a new run, the next free `version_N` under `root`, and return it; released at exit if
    nothing was written into it.

    TensorBoard's and CSV's loggers choose N by listing the folder and create it later, so runs started together
    (a job array's tasks, a sweep's workers) all chose the same N and wrote over each other. An exclusive
    `mkdir` is atomic, on network file systems too: on a clash another run took N first, and the next N is tried.
    """
    root = Path(root)
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    root.mkdir(parents=True, exist_ok=True)
    number = next_version(root)
    while True:
        folder = root / f"version_{number}"
        try:
            folder.mkdir()
            _created_for[folder] = created
            atexit.register(release_version, folder)  # a claim never written into (a Run never fitted) ends here
            return folder
        except FileExistsError:
            number += 1


def release_version(folder: str | Path) -> None:
    """Remove a claimed run folder that nothing was written into (the command failed before it began, or this
    process was not the rank that writes), so that no empty `version_N` is left behind, nor the empty
    `runs/<name>/` that `claim_version` created for it."""
    folder = Path(folder)
    for empty in (folder, *_created_for.pop(folder, [])):
        try:
            empty.rmdir()
        except OSError:  # not empty (the run, or another run, wrote into it) or already gone
            return


def is_run(folder: str | Path) -> bool:
    """Whether a folder holds what a run writes: `results.json`, TensorBoard events, or (a fit of another logger
    stopped before its results) a `version_*` folder with a config and checkpoints. A project folder of the
    user's own with a `config.yaml` and Lightning's `checkpoints/` is not one."""
    folder = Path(folder)
    return (
        (folder / RESULTS_FILE).is_file()
        or any(folder.glob("events.out.tfevents.*"))
        or (
            folder.name.startswith("version_")
            and (folder / "config.yaml").is_file()
            and (folder / CHECKPOINTS_DIR).is_dir()
        )
    )


def run_of(path: str | Path) -> Path | None:
    """The run folder a file belongs to, if it is one of the run's own: its saved config (`config.yaml`,
    `config-N.yaml`) or a checkpoint (`checkpoints/*.ckpt`, a SLURM requeue checkpoint `hpc_ckpt_N.ckpt`).
    None for a file kept anywhere else."""
    path = Path(path)
    if re.fullmatch(r"config(-\d+)?\.yaml|hpc_ckpt_\d+\.ckpt", path.name):
        folder = path.parent
    elif path.suffix == ".ckpt" and path.parent.name == CHECKPOINTS_DIR:
        folder = path.parent.parent
    else:
        return None
    return folder if is_run(folder) else None


def run_named(config_files: Sequence[str | Path], checkpoint: str | Path | None) -> tuple[Path | None, str | None]:
    """The run that a command's own files name, and a sentence saying which was taken when they name several.

    A checkpoint path names the run it lies in (its weights are what is scored or continued; a checkpoint kept
    outside any run names none); without one (`--ckpt_path best|last`), the run whose saved config is the last
    one given.
    """
    by_config = {run.resolve(): run for run in map(run_of, reversed(config_files)) if run is not None}
    if checkpoint is not None:
        taken, why = run_of(checkpoint), "the run its checkpoint lies in"
    else:
        taken, why = next(iter(by_config.values()), None), "the run of the last config given"
    others = [run for key, run in by_config.items() if taken is None or key != taken.resolve()]
    if taken is None or not others:
        return taken, None
    return taken, (
        f"The command names {len(others) + 1} runs ({', '.join(map(str, [taken, *others]))}); it acts on "
        f"{taken}, {why}."
    )


def free_path(folder: str | Path, stem: str, suffix: str) -> Path:
    """`folder/stem.suffix`, or `folder/stem-N.suffix` with the first free N, so nothing is overwritten."""
    folder = Path(folder)
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through `writes.replacing`, so readers never see half a file."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The run's `results.json`, or `{}` before anything was written."""
    path = Path(run_dir) / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def epoch_number(entry: Mapping[str, Any]) -> int:
    """The epoch of a `results.json` entry as a user reads it everywhere, counted from 1 like the progress line
    (`epoch 1/3`). The file's `epoch` keeps Lightning's count from 0 (`trainer.current_epoch`, the `epoch=N`
    of checkpoint names), so files written before and after read alike."""
    return int(entry["epoch"]) + 1


def update_results(run_dir: str | Path, update: Mapping[str, Any]) -> None:
    """Merge `update` into the run's `results.json` (top-level keys replace), creating the folder if needed."""
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / RESULTS_FILE, {**read_results(folder), **update})
