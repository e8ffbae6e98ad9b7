"""Small helpers shared by the tests: run the CLI in-process or as a process, write configs and data files."""

import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

from hftrain.cli import main

TESTS = REPO / "tests"

TEXT_CLASSIFICATION = "hftrain.tasks.text_classification.TextClassification"
TEXT_CLASSIFICATION_DATA = "hftrain.tasks.text_classification.TextClassificationData"
# DDP over gloo on CPU instead of the GPU settings of a trainer preset
CPU_DDP = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.precision", "32-true"]


def run_cli(*args: str) -> int:
    """Run `hftrain <args>` in this process (`tune` through its own entry, as the `hftrain` command does); return
    its exit status (0 when it returns normally)."""
    argv = [str(a) for a in args]
    try:
        if argv[:1] == ["tune"]:
            from hftrain.tuning.search import main as tune

            tune(argv[1:])
        else:
            main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def hftrain(*args, env: dict[str, str] | None = None, wait: bool = True):
    """Start `python -m hftrain <args>` with one thread (the machine is shared) and the tests folder importable
    (for fault callbacks): the finished process, or with `wait=False` the running one, output in `stdout`."""
    command = [sys.executable, "-m", "hftrain", *map(str, args)]
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=600)


def free_port() -> int:
    """A TCP port free on this machine now, for a DDP rendezvous (`MASTER_PORT`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes_on_localhost(config, *args) -> list[str]:
    """What each node of a cluster without SLURM runs, both nodes on this machine: `hftrain fit` of `config` on
    CPU DDP with `--trainer.num_nodes 2`, started together with NODE_RANK 0 and 1. Both must succeed; their
    outputs."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    command = ["fit", "--config", config, *CPU_DDP, "--trainer.num_nodes", 2, "--trainer.devices", 1, *args]
    nodes = [hftrain(*command, env={**env, "NODE_RANK": str(rank)}, wait=False) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)
    return outputs


def hftrain_ok(*args, env: dict[str, str] | None = None) -> str:
    """Run `hftrain <args>` as a process that must succeed; its output."""
    done = hftrain(*args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def load_script(name: str):
    """A script of `scripts/` as a module (the model builders the tests share with users)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def classification_config(path: Path, model: str, files: dict[str, str], **overrides) -> Path:
    """Write a text-classification config for the tiny model; `overrides` are dotted keys like
    `data.batch_size=8` given as `data__batch_size=8`."""
    config = {
        "model": {"class_path": TEXT_CLASSIFICATION, "init_args": {"model_name_or_path": model, "learning_rate": 1e-2}},
        "data": {
            "class_path": TEXT_CLASSIFICATION_DATA,
            "init_args": {f"{split}_file": file for split, file in files.items()} | {"batch_size": 16},
        },
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False},
    }
    for key, value in overrides.items():
        section, name = key.split("__", 1)
        target = config[section]["init_args"] if section in ("model", "data") else config.setdefault(section, {})
        target[name] = value
    path.write_text(yaml.safe_dump(config))
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes: to prove a failed run changed nothing."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


TABLE_HEADER = "| `TrainingArguments` / script flag | hftrain config key |"
CONFIG_KEY = re.compile(
    r"^((?:model|data)\.init_args\.\w+|(?:trainer|checkpoint)\.[\w.]+|seed_everything)(?::\s*(\S+))?$"
)


def readme_table() -> list[tuple[list[str], list[tuple[str, str | None]]]]:
    """docs/migration.md's table of HF names -> hftrain config keys: per row, the HF names (`max_steps`) and the
    config keys with the value a switch flag stands for (`trainer.precision: 16-mixed` -> ("…", "16-mixed"))."""
    lines = (REPO / "docs" / "migration.md").read_text().splitlines()
    start = lines.index(TABLE_HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        names_cell, keys_cell = line.strip("|").split(" | ", 1)
        names = [n for n in re.findall(r"`([^`]+)`", names_cell) if re.fullmatch(r"\w+", n)]
        keys = [(m.group(1), m.group(2)) for k in re.findall(r"`([^`]+)`", keys_cell) if (m := CONFIG_KEY.match(k))]
        rows.append((names, keys))
    return rows


def hf_flag_table() -> dict[str, tuple[str, str | None] | None]:
    """HF flag name -> (config key, switch value), or None for flags with no key (`do_train`: the subcommand)."""
    table: dict[str, tuple[str, str | None] | None] = {}
    for names, keys in readme_table():
        for i, name in enumerate(names):
            table[name] = keys[i] if len(keys) == len(names) else (keys[0] if keys else None)
    return table


def translate_hf_flags(argv: list[str]) -> list[str]:
    """An HF example script's flags (`--max_steps=10`, `--do_train`, `--seed 7`) as hftrain flags, through the
    migration table (docs/migration.md); a switch without a value takes the table's value, or `true`."""
    table = hf_flag_table()
    translated, i = [], 0
    while i < len(argv):
        flag, _, value = argv[i].removeprefix("--").partition("=")
        if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 1
        i += 1
        if flag not in table:
            raise KeyError(f"--{flag} is not in docs/migration.md's table")
        if table[flag] is None:
            continue
        key, switch_value = table[flag]
        translated.append(f"--{key}={value or switch_value or 'true'}")
    return translated


def quiet_trainer(**settings):
    """A plain Lightning Trainer that only trains: no logger, checkpoints, progress bar, summary or validation."""
    from lightning.pytorch import Trainer

    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return Trainer(**quiet, enable_model_summary=False, limit_val_batches=0, **settings)
