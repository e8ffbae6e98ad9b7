"""Small helpers shared by the tests: run the CLI in-process and write configs."""

import hashlib
from pathlib import Path

import yaml

from hftrain.cli import main

TEXT_CLASSIFICATION = "hftrain.tasks.text_classification.TextClassification"
TEXT_CLASSIFICATION_DATA = "hftrain.tasks.text_classification.TextClassificationData"
# DDP over gloo on CPU instead of the GPU settings of a trainer preset
CPU_DDP = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.precision", "32-true"]


def run_cli(*args: str) -> int:
    """Run `hftrain <args>` in this process; return its exit status (0 when it returns normally)."""
    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


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
