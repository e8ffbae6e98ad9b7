"""Metrics a user adds in the config (`model.custom_metrics`), logged beside the task's own.

The HF Trainer takes a `compute_metrics(EvalPrediction)` function; here a config names either a torchmetrics
`Metric` class (updated batch by batch like the task's own metrics, synced across DDP ranks by torchmetrics),
or a plain function of all predictions and labels, called once per validation or test. What "predictions and
labels" are depends on the task and is listed with `TaskModule.custom_metrics`.
"""

import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from hftrain.core.errors import HFTrainError

CustomMetricSpec = str | dict[str, Any]


def import_object(path: str, setting: str) -> Any:
    """The object an import path (`package.module.name`) names, or an error saying what to fix."""
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise HFTrainError(
            f"{setting}: could not import '{path}' ({type(err).__name__}: {err}). Give the full import path of "
            "a torchmetrics Metric class or of a function `f(predictions, labels)`; its module must be "
            "importable where hftrain runs (installed, or its folder on PYTHONPATH)."
        ) from err


def build_custom_metric(name: str, spec: CustomMetricSpec) -> Metric:
    """A metric from its config entry: a class or function path, or `{class_path, init_args}` for a Metric
    class that takes arguments (e.g. `torchmetrics.classification.MulticlassF1Score` with `num_classes`)."""
    setting = f"model.custom_metrics.{name}"
    if isinstance(spec, str):
        path, arguments = spec, {}
    elif isinstance(spec.get("class_path"), str) and set(spec) <= {"class_path", "init_args"}:
        path, arguments = spec["class_path"], dict(spec.get("init_args") or {})
    else:
        raise HFTrainError(
            f"{setting} must be an import path or {{class_path: ..., init_args: {{...}}}}, got {spec!r}."
        )
    target = import_object(path, setting)
    if isinstance(target, type) and issubclass(target, Metric):
        try:
            return target(**arguments)
        except (TypeError, ValueError) as err:
            raise HFTrainError(f"{setting}: {path}({arguments}) failed: {err}. Fix its init_args.") from err
    if callable(target) and not isinstance(target, type) and not arguments:
        return FunctionMetric(target)
    raise HFTrainError(
        f"{setting}: '{path}' is neither a torchmetrics Metric class nor a function (init_args go with Metric "
        "classes only)."
    )


class FunctionMetric(Metric):
    """Collect every batch's predictions and labels and call `function(predictions, labels)` on all of them.

    Tensors are concatenated (and gathered across DDP ranks by torchmetrics); text (lists of strings) is
    gathered with `all_gather_object`, which torchmetrics' state sync does not do. The function returns a
    number, or a dict of numbers (each logged as `<stage>/<name>_<key>`).
    """

    full_state_update = False

    def __init__(self, function: Callable[[Any, Any], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.function = function
        self.add_state("tensor_predictions", [], dist_reduce_fx="cat")
        self.add_state("tensor_labels", [], dist_reduce_fx="cat")
        self.text_predictions: list = []
        self.text_labels: list = []

    def update(self, predictions: torch.Tensor | list, labels: torch.Tensor | list) -> None:
        if isinstance(predictions, torch.Tensor):
            self.tensor_predictions.append(predictions.detach())
            self.tensor_labels.append(labels.detach())
        else:
            self.text_predictions.extend(predictions)
            self.text_labels.extend(labels)

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.tensor_predictions:
            predictions, labels = dim_zero_cat(self.tensor_predictions), dim_zero_cat(self.tensor_labels)
        else:
            predictions, labels = _gathered(self.text_predictions), _gathered(self.text_labels)
        value = self.function(predictions, labels)
        if isinstance(value, dict):
            return {key: torch.as_tensor(v, dtype=torch.float32) for key, v in value.items()}
        return torch.as_tensor(value, dtype=torch.float32)

    def reset(self) -> None:
        super().reset()
        self.text_predictions, self.text_labels = [], []


def _gathered(values: list) -> list:
    """`values` of every rank, in rank order (the values themselves on a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, values)
    return [value for rank_values in everyone for value in rank_values]
