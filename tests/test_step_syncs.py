"""Host-device synchronizations on the training step path, counted on the CPU.

On a GPU, every `.item()`, `.tolist()`, `.cpu()`, `bool(tensor)`, `int(tensor)`, printed tensor, boolean-mask
index or `nonzero` makes the host wait until the device has finished all queued work, so a small model's step
runs at the speed of the Python loop instead of overlapping with it. Writing logs needs numbers, so a sync
every `log_every_n_steps` is the price of logging; any other step must have none. CI has no GPU, so these
tests watch the calls that would sync (a `TorchFunctionMode` sees every one made from Python) while a tiny
model trains through `HFTrainCLI` with the CLI's defaults, and say which steps had them and from where.
Calls made while a batch is loaded and collated are left out (in a GPU run those tensors are still on the
host), and calls inside transformers' model code are set apart: every trainer pays for them, the bare
PyTorch loop too.

What this cannot see: syncs inside C++ kernels, and copies between host and device (`.to(device)`: on
the CPU host and device are one, so a copy to the host looks like any other `.to`). On a GPU,
`test_no_sync_on_gpu_between_logging_steps` catches those with torch's `torch.cuda.set_sync_debug_mode`.
"""

import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import classification_config
from lightning.pytorch import Callback
from torch.overrides import TorchFunctionMode

from hftrain.cli import HFTrainCLI

SYNCING = {
    "item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__",
    "__format__", "__repr__", "__str__", "nonzero", "masked_select", "unique", "unique_consecutive",
}  # fmt: skip
HOST_SIDE = ("torch/utils/data/", "torchdata/", "lightning/pytorch/loops/fetchers.py", "transformers/data/")
MODEL_CODE = ("transformers/models/", "transformers/masking_utils.py", "transformers/modeling_utils.py")
TORCH = str(Path(torch.__file__).parent)
# Steps 3..7 are watched: the first two carry one-off work, the last one the end of training, and with 12
# steps per epoch (96 rows, batch 8) no epoch ends among them. Steps 3 and 6 write logs.
STEPS, LOG_EVERY = 8, 3
WATCHED = range(3, STEPS)
LOGGING_STEPS = {step for step in WATCHED if step % LOG_EVERY == 0}


def _syncs(name: str, args: tuple) -> bool:
    if name in SYNCING:
        return True
    if name == "__getitem__" and len(args) > 1:  # a boolean mask's result size is only known on the device
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    return name == "where" and len(args) == 1


def _callers() -> list[str]:
    """The frames outside torch that led to the call, innermost (the caller) first."""
    frames, frame = [], sys._getframe(2)
    while frame is not None and len(frames) < 8:
        path = frame.f_code.co_filename
        if not path.startswith(TORCH):
            short = path.split("site-packages/")[-1].split(str(Path(__file__).parents[1]) + "/")[-1]
            frames.append(f"{short}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return frames


class SyncCounter(TorchFunctionMode):
    """Records each syncing tensor call made in a watched step: (step, call and callers)."""

    def __init__(self) -> None:
        super().__init__()
        self.step: int | None = None  # the step being run, or None when not watching
        self.calls: list[tuple[int, str]] = []

    def on_step(self, step: int) -> None:
        self.step = step if step in WATCHED else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.step is not None and _syncs(getattr(func, "__name__", ""), args):
            callers = _callers()
            if callers and not any(part in line for line in callers for part in HOST_SIDE):
                name = getattr(func, "__name__", func)
                self.calls.append((self.step, f"{name} at {callers[0]} via {' <- '.join(callers[1:])}"))
        return func(*args, **kwargs or {})

    def framework(self) -> list[tuple[int, str]]:
        """The calls not made by transformers' model code itself."""
        made_in = [(step, call, call.split(" via ")[0]) for step, call in self.calls]
        return [(step, call) for step, call, site in made_in if not any(part in site for part in MODEL_CODE)]

    @staticmethod
    def report(calls: list[tuple[int, str]]) -> str:
        return "\n".join(f"step {step}: {call}" for step, call in calls)


def fit_with_cli_defaults(tiny_bert, sentiment_files, tmp_path, on_step, *callbacks, accelerator="cpu") -> None:
    """Train `STEPS` steps through `HFTrainCLI` with its default callbacks, logger and progress bar, calling
    `on_step(step)` as each step's loop iteration begins (before its batch is fetched)."""
    config = classification_config(
        tmp_path / "syncs.yaml",
        tiny_bert,
        {k: v for k, v in sentiment_files.items() if k in ("train", "validation")},
        data__batch_size=8,
        trainer__max_steps=STEPS,
        trainer__log_every_n_steps=LOG_EVERY,
        trainer__enable_progress_bar=True,
        trainer__num_sanity_val_steps=0,
        trainer__accelerator=accelerator,
    )
    cli = HFTrainCLI(args=["--config", str(config)], run=False)
    cli.trainer.callbacks.extend(callbacks)
    # one iteration of Lightning's epoch loop (`advance`, then `on_advance_end`) makes one step, from fetching
    # the batch to writing its logs; hooks cannot mark it, since batch transfer runs before any of them
    loop = cli.trainer.fit_loop.epoch_loop
    advance = loop.advance

    def advance_and_tell(data_fetcher) -> None:
        on_step(cli.trainer.global_step + 1)
        advance(data_fetcher)

    loop.advance = advance_and_tell
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == STEPS


def test_counter_sees_a_per_step_item(tiny_bert, sentiment_files, tmp_path):
    """The instrument itself: a callback reading the loss is found in every watched step, and the logging
    steps' own syncs (the logger's) in those steps only."""

    class ReadsLoss(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            outputs["loss"].item()

    counter = SyncCounter()
    with counter:
        fit_with_cli_defaults(tiny_bert, sentiment_files, tmp_path, counter.on_step, ReadsLoss())
    mine = [step for step, call in counter.calls if call.startswith("item at tests/test_step_syncs.py")]
    assert mine == list(WATCHED), counter.report(counter.calls)
    assert {step for step, _ in counter.framework()} - set(mine) <= LOGGING_STEPS


def test_no_sync_between_logging_steps(tiny_bert, sentiment_files, tmp_path):
    counter = SyncCounter()
    with counter:
        fit_with_cli_defaults(tiny_bert, sentiment_files, tmp_path, counter.on_step)
    between = [(step, call) for step, call in counter.framework() if step not in LOGGING_STEPS]
    assert not between, "host syncs on steps that write no logs:\n" + counter.report(between)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: torch reports real syncs there")
def test_no_sync_on_gpu_between_logging_steps(tiny_bert, sentiment_files, tmp_path):
    """The same on a GPU, where torch itself warns at every sync (C++ ones and blocking copies too); a
    warning names the innermost Python line that called into torch."""

    marks: list[tuple[int | None, int]] = []  # (step beginning, warnings caught before it)

    def on_step(step: int) -> None:
        marks.append((step if step in WATCHED else None, len(caught)))
        torch.cuda.set_sync_debug_mode("warn" if step in WATCHED else "default")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_with_cli_defaults(tiny_bert, sentiment_files, tmp_path, on_step, accelerator="gpu")
    torch.cuda.set_sync_debug_mode("default")
    syncs = []
    for (step, start), (_, end) in zip(marks, [*marks[1:], (None, len(caught))], strict=True):
        if step is not None:
            found = [w for w in caught[start:end] if "synchronizing CUDA operation" in str(w.message)]
            syncs += [(step, f"{w.filename}:{w.lineno}") for w in found]
    between = [(step, site) for step, site in syncs if step not in LOGGING_STEPS]
    between = [(step, site) for step, site in between if not any(part in site for part in MODEL_CODE)]
    assert not between, "host syncs on steps that write no logs:\n" + SyncCounter.report(between)
