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
from huggingface_hub import metadata_load

from hftrain.core.runs import epoch_number

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


def _metrics(entry: Mapping[str, Any] | None, title: str, where: str | None = None) -> list[str]:
    if not entry:
        return [f"{title}: none (no validation ran)."]
    where = where or f"epoch {epoch_number(entry)}, step {entry.get('step')}"
    # counts such as NER's `val/support_PER` (gold entities per type) describe the data, not the model
    metrics = {k: v for k, v in entry.items() if k not in ("epoch", "step") and "/support_" not in k}
    return [f"{title} ({where}):", "", *_table(metrics, ("metric", "value"))]


def base_model_of(model_name_or_path: str) -> tuple[str, str | None]:
    """The base model as the card names it, and its Hub id for the `base_model` metadata (None when it has none).

    A Hub id is both. A local folder is named by its last two path parts (a machine's absolute path means
    nothing to a reader) and has no Hub id, as in the HF Trainer's card, unless it is a model whose own card
    names one: a run's `hf_model/` fine-tuned further keeps the Hub model it came from.
    """
    path = Path(model_name_or_path).expanduser()
    if not path.is_dir():
        return model_name_or_path, model_name_or_path
    card = path / "README.md"
    hub_id = (metadata_load(card) or {}).get("base_model") if card.is_file() else None
    local = "/".join(path.resolve().parts[-2:])
    if not isinstance(hub_id, str):
        return local, None
    return f"{local} (fine-tuned from {hub_id})", hub_id


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
    """The card's text. `base_model` is `model_name_or_path`; `data` maps each split to where it came from;
    `results` is the run's `results.json` (its `monitor`, `best` and `final`)."""
    base_name, hub_id = base_model_of(base_model)
    metadata: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": pipeline_tag, "tags": ["hftrain"]}
    if hub_id:
        metadata["base_model"] = hub_id
    if hub_dataset:
        metadata["datasets"] = [hub_dataset]
    monitor = results.get("monitor")
    body = [
        f"# {name}",
        "",
        f"A {pipeline_tag.replace('-', ' ')} model fine-tuned from `{base_name}` with hftrain (PyTorch "
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


def with_test_results(card: str, where: str, metrics: Mapping[str, Any]) -> str:
    """`card` with the metrics of a test of its weights (`where`: which checkpoint) at the end of its results,
    replacing those of an earlier test."""
    results, hyperparameters = card.split("\n## Hyperparameters\n", 1)
    results = results.split("\nTest (", 1)[0].rstrip("\n")
    test = "\n".join(_metrics(metrics, "Test", where))
    return f"{results}\n\n{test}\n\n## Hyperparameters\n{hyperparameters}"
