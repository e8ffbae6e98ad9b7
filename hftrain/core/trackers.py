"""What a run records in an experiment tracker (MLflow, W&B, Comet, LitLogger) besides what Lightning logs to
every logger (the module's hyperparameters, the metrics): the resolved config, as a file of the tracker's run.

TensorBoard's and CSV's loggers write into the run folder, which holds `config.yaml` already. The trackers keep
their runs elsewhere (a tracking server, a folder or platform of their own), so the config is attached to the
tracker's run too, in the tracker's own way: an MLflow or W&B artifact, a Comet asset, a LitLogger file.
"""

from pathlib import Path

from lightning.pytorch.loggers import CometLogger, LitLogger, Logger, MLFlowLogger, WandbLogger


def attach_file(logger: Logger, path: Path) -> None:
    """Store the file `path` with the logger's run, where the logger has runs that hold files."""
    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_artifact(logger.run_id, str(path))
    elif isinstance(logger, WandbLogger):  # an artifact: a run file named config.yaml would be W&B's own config
        import wandb

        artifact = wandb.Artifact(f"run-{logger.experiment.id}-{path.stem}", type="config")
        artifact.add_file(str(path))
        logger.experiment.log_artifact(artifact)
    elif isinstance(logger, CometLogger):
        logger.experiment.log_asset(str(path))
    elif isinstance(logger, LitLogger):
        logger.log_file(str(path))
