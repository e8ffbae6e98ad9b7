"""The progress display in its three settings: a log file, a terminal, a Jupyter notebook (also run in a real kernel
by tests/test_notebooks.py)."""

import os
import re
import sys

import pytest
from helpers import classification_config

import hftrain
from hftrain.core import progress

FIELDS = re.compile(
    r"epoch (\d)/2 · step \d+/12 · loss [\d.e-]+ · lr [\d.e+-]+ · [\d.]+ samples/s · \d+:\d\d ETA \d+:\d\d"
)


def refresh_every_step(run: hftrain.Run) -> None:
    next(c for c in run.trainer.callbacks if isinstance(c, progress.TrainingProgress)).refresh_seconds = 0


@pytest.fixture
def run(tiny_bert, sentiment_files, tmp_path) -> hftrain.Run:
    config = classification_config(tmp_path / "sentiment.yaml", tiny_bert, sentiment_files)
    return hftrain.Run(config, trainer={"enable_progress_bar": True, "max_epochs": 2})


def test_a_log_file_gets_whole_lines_one_per_epoch_end_and_between_them_one_per_interval(run, capsys, monkeypatch):
    run.fit()  # a few seconds: no 30 s interval passes, so only the epoch ends are written
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [FIELDS.match(line).group(1) for line in lines] == ["1", "2"]
    assert all("val/accuracy" in line for line in lines) and "\r" not in "".join(lines)

    clock = iter(range(0, 1000, 10))  # 10 s between two updates
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    output = progress.LineOutput(log_every=30)
    for step in range(10):
        output.show(f"step {step}")
    output.show("end of epoch", final=True)
    assert capsys.readouterr().out.splitlines() == ["step 0", "step 3", "step 6", "step 9", "end of epoch"]


def test_a_terminal_gets_one_line_per_epoch_rewritten_in_place(run, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    refresh_every_step(run)
    run.fit()
    out = capsys.readouterr().out
    epochs = [line.rsplit("\r", 1)[-1] for line in out.split("\n") if "\repoch" in line]  # splitlines splits at \r
    assert [FIELDS.match(line).group(1) for line in epochs] == ["1", "2"]
    assert out.count("\repoch 1/2") > 1  # rewritten as steps go by, not a new line each time


def test_a_terminal_line_is_cut_to_the_width_until_it_is_kept(capsys, monkeypatch):
    # a rewritten line that wraps leaves a copy of itself on every update: `\r` returns only to its last row
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(progress.shutil, "get_terminal_size", lambda: os.terminal_size((40, 24)))
    output = progress.LineOutput(log_every=30)
    text = "epoch 1/2 · step 3/12 · validating 2/7 · " + " · ".join(f"val/f1_{i} 0.5" for i in range(6))
    output.show(text)
    output.show(text, final=True)
    updating, kept = capsys.readouterr().out.split("\r")[1:]
    assert updating == text[:38] + "…" and kept == text + "\n"


def test_a_notebook_gets_one_display_per_epoch_updated_in_place(run, capsys, monkeypatch):
    displays = []

    class Handle:
        def __init__(self, data):
            self.texts = [data["text/plain"]]
            displays.append(self)

        def update(self, data, raw):
            self.texts.append(data["text/plain"])

    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda data, raw, display_id: Handle(data))
    refresh_every_step(run)
    run.fit()
    finals = [d.texts[-1] for d in displays if d.texts[-1].startswith("epoch")]
    assert [FIELDS.match(text).group(1) for text in finals] == ["1", "2"]
    assert len(displays[-1].texts) > 1 and "epoch" not in capsys.readouterr().out


def test_validate_alone_shows_its_own_line(run, capsys):
    run.validate()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"validating (\d+)/\1 · \d+:\d\d", lines[0])  # once, not once per update
