"""The classification loss with the HF Trainer's `label_smoothing_factor` and per-class weights, for the
tasks that offer them (text and token classification; without either, tasks keep the model's own loss),
and the token weighting of token-level losses across accumulated micro-batches and ranks."""

from collections.abc import Iterable

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


class TokenWeighting:
    """A token-level loss averaged over every token of an optimizer step, as one large batch would average
    it, under gradient accumulation and data parallelism: the HF Trainer's `num_items_in_batch` with
    `average_tokens_across_devices`. Lightning averages the micro-batches' (and DDP the ranks') mean losses
    instead, which gives each token of a short micro-batch more weight than a token of a long one.

    Each micro-batch's mean loss is backpropagated times its token count over a fixed power of two near the
    first micro-batch's count (`scale`, agreed across ranks once), so the gradients keep their usual size
    for mixed-precision loss scaling, and a power of two changes no bit of the result (a resumed run may pick
    another). When the step's gradients are complete they are multiplied by scale × micro-batches × ranks
    over the step's token count summed across ranks. The counts stay on the device: no host sync.
    """

    def __init__(self) -> None:
        self.scale: torch.Tensor | None = None
        self.tokens: torch.Tensor | None = None

    def weigh(self, loss: torch.Tensor, tokens: torch.Tensor, distributed: bool) -> torch.Tensor:
        """The loss to backpropagate for a micro-batch whose mean `loss` is over `tokens` positions."""
        tokens = tokens.float()
        if self.scale is None:
            self.scale = torch.exp2(torch.round(torch.log2(tokens.clamp(min=1))))
            if distributed:
                torch.distributed.all_reduce(self.scale, op=torch.distributed.ReduceOp.MAX)
        self.tokens = tokens if self.tokens is None else self.tokens + tokens
        return loss * (tokens / self.scale)

    def finish_step(self, parameters: Iterable[torch.nn.Parameter], micro_batches: int, ranks: int) -> None:
        """Turn the step's accumulated, rank-averaged gradients into the mean over all its tokens."""
        if self.tokens is None:
            return
        total, self.tokens = self.tokens, None
        if ranks > 1:
            torch.distributed.all_reduce(total)
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, self.scale * (micro_batches * ranks) / total.clamp(min=1))
