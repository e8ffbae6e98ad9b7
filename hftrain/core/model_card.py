"""The model card (`README.md`) of an exported `hf_model/`: what a model is, how it was made, how good it got.

The HF Trainer writes one on `save_model`/`push_to_hub`; `huggingface_hub.ModelCard` reads it, and the Hub
shows it as the model's page. Its YAML header holds the Hub metadata (pipeline tag, base model, datasets);
the body the task, the data, the best and final metrics, the hyperparameters and the framework versions.
"""

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

FRAMEWORKS = ("hftrain", "transformers", "torch", "lightning", "datasets", "tokenizers")


def framework_versions() -> dict[str, str]:
    versions = {}
    for package in FRAMEWORKS:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:  # hftrain run from a source tree without installing it
            versions[package] = "not installed"
    return versions


def _table(rows: Mapping[str, Any], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    for key, value in rows.items():
        shown = (f"{value:.6g}" if isinstance(value, float) else str(value)).replace("|", "\\|")
        lines.append(f"| {key} | {shown} |")
    return lines


def _metrics(entry: Mapping[str, Any] | None, title: str) -> list[str]:
    if not entry:
        return [f"{title}: none (no validation ran)."]
    where = f"epoch {entry.get('epoch')}, step {entry.get('step')}"
    metrics = {k: v for k, v in entry.items() if k not in ("epoch", "step")}
    return [f"{title} ({where}):", "", *_table(metrics, ("metric", "value"))]


def model_card(
    name: str,
    pipeline_tag: str,
    base_model: str,
    data: Mapping[str, str],
    hub_dataset: str | None,
    hyperparameters: Mapping[str, Any],
    results: Mapping[str, Any],
    versions: Mapping[str, str],
) -> str:
    """The card's text. `data` maps each split to where it came from; `results` is the run's `results.json`
    (its `monitor`, `best` and `final`)."""
    metadata: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": pipeline_tag, "tags": ["hftrain"]}
    if not Path(base_model).exists():  # a Hub id; a local folder means nothing on the Hub
        metadata["base_model"] = base_model
    if hub_dataset:
        metadata["datasets"] = [hub_dataset]
    monitor = results.get("monitor")
    body = [
        f"# {name}",
        "",
        f"A {pipeline_tag.replace('-', ' ')} model fine-tuned from `{base_model}` with hftrain (PyTorch "
        "Lightning). This folder holds the "
        + ("best checkpoint" + (f" by `{monitor}`" if monitor else "") if results.get("best") else "final weights")
        + ", loadable with `transformers` alone.",
        "",
        "## Data",
        "",
        *_table(data, ("split", "source")),
        "",
        "## Results",
        "",
        *_metrics(results.get("best"), "Best"),
        "",
        *_metrics(results.get("final"), "Final"),
        "",
        "## Hyperparameters",
        "",
        *_table(hyperparameters, ("setting", "value")),
        "",
        "## Framework versions",
        "",
        *[f"- {package} {number}" for package, number in versions.items()],
        "",
    ]
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n" + "\n".join(body)
