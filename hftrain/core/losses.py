"""The classification loss with the HF Trainer's `label_smoothing_factor` and per-class weights, for the
tasks that offer them (text and token classification). Without either, tasks keep the model's own loss."""

import torch
import torch.nn.functional as F

from hftrain.core.errors import HFTrainError

IGNORE_INDEX = -100


def class_weight_tensor(class_weights: dict[str, float] | None, label_names: list[str]) -> torch.Tensor | None:
    """Weights in label-id order from `{label name: weight}`; labels not named weigh 1."""
    if not class_weights:
        return None
    unknown = sorted(set(class_weights) - set(label_names))
    if unknown:
        raise HFTrainError(
            f"model.class_weights names {', '.join(map(repr, unknown))}, which the label set {label_names} does "
            "not have. Use the label names as they appear in the data (or in data.label_names)."
        )
    if any(weight < 0 for weight in class_weights.values()):
        raise HFTrainError(f"model.class_weights must be 0 or more, got {class_weights}.")
    return torch.tensor([float(class_weights.get(name, 1.0)) for name in label_names])


def check_label_smoothing(factor: float) -> None:
    if not 0 <= factor < 1:
        raise HFTrainError(f"model.label_smoothing_factor must be in [0, 1), got {factor}.")


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None, label_smoothing: float
) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100 (weighted by class when `weight` is
    given), with the target smoothed as the HF Trainer's `LabelSmoother` does: (1 - factor) on the gold
    class plus factor spread evenly over all classes."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1).long(),
        weight=weight,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )
