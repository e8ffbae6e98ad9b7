"""What the generating tasks (seq2seq, causal LM) share: their generation settings and the text tables of
example outputs they write to TensorBoard."""

import json
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from transformers import GenerationConfig, PreTrainedModel

from hftrain.core import internals
from hftrain.core.errors import HFTrainError


def set_generation_config(model: PreTrainedModel, strict: bool = False, **settings: Any) -> GenerationConfig:
    """Put `settings` on top of the model's own generation config, so that evaluation, `predict` and the
    exported `hf_model/` (whose `generation_config.json` is written from it) all generate the same way.

    A setting given as None is cleared. `strict` refuses combinations transformers only warns about.
    """
    config = GenerationConfig.from_dict(model.generation_config.to_dict())
    try:
        if settings.get("num_beams", 1) < 1:
            raise ValueError(f"num_beams must be 1 or more, got {settings['num_beams']}.")
        config.update(**settings)
        config.validate(strict=strict)
    except ValueError as err:
        raise HFTrainError(
            f"The generation settings are invalid: {err} (the model '{model.name_or_path}' with this run's "
            f"settings). Change {', '.join(f'model.{name}' for name in settings)}, or the model's "
            "generation_config.json."
        ) from err
    internals.mark_generation_config_as_set(config)
    model.generation_config = config
    return config


def log_text_table(module: LightningModule, tag: str, header: list[str], rows: list[tuple[str, ...]]) -> None:
    """Write rows of text to TensorBoard as a Markdown table, each cell quoted (JSON) so that newlines and
    spaces show as they are; on rank 0, never for the sanity check's untrained outputs."""
    if not rows or module.trainer.sanity_checking or not module.trainer.is_global_zero:
        return
    cells = [[json.dumps(text, ensure_ascii=False).replace("|", "\\|") for text in row] for row in rows]
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(f'`{cell}`' for cell in row)} |" for row in cells]
    for logger in module.loggers:
        if isinstance(logger, TensorBoardLogger):
            # at the step the validation's scalars are logged at, so TensorBoard lines them up
            logger.experiment.add_text(tag, "\n".join(lines), global_step=internals.logged_step(module.trainer))
