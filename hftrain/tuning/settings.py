"""What a search is: the `tune:` section of the configs, read and checked before anything runs.

`hftrain tune` takes the configs and options `hftrain fit` takes, plus a `tune:` section (in any config file, or
`--tune.<key> value`), layered as fit layers its configs: later files and options win. The section names how many
trials, the sampler and pruner, and the search space, whose keys are `hftrain fit` options:

    tune:
      n_trials: 12
      space:
        model.learning_rate: {low: 1.0e-5, high: 5.0e-4, log: true}
        data.batch_size: [16, 32]

A key of the space that fit does not take is refused by fit's own check (`preflight`), with its closest option.
"""

import difflib
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from hftrain import preflight
from hftrain.core.errors import HFTrainError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
RANGE_KEYS = ("low", "high", "log", "step")


@dataclass
class TuneSettings:
    """The `tune:` section of a search config.

    Args:
        space: The search space: an `hftrain fit` option (`model.learning_rate`, `data.batch_size`,
            `trainer.accumulate_grad_batches`) -> a range `{low: …, high: …}` (`log: true` samples on a log scale,
            `step` spaces the values; whole-number bounds give whole numbers) or a list of choices.
        n_trials: How many trials the study holds in all, finished or pruned: running the command again
            continues the study up to this total, and several workers at once share it.
        sampler: How the next trial's values are chosen: `tpe` (Optuna's default), `random`, or `grid` (every
            combination of lists and stepped ranges, once).
        pruner: Which trials stop early, at a validation, for scoring worse than the others there: `median`,
            `hyperband`, or `none`.
        seed: The sampler's seed (the same seed gives the same sequence of trials in one worker).
        sampler_options: More keyword arguments of the Optuna sampler, e.g. `{n_startup_trials: 5}` for TPE.
        pruner_options: More keyword arguments of the Optuna pruner, e.g. `{n_startup_trials: 2,
            n_warmup_steps: 1}` for median (steps count validations).
        storage: Where the study is kept: null for an Optuna journal file in the study folder (`runs/<name>/tune/`,
            safe on a shared filesystem), a journal file path, or a database URL (`sqlite:///study.db`,
            `postgresql://…`).
        study_name: The study's name, also the `<name>` of its folder `runs/<name>/tune/`; null: the run name
            fit would use (the task config's file name).
        keep: Whose `hf_model/` and checkpoints are kept once trials end: `best` (the best trial's only) or `all`.
        heartbeat_interval: Seconds between the heartbeats a running trial records in the study, by which other
            workers know it is alive.
        grace_period: Seconds without a heartbeat after which a running trial counts as stale (its worker died:
            killed, out of memory, a lost node) and the next worker to look resumes it from its last checkpoint;
            null: twice the heartbeat interval.
    """

    space: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 20
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: int = 42
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner_options: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    study_name: str | None = None
    keep: Literal["best", "all"] = "best"
    heartbeat_interval: int = 60
    grace_period: int | None = None


@dataclass(frozen=True)
class Dimension:
    """One key of the search space: a numeric range or a list of choices."""

    key: str
    choices: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(_is_int(v) for v in (self.low, self.high, self.step) if v is not None)

    def grid(self) -> list:
        """Every value, for the grid sampler: the choices, or the stepped range's values."""
        if self.choices is not None:
            return list(self.choices)
        if self.step is None and not self.is_int:
            raise HFTrainError(
                f"tune.space.{self.key} is a range of real numbers, which the grid sampler cannot list: give its "
                f"values as a list, add a `step` (e.g. {{low: {self.low}, high: {self.high}, step: ...}}), or use "
                "sampler: tpe or random."
            )
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        return [self.low + i * step if self.is_int else round(self.low + i * step, 12) for i in range(count)]

    def first(self) -> Any:
        """A value of the dimension, to check the key and its type before the search starts."""
        return self.choices[0] if self.choices is not None else self.low

    def spec(self) -> Any:
        """The dimension as the config gives it, in a canonical form (stored with the study, compared on reruns)."""
        if self.choices is not None:
            return list(self.choices)
        return {name: getattr(self, name) for name in RANGE_KEYS if getattr(self, name) not in (None, False)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _yaml_number(value: Any) -> Any:
    """`1e-5` as the number it means. YAML 1.1 (PyYAML, which reads the configs) takes a float only with a dot,
    `1.0e-5`, and reads `1e-5` as a string; the options of `hftrain fit` are typed and convert it, a range's
    bounds are not. Anything else is returned as it is, for the check to name."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def dimensions(settings: TuneSettings) -> list[Dimension]:
    """The search space as dimensions, each checked: a range needs numbers with low below high (and above 0 on a
    log scale), a list at least one choice."""
    if not isinstance(settings.space, Mapping) or not settings.space:
        raise HFTrainError(
            "tune.space is empty: name at least one `hftrain fit` option to search and its range or choices, e.g. "
            "`tune: {space: {model.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}}}`."
        )
    return [_dimension(str(key), value) for key, value in settings.space.items()]


def _dimension(key: str, value: Any) -> Dimension:
    where = f"tune.space.{key}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise HFTrainError(
                f"{where} is an empty list of choices: give at least one value (two or more to search), e.g. "
                f"`{key}: [16, 32]`, or a range `{{low: …, high: …}}`."
            )
        return Dimension(key, choices=tuple(value))
    if not isinstance(value, Mapping):
        raise HFTrainError(
            f"{where} is {value!r}: give a list of choices (`[16, 32]`) or a range (`{{low: 1.0e-5, high: 1.0e-3, "
            "log: true}`). A fixed value belongs in the task config."
        )
    unknown = [name for name in value if name not in RANGE_KEYS]
    if unknown:
        matches = difflib.get_close_matches(str(unknown[0]), RANGE_KEYS, n=1)
        hint = f" Did you mean {matches[0]}?" if matches else ""
        raise HFTrainError(f"{where} has no setting {unknown[0]!r}.{hint} A range takes {', '.join(RANGE_KEYS)}.")
    low, high, step = (_yaml_number(value.get(name)) for name in ("low", "high", "step"))
    log = value.get("log")
    if not (_is_number(low) and _is_number(high)):
        raise HFTrainError(f"{where} needs numbers `low` and `high`; got low={low!r}, high={high!r}.")
    if low >= high:
        raise HFTrainError(
            f"{where} is an {'empty' if low == high else 'inverted'} range: low={low!r}, high={high!r}. Set low "
            "below high (a single value belongs in the task config, not in the search space)."
        )
    if log and low <= 0:
        raise HFTrainError(f"{where} is on a log scale, so low must be above 0; got {low!r}. Raise low or drop log.")
    if step is not None and (not _is_number(step) or step <= 0 or log):
        raise HFTrainError(f"{where}: step must be a number above 0, and cannot go with log; got step={step!r}.")
    return Dimension(key, low=low, high=high, log=bool(log), step=step)


def parameter_arguments(params: Mapping[str, Any]) -> list[str]:
    """A trial's values as `hftrain fit` options: `--model.learning_rate=0.0003`."""
    return [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in params.items()]


def check_settings(settings: TuneSettings, fit_arguments: list[str]) -> list[Dimension]:
    """Refuse a bad `tune:` section before anything runs; the space's dimensions. Each key of the space, given a
    value of its range, must pass fit's own check of its arguments (the same paragraph and closest option)."""
    if not _is_int(settings.n_trials) or settings.n_trials < 1:
        raise HFTrainError(
            f"tune.n_trials must be a number of trials, 1 or more; got {settings.n_trials!r}. Set it in the search "
            "config's `tune:` section or with --tune.n_trials."
        )
    for name, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("keep", ("best", "all"))):
        if getattr(settings, name) not in allowed:
            raise HFTrainError(f"tune.{name} must be one of {', '.join(allowed)}; got {getattr(settings, name)!r}.")
    for name in ("heartbeat_interval", "grace_period"):
        value = getattr(settings, name)
        if not (value is None and name == "grace_period") and (not _is_int(value) or value < 1):
            raise HFTrainError(f"tune.{name} must be a whole number of seconds, 1 or more; got {value!r}.")
    found = dimensions(settings)
    try:
        preflight.check(["fit", *fit_arguments, *parameter_arguments({d.key: d.first() for d in found})])
    except HFTrainError as err:
        raise HFTrainError(f"In the search space (tune.space): {err}") from None
    return found


def read_arguments(argv: Sequence[str]) -> tuple[TuneSettings, list[str], list[str]]:
    """Split `hftrain tune`'s arguments into the `tune:` settings, the arguments each trial's fit takes, and the
    config files named. A config file that holds only `tune:` is not passed to fit; one that also holds fit's
    sections is passed as a copy without `tune:` (in a temporary folder, under its own name, which names the
    run)."""
    values: dict[str, Any] = {}
    fit_arguments: list[str] = []
    files: list[str] = []
    pairs = preflight.argument_pairs([str(a) for a in argv])
    for key, text in pairs:
        if key == "config":
            files.append(str(text))
            fit_arguments += _config_for_fit(str(text), values)
        elif key.startswith("tune.") or key == "tune":
            _set_tune_value(values, key.removeprefix("tune").lstrip("."), preflight.yaml_value(text))
        else:
            fit_arguments += [f"--{key}"] if text is None else [f"--{key}", text]
    known = {f.name for f in fields(TuneSettings)}
    unknown = [name for name in values if name not in known]
    if unknown:
        matches = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" Did you mean tune.{matches[0]}?" if matches else ""
        raise HFTrainError(
            f"tune.{unknown[0]} is not a setting of the search.{hint} The `tune:` section takes "
            f"{', '.join(sorted(known))} (docs/tuning.md)."
        )
    return TuneSettings(**values), fit_arguments, files


def _set_tune_value(values: dict[str, Any], key: str, value: Any) -> None:
    if not key:
        if isinstance(value, Mapping):
            values.update(value)
        return
    name, _, rest = key.partition(".")
    if rest:  # --tune.space.model.learning_rate '{low: …}'
        values.setdefault(name, {})[rest] = value
    else:
        values[name] = value


def _config_for_fit(file: str, values: dict[str, Any]) -> list[str]:
    path = Path(file)
    if not path.is_file():
        return ["--config", file]  # fit's check names a missing file
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return ["--config", file]  # fit's check names the broken file
    if not isinstance(content, Mapping) or "tune" not in content:
        return ["--config", file]
    section = content["tune"]
    if not isinstance(section, Mapping):
        raise HFTrainError(f"The `tune:` section of {file} must be a mapping of settings (docs/tuning.md).")
    values.update(section)
    rest = {key: value for key, value in content.items() if key != "tune"}
    if not rest:
        return []
    copy = Path(tempfile.mkdtemp(prefix="hftrain-tune-")) / path.name
    copy.write_text(yaml.safe_dump(rest, sort_keys=False), encoding="utf-8")
    return ["--config", str(copy)]
