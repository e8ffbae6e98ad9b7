"""Each validation of a trial reports to its study, and a trial the pruner stops ends there, on every rank alike.

Optuna's own Lightning callback (optuna-integration's `PyTorchLightningPruningCallback`) asks the study on every
rank and raises `TrialPruned` out of the fit: under DDP the ranks can decide apart and the others hang, and the
run ends as a crash without its results, export or last checkpoint. Here rank 0 reports and asks, broadcasts the
answer, and a pruned trial stops as a fit that reached its limits does: the run folder is complete.
"""

from typing import Any

import optuna
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from hftrain.core.monitor import required_monitored_metric


class TrialPruning(Callback):
    """Report the monitored metric of each validation to `trial` (on rank 0; None on the other ranks) as
    intermediate value number 1, 2, … (validations, not steps, so trials of other batch sizes compare), and stop
    the fit when the pruner says so. The count of validations is kept in checkpoints: a resumed trial goes on
    numbering where it stood."""

    def __init__(self, trial: optuna.Trial | None) -> None:
        self.trial = trial
        self.validations = 0
        self.pruned = False

    @property
    def state_key(self) -> str:
        return "TrialPruning"

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            monitor, _ = required_monitored_metric(trainer, pl_module, "a search's objective")
            value = trainer.callback_metrics.get(monitor)
            if value is not None:
                self.trial.report(float(value), self.validations)
                prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned = True
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = state_dict.get("validations", 0)
