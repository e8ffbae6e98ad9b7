"""Stop, then continue: a fit stopped by Ctrl-C (in a Jupyter kernel, the stop button) raises KeyboardInterrupt
after saving; `run.fit(epochs=1)` then finishes the cut epoch, and a later Ctrl-C stops that fit too. The
interrupt comes from outside, as a user's does: Jupyter's own `interrupt_kernel` (SIGINT to the kernel),
and `os.kill(pid, SIGINT)` to a Python process."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import TESTS, classification_config
from test_lifecycle import STEPS_PER_EPOCH, files

PAUSE_SECONDS = 3.0  # the pause the interrupt lands in: far longer than the test takes to send it
PAUSED_AT = (3, STEPS_PER_EPOCH + 3)  # in the first fit's epoch, and in the epoch after the continued one


def setup_code(folder: Path, model: str) -> str:
    """Python that builds a 1-epoch run of 12 steps whose optimizer steps 3 and 15 pause (after writing a file
    in `paused-3/`, `paused-15/`) long enough for an interrupt to arrive."""
    config = classification_config(folder / "stop.yaml", model, files(folder), data__batch_size=8)
    pauses = []
    for step in PAUSED_AT:
        (folder / f"paused-{step}").mkdir()
        pauses.append(f"PauseInOptimizerStep({step}, {PAUSE_SECONDS}, {str(folder / f'paused-{step}')!r})")
    return textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import hftrain
        from faults import PauseInOptimizerStep
        run = hftrain.Run({str(config)!r}, trainer={{"max_epochs": 1, "enable_progress_bar": False}})
        run.trainer.callbacks += [{", ".join(pauses)}]
        """)


# what each fit is, and the step whose pause it is interrupted in (None: not interrupted)
FITS = [("run.fit()", PAUSED_AT[0]), ("run.fit(epochs=1)", None), ("run.fit(epochs=1)", PAUSED_AT[1])]


def paused(folder: Path, step: int) -> bool:
    return (folder / f"paused-{step}" / "rank0").is_file()


def assert_stopped_and_continued(outcomes: list[tuple[str, int]]) -> None:
    """Each fit's (KeyboardInterrupt message or "", global step after it): stopped at the step after each pause,
    and the continue in between finished the cut epoch without a signal."""
    (first, first_step), (second, second_step), (third, third_step) = outcomes
    assert first_step == PAUSED_AT[0] + 1 and f"Stopped by SIGINT at step {first_step}" in first, outcomes
    assert "run.fit(epochs=...) continues from it" in first
    assert second == "" and second_step == STEPS_PER_EPOCH, outcomes  # the cut epoch finished
    assert third_step == PAUSED_AT[1] + 1 and f"Stopped by SIGINT at step {third_step}" in third, outcomes


def test_ctrl_c_in_python_stops_a_fit_and_a_continue_finishes_the_cut_epoch(tiny_bert, tmp_path):
    report = "print(json.dumps([stopped, run.trainer.global_step]), flush=True)"
    fits = "".join(
        f"try:\n    {fit}\n    stopped = ''\nexcept KeyboardInterrupt as interrupt:\n    stopped = str(interrupt)\n"
        f"{report}\n"
        for fit, _ in FITS
    )
    script = tmp_path / "stop.py"
    script.write_text(setup_code(tmp_path, tiny_bert) + "import json\n" + fits)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for _, step in FITS:
            while step is not None and not paused(tmp_path, step) and process.poll() is None:
                time.sleep(0.05)
            if step is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert_stopped_and_continued([tuple(json.loads(line)) for line in out.splitlines()])


@pytest.mark.service  # a real Jupyter kernel (nbclient)
def test_the_stop_button_stops_a_fit_in_a_kernel_and_a_continue_finishes_the_cut_epoch(tiny_bert, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    cells = [setup_code(tmp_path, tiny_bert)]
    for fit, _ in FITS:
        cells += [fit, "run.trainer.global_step"]  # each fit, then the step it left the run at
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])

    async def execute() -> None:
        client = nbclient.NotebookClient(
            notebook, timeout=300, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": "."}}
        )
        async with client.async_setup_kernel(env={**os.environ, "OMP_NUM_THREADS": "1"}):
            await client.async_execute_cell(notebook.cells[0], 0)
            for index, (_, step) in enumerate(FITS):
                running = asyncio.create_task(client.async_execute_cell(notebook.cells[1 + 2 * index], 1 + 2 * index))
                while step is not None and not paused(tmp_path, step) and not running.done():
                    await asyncio.sleep(0.05)
                if step is not None and not running.done():
                    await client.km.interrupt_kernel()  # what Jupyter's stop button does
                await running
                await client.async_execute_cell(notebook.cells[2 + 2 * index], 2 + 2 * index)

    asyncio.run(execute())
    outcomes = []
    for fit, probe in zip(notebook.cells[1::2], notebook.cells[2::2], strict=True):
        errors = [o for o in fit.outputs if o.output_type == "error"]
        assert errors == [] or errors[0]["ename"] == "KeyboardInterrupt", errors
        outcomes.append((errors[0]["evalue"] if errors else "", int(probe.outputs[0]["data"]["text/plain"])))
    assert_stopped_and_continued(outcomes)
