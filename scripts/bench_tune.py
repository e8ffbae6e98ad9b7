"""`hftrain tune` on MRPC with all-MiniLM-L6-v2: what the search finds, what pruning saves, and what a trial
costs next to `transformers.Trainer.hyperparameter_search(backend="optuna")`.

Every search runs in a fresh process (`bench_common.run_child`), one after the other, on the same work:
the first `--train-rows` rows of MRPC's training file (hftrain's `data.max_train_samples`; the HF side takes
the same rows of the same tokenized splits, see scripts/bench_tasks.py), the whole dev set, the same
starting weights (all-MiniLM-L6-v2 with a seeded classification head, `bench_tasks.prepare`), `--epochs`
epochs with `--evals-per-epoch` validations each (every validation reports an intermediate value, so a
trial can be pruned after a part of an epoch), the same search space (`SPACE`, suggested in the same order
under the same names on both sides), `--trials` trials and a TPE sampler seeded with `--sampler-seed`.

Variants:
- `fit`: a plain fit of the shipped config (configs/glue/mrpc_minilm_local.yaml: lr 5e-5, warmup 10%,
  batch 32, weight decay 0.01) on the same rows, epochs and validations: the value the search has to beat;
- `hftrain:<pruner>`: `hftrain.tune` with that pruner (`median`, `hyperband`, `none`);
- `hf:<pruner>`: the HF Trainer's search; its study gets the same Optuna pruner (Optuna's own default,
  when no pruner is passed, is the median pruner).

Per search: trials complete and pruned, the best dev accuracy, the trial-epochs trained (and the share saved
against the same side's `none` search, when both ran), the search's wall time per trial, and the start-up cost
per trial: from the trial's start (Optuna's `datetime_start`, when the study hands the trial out) to the start
of its first training batch, i.e. what a trial pays before it trains (values, config, model load, data,
optimizer, workers). The first optimizer step is timed apart: its compute depends on which rows the first batch
holds, which differs between the two sides' samplers.

The objective differs by design: hftrain scores a trial by its best validation (the best checkpoint); the HF
Trainer by its last evaluation. Both are printed for the HF side ("last" and "best of evals").

    python scripts/bench_tune.py --train-rows 512 --epochs 2 --trials 12
    python scripts/bench_tune.py --variants hf:none --train-rows 64 --epochs 1 --trials 2   # a quick check
"""

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_common import machine_note, machine_record, markdown_table, run_child
from bench_tasks import DATA, TASKS, hf_run, prepare
from lightning.pytorch import Callback

TASK = "mrpc"
# the search space in `tune.space` form: learning rate, warmup, batch size, weight decay
SPACE = {
    "model.learning_rate": {"low": 1.0e-5, "high": 5.0e-4, "log": True},
    "model.warmup_steps": {"low": 0.0, "high": 0.2},
    "data.batch_size": [16, 32],
    "model.weight_decay": {"low": 0.0, "high": 0.1},
}
# the HF Trainer's names for SPACE's keys
HF_NAMES = {
    "model.learning_rate": "learning_rate",
    "model.warmup_steps": "warmup_steps",
    "data.batch_size": "per_device_train_batch_size",
    "model.weight_decay": "weight_decay",
}
PRUNERS = ("median", "hyperband", "none")
STUDY_FILE = "study.journal"  # a search's Optuna journal (hftrain tune's name for it, used on the HF side too)
CLOCK_FILE = "clock.jsonl"  # a search's trials' first optimizer steps, one line each, in the order they ran
DEFAULT_VARIANTS = "fit,hf:none,hftrain:none,hftrain:median"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list (default {DEFAULT_VARIANTS})")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--evals-per-epoch", type=int, default=2, help="validations per epoch (each reports)")
    parser.add_argument("--train-rows", type=int, default=512, help="first N training rows (data.max_train_samples)")
    parser.add_argument("--eval-rows", type=int, help="first N dev rows only (data.max_eval_samples), for quick checks")
    parser.add_argument("--sampler-seed", type=int, default=0)
    parser.add_argument(
        "--pruner-options",
        type=json.loads,
        default={"n_startup_trials": 3},
        help="JSON keyword arguments of the Optuna pruner, both sides (tune.pruner_options)",
    )
    parser.add_argument("--seed", type=int, default=42, help="training seed (seed_everything / TrainingArguments)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each search")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "hftrain-bench-tune"))
    parser.add_argument("--json", help="also write every search's trials to this file")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: report what the variants' folders in --workdir hold (a search stopped part way)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for variant in args.variants.split(","):
        side, _, pruner = variant.partition(":")
        if not (variant == "fit" or (side in ("hftrain", "hf") and pruner in PRUNERS)):
            parser.error(f"unknown variant {variant!r}: fit, or hftrain:<pruner> / hf:<pruner>, pruners {PRUNERS}")
    return args


def optuna_pruner(name: str, options: dict):
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    return {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner}[name](**options)


def suggest(trial, key: str, spec) -> float | int | str:
    """One parameter of SPACE, suggested as `tune.space` describes it: a list is categorical, a range of ints
    an int, any other range a float (log scale with `log: true`)."""
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    if isinstance(spec["low"], int) and isinstance(spec["high"], int):
        return trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))


def trial_rows(study, clocks: list[dict], evals_per_epoch: int) -> list[dict]:
    """One row per trial of an Optuna study: its state, parameters and value, the trial-epochs it trained (one
    `1 / evals_per_epoch` per intermediate value), its start-up cost (the start of its first training batch,
    `clocks[n]` in the order the trials ran, one after the other, minus the trial's start) and its first step."""
    rows = []
    for trial in study.trials:
        start = trial.datetime_start.timestamp()
        end = trial.datetime_complete.timestamp() if trial.datetime_complete else None
        clock = clocks[trial.number] if trial.number < len(clocks) else {}
        first_batch, first_step = clock.get("first_batch"), clock.get("first_step")
        intermediate = dict(sorted(trial.intermediate_values.items()))
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "params": trial.params,
                "value": trial.value,
                "best_eval": max(intermediate.values(), default=None),
                "intermediate": list(intermediate.values()),
                "epochs": len(intermediate) / evals_per_epoch,
                "start": start,
                "end": end,
                "duration_s": end - start if end else None,
                "startup_s": first_batch - start if first_batch else None,
                "first_step_s": first_step - first_batch if first_batch and first_step else None,
            }
        )
    return rows


def search_study(variant: str, folder: Path):
    """The study a search keeps in its folder: the HF side's journal file, or `hftrain tune`'s own."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    side, _, pruner = variant.partition(":")
    name = "hf" if side == "hf" else f"bench-{pruner}"
    path = folder / STUDY_FILE if side == "hf" else folder / "runs" / name / "tune" / STUDY_FILE
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def collect(variant: str, folder: Path, evals_per_epoch: int) -> dict:
    """A variant's figures from what it left in its folder, so that a search stopped part way still counts its
    finished trials: the plain fit's `results.json`, or a search's study and clock file."""
    if variant == "fit":
        results = json.loads(next(folder.glob("runs/*/version_*/results.json")).read_text())
        return {
            "best_value": results["best"]["val/accuracy"],
            "best_params": SHIPPED,
            "history": [entry["val/accuracy"] for entry in results["history"]],
        }
    study = search_study(variant, folder)
    clock = folder / CLOCK_FILE
    clocks = [json.loads(line) for line in clock.read_text().splitlines()] if clock.is_file() else []
    trials = trial_rows(study, clocks, evals_per_epoch)
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    complete = [t for t in finished if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t["value"], default=None)
    return {
        "best_value": best["value"] if best else None,
        "best_params": best["params"] if best else {},
        "trials": trials,
        # first trial's start to last finished trial's end: trials and what the search does between them
        "search_s": max(t["end"] for t in finished) - min(t["start"] for t in finished) if finished else None,
        "finished": len(finished),
    }


class TrialClock:
    """The start of a trial's first training batch and the end of its first optimizer step, appended to the search's
    clock file (`$BENCH_TUNE_CLOCK`) as one line when the step ends; both sides' callbacks call it."""

    def trial_started(self) -> None:
        self.first_batch = None
        self.written = False

    def batch_started(self) -> None:
        self.first_batch = self.first_batch or time.time()

    def step_ended(self) -> None:
        if not self.written:
            self.written = True
            with open(os.environ["BENCH_TUNE_CLOCK"], "a") as clock:
                clock.write(json.dumps({"first_batch": self.first_batch, "first_step": time.time()}) + "\n")


# ---------------------------------------------------------------------------------------------- HF side


def hf_space(trial, seed: int | None = None) -> dict:
    """The HF side's `hp_space`: SPACE under the HF Trainer's argument names, suggested in SPACE's order under
    hftrain's keys. With `seed`, the trial draws from a TPE sampler seeded `seed` + its number, as `hftrain tune`
    seeds each trial (`study.reseed_for`), so that both searches draw the same values."""
    if seed is not None:
        import optuna

        trial.study.sampler = optuna.samplers.TPESampler(seed=seed + trial.number)
    return {HF_NAMES[key]: suggest(trial, key, spec) for key, spec in SPACE.items()}


def hf_arguments(args: argparse.Namespace):
    """The HF side's `TrainingArguments`: the shipped config's settings (the search overrides four of them),
    `--evals-per-epoch` evaluations per epoch, nothing saved or logged."""
    from transformers import TrainingArguments

    task = TASKS[TASK]
    return TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-bench-tune-"),
        per_device_train_batch_size=task.batch_size,
        per_device_eval_batch_size=2 * task.batch_size,
        learning_rate=task.learning_rate,
        weight_decay=task.weight_decay,
        # a float: the search's values are cast to the type of the value set here, and the default (int 0)
        # would turn every warmup fraction into 0 steps
        warmup_steps=float(task.warmup),
        num_train_epochs=args.epochs,
        seed=args.seed,
        # a fraction of all steps (rows: a multiple of 64); below 1 only, for a whole 1.0 means one step
        eval_strategy="epoch" if args.evals_per_epoch == 1 else "steps",
        eval_steps=None if args.evals_per_epoch == 1 else 1 / (args.epochs * args.evals_per_epoch),
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )


def hf_search(args: argparse.Namespace, prepared: dict, pruner: str) -> None:
    """`Trainer.hyperparameter_search(backend="optuna")` over SPACE, its study in a journal file of the search
    folder (Optuna's `storage`, passed through), each trial's first step in the clock file."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback

    run = hf_run(TASK, prepared)

    class Clock(TrainerCallback, TrialClock):
        def on_train_begin(self, arguments, state, control, **kwargs):
            self.trial_started()

        def on_step_begin(self, arguments, state, control, **kwargs):
            self.batch_started()

        def on_step_end(self, arguments, state, control, **kwargs):
            self.step_ended()

    trainer = Trainer(
        model_init=lambda: AutoModelForSequenceClassification.from_pretrained(prepared["model"]),
        args=hf_arguments(args),
        train_dataset=run.train.select(range(args.train_rows)),
        eval_dataset=run.validation.select(range(min(args.eval_rows or len(run.validation), len(run.validation)))),
        data_collator=run.collator,
        processing_class=run.tokenizer,
        compute_metrics=run.compute_metrics,
        callbacks=[Clock()],
    )
    trainer.hyperparameter_search(
        hp_space=functools.partial(hf_space, seed=args.sampler_seed),
        compute_objective=lambda metrics: metrics["eval_accuracy"],
        n_trials=args.trials,
        direction="maximize",
        backend="optuna",
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
        pruner=optuna_pruner(pruner, args.pruner_options),
        storage=JournalStorage(JournalFileBackend(STUDY_FILE)),
        study_name="hf",
    )


# ---------------------------------------------------------------------------------------------- hftrain side


def hftrain_overrides(args: argparse.Namespace, prepared: dict) -> dict:
    """What the shipped config's plain fit and every hftrain trial change in it: the same starting weights,
    absolute data paths, the benchmark's rows, epochs and validations, and no checkpoints beyond the run's."""
    return {
        "model": {"model_name_or_path": prepared["model"]},
        "data": {
            "train_file": str(DATA / "glue" / "MRPC" / "train.tsv"),
            "validation_file": str(DATA / "glue" / "MRPC" / "dev.tsv"),
            "max_train_samples": args.train_rows,
            "max_eval_samples": args.eval_rows,
            "cache_dir": str(Path(args.workdir) / "cache"),
            "seed": args.seed,
        },
        "trainer": {
            "max_epochs": args.epochs,
            "val_check_interval": 1 / args.evals_per_epoch,
            "enable_progress_bar": False,
        },
        "seed_everything": args.seed,
    }


def shipped_fit(args: argparse.Namespace, prepared: dict) -> None:
    import hftrain

    hftrain.fit(REPO_CONFIG, **hftrain_overrides(args, prepared))


REPO_CONFIG = str(Path(__file__).resolve().parents[1] / TASKS[TASK].config)
SHIPPED = {
    "model.learning_rate": TASKS[TASK].learning_rate,
    "model.warmup_steps": TASKS[TASK].warmup,
    "data.batch_size": TASKS[TASK].batch_size,
    "model.weight_decay": TASKS[TASK].weight_decay,
}


class FirstStepClock(Callback, TrialClock):
    """`TrialClock` for an hftrain trial, added to the trainer's callbacks by the search's overrides."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.trial_started()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_started()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_ended()


def hftrain_search(args: argparse.Namespace, prepared: dict, pruner: str) -> None:
    """`hftrain.tune` on the shipped config and a search config of SPACE (`search.yaml` in the search folder),
    each trial with `FirstStepClock`."""
    import hftrain

    search = {
        "n_trials": args.trials,
        "sampler": "tpe",
        "seed": args.sampler_seed,
        "pruner": pruner,
        "pruner_options": args.pruner_options if pruner != "none" else {},
        "space": SPACE,
        "study_name": f"bench-{pruner}",
    }
    Path("search.yaml").write_text(yaml.safe_dump({"tune": search}, sort_keys=False))
    overrides = hftrain_overrides(args, prepared)
    overrides["trainer"]["callbacks"] = [{"class_path": "bench_tune.FirstStepClock"}]
    hftrain.tune(REPO_CONFIG, "search.yaml", **overrides)


def search_folder(args: argparse.Namespace, variant: str) -> Path:
    """Where a variant runs and leaves its runs, study and clock file: `<workdir>/<variant>`."""
    return Path(args.workdir) / variant.replace(":", "-")


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    prepared = json.loads(Path(args.prepared).read_text())
    folder = search_folder(args, args.child)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.chdir(folder)
    os.environ["BENCH_TUNE_CLOCK"] = str(folder / CLOCK_FILE)
    side, _, pruner = args.child.partition(":")
    if side == "fit":
        shipped_fit(args, prepared)
    else:
        (hftrain_search if side == "hftrain" else hf_search)(args, prepared, pruner)
    result = collect(args.child, folder, args.evals_per_epoch)
    result.update(variant=args.child, wall_s=time.time() - args.started, started=args.started)
    Path(args.result).write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------------------------------------- parent side


def fmt(value, spec: str) -> str:
    return "" if value is None or value != value else format(value, spec)


def replay_pruning(trials: list[dict], options: dict, evals_per_epoch: int) -> float | None:
    """The trial-epochs the median pruner would have saved on a search without pruning, replayed on its values.

    Exact for TPE's first 10 trials (`n_startup_trials`), whose values it draws at random whatever earlier trials
    scored, so a pruned search would have run the same trials; each trial is seeded, so its values up to the
    pruning point are the same too. None when no trial finished.
    """
    import optuna

    study = optuna.create_study(direction="maximize", pruner=optuna_pruner("median", options))
    trained = full = 0.0
    for row in trials:
        trial = study.ask()
        for step, value in enumerate(row["intermediate"], start=1):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, row["best_eval"])
            step = len(row["intermediate"])
        trained += step / evals_per_epoch
        full += row["epochs"]
    return 1 - trained / full if full else None


def finished(run: dict) -> list[dict]:
    return [t for t in run["trials"] if t["state"] in ("COMPLETE", "PRUNED")]


def search_row(run: dict, runs: dict[str, dict]) -> list[str]:
    """A search's line of the table (the plain fit's has its value only). Pruning's savings compare the trial-epochs
    of the same number of finished trials, in trial order, with the same side's search without pruning."""
    if run["variant"] == "fit":
        params = ", ".join(f"{key.split('.')[-1]} {value:g}" for key, value in run["best_params"].items())
        return ["fit (shipped config)", "1", fmt(run["best_value"], ".4f"), "", params, ""]
    trials = finished(run)
    states = [t["state"] for t in trials]
    side = run["variant"].split(":")[0]
    epochs = f"{sum(t['epochs'] for t in trials):g}"
    unpruned = runs.get(f"{side}:none")
    if unpruned and unpruned is not run:
        count = min(len(trials), len(finished(unpruned)))
        pruned_epochs = sum(t["epochs"] for t in trials[:count])
        saved = 1 - pruned_epochs / sum(t["epochs"] for t in finished(unpruned)[:count])
        epochs += f" ({saved:.0%} saved over {count} trials)"
    startups = [t["startup_s"] for t in trials if t.get("startup_s") is not None]
    first_steps = [t["first_step_s"] for t in trials if t.get("first_step_s") is not None]
    best = run["best_value"]
    if side == "hf":
        best_of_evals = max((t["best_eval"] for t in trials if t["best_eval"] is not None), default=None)
        best_text = f"{fmt(best, '.4f')} (last eval; best eval {fmt(best_of_evals, '.4f')})"
    else:
        best_text = fmt(best, ".4f")
    params = ", ".join(f"{key.split('.')[-1]} {value:.3g}" for key, value in run["best_params"].items())
    timing = f"{run['search_s'] / len(trials):.0f} s" if trials else ""
    if startups and first_steps:  # a clock file of an older bench_tune.py has neither
        timing += (
            f"; start-up median {statistics.median(startups):.2f} s (first trial {startups[0]:.2f} s), "
            f"first step median {statistics.median(first_steps):.2f} s"
        )
    pruned = f" + {states.count('PRUNED')} pruned" if "PRUNED" in states else ""
    return [run["variant"], f"{states.count('COMPLETE')}{pruned}", best_text, epochs, params, timing]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    work = Path(args.workdir)
    prepared = prepare(TASK, work, None, args.seed, str(work / "cache"))
    prepared_file = work / TASK / "prepared.json"
    prepared_file.write_text(json.dumps(prepared))
    argv = [*argv, "--prepared", str(prepared_file)]
    print(
        f"MRPC, first {args.train_rows} training rows, {args.eval_rows or 'all'} dev rows, {args.epochs} epochs x "
        f"{args.evals_per_epoch} validations, {args.trials} trials, sampler seed {args.sampler_seed}, "
        f"{args.threads} thread(s); before: {machine_note()}",
        flush=True,
    )
    runs: dict[str, dict] = {}
    for variant in args.variants.split(","):
        if args.collect:
            run = {**collect(variant, search_folder(args, variant), args.evals_per_epoch), "variant": variant}
        else:
            run = run_child(__file__, argv, variant, args.threads)
            trials = run.get("trials")  # none for the plain fit
            first = f", process start to first trial {trials[0]['start'] - run['started']:.1f} s" if trials else ""
            print(f"{variant}: wall {run['wall_s']:.0f} s{first}, load {run['load']:.1f}")
        runs[variant] = run
        for trial in run.get("trials", []):
            params = ", ".join(f"{key.split('.')[-1]}={value:.3g}" for key, value in trial["params"].items())
            evals = " ".join(f"{value:.3f}" for value in trial["intermediate"])
            print(
                f"  #{trial['number']} {trial['state']:8} {params}: [{evals}] {fmt(trial['duration_s'], '.0f')} s, "
                f"start-up {fmt(trial.get('startup_s'), '.2f')} s, "
                f"first step {fmt(trial.get('first_step_s'), '.2f')} s",
                flush=True,
            )
    for variant, run in runs.items():
        if variant.endswith(":none") and finished(run):
            replayed = finished(run)[:10]
            saved = replay_pruning(replayed, args.pruner_options, args.evals_per_epoch)
            print(
                f"{variant}: the median pruner would have saved {saved:.0%} of its first {len(replayed)} trials' epochs"
            )
    print(f"after: {machine_note()}")
    header = ["search", "trials", "best dev accuracy", "trial-epochs", "best parameters", "wall per trial"]
    print(markdown_table(header, [search_row(run, runs) for run in runs.values()]))
    if args.json:
        Path(args.json).write_text(json.dumps({**machine_record(), "argv": argv, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
