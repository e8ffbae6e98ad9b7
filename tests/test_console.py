"""What a run prints, as a user's terminal or log file gets it: the lines to act on, none of the notices
other libraries print on every run, and all of them again with --verbose."""

import os
import subprocess
import sys
from pathlib import Path

from helpers import classification_config, hftrain_ok

# the notices a default run must not print (each would appear without the filters or fixes)
NOISE = [
    "Seed set to",
    "GPU available:",
    "TPU available:",
    "litlogger",
    "set_vital",
    "LeafSpec",
    "log_every_n_steps",  # Lightning's interval warning: the interval is sized to the run
    "LOAD REPORT",
    "Trainable params",  # the model summary
    "Loading weights",
    "Writing model shards",
    "Loading `train_dataloader`",
    "`Trainer.fit` stopped",
    "Generating data split",
    "Saving the dataset",
    "Checkpoint directory",  # a continued fit's own folder holds checkpoints, as it should
    "Restoring states from",
]


def test_a_default_run_prints_the_lines_to_act_on_and_no_notices(tiny_bert, sentiment_files, tmp_path):
    files = {k: v for k, v in sentiment_files.items() if k in ("train", "validation")}
    config = classification_config(tmp_path / "quiet.yaml", tiny_bert, files)
    out = hftrain_ok("fit", "--config", config)
    lines = [line for line in out.split("\n") if line.strip()]  # a progress bar's updates stay on one line
    header = [i for i, line in enumerate(lines) if line.startswith("Run folder: runs/quiet/version_0   ")]
    assert header, out
    first = header[0]
    assert lines[first + 1] == "Data: 96 train, 32 validation rows; 2 labels: neg, pos"
    assert lines[first + 2].startswith("Model: BertForSequenceClassification from ")
    assert lines[first + 2].endswith("parameters; newly initialized: classifier.bias, classifier.weight")
    assert lines[first + 3] == "Device: cpu, precision 32-true, 1 process"
    assert any(line.startswith("Run folder: runs/quiet/version_0  (best val/accuracy = ") for line in lines)
    assert not [(n, line) for line in lines for n in NOISE if n in line]
    assert len(lines) <= 12, out  # the text column used, tokenizing (2 lines per bar), cache, header, export, result


def test_verbose_shows_every_notice(tiny_bert, sentiment_files, tmp_path):
    files = {k: v for k, v in sentiment_files.items() if k in ("train", "validation")}
    config = classification_config(tmp_path / "loud.yaml", tiny_bert, files, trainer__max_steps=2)
    out = hftrain_ok("fit", "--config", config, "--verbose")
    for notice in ("Seed set to 42", "LOAD REPORT", "Trainable params", "`Trainer.fit` stopped: `max_steps=2`"):
        assert notice in out, notice


def api_session(model: str, files: dict[str, str], config: Path) -> list[str]:
    """Python code a notebook user runs, cell by cell: a hand-built module on `hftrain.trainer()`, then a `Run`
    fitted, validated, tested and fitted again. (`import lightning` before hftrain would show tqdm's IProgress
    advice in a kernel without ipywidgets: tqdm's, not hftrain's.)"""
    trainer = {"max_epochs": 1, "limit_train_batches": 2, "enable_progress_bar": True}
    return [
        f"""import hftrain
import lightning
lightning.seed_everything(42)
data = hftrain.TextClassificationData(
    tokenizer_name={model!r}, train_file={files["train"]!r}, validation_file={files["validation"]!r}, batch_size=16
)
model = hftrain.TextClassification(model_name_or_path={model!r}, label_names=data.label_names)""",
        'trainer = hftrain.trainer(name="plain", max_epochs=1, limit_train_batches=2)',
        "trainer.fit(model, datamodule=data)",
        f"run = hftrain.fit({str(config)!r}, trainer={trainer!r})",
        "run.validate()\nrun.test()\nrun.fit(epochs=1)\nprint('done')",
    ]


def fake_srun(folder: Path) -> str:
    """A PATH with an `srun` on it, as on a Slurm login node (Lightning then hints at srun on every trainer)."""
    (folder / "bin").mkdir()
    (folder / "bin" / "srun").write_text("#!/bin/sh\n")
    (folder / "bin" / "srun").chmod(0o755)
    return f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}"


def assert_quiet_with_one_header_per_run(out: str) -> None:
    lines = [line for line in out.split("\n") if line.strip()]
    resumed = ["exists and is not empty"]  # the second fit continues in its own folder, on purpose
    assert not [(n, line) for line in lines for n in NOISE + resumed + ["srun", "Warning", "warn"] if n in line], out
    headers = [i for i, line in enumerate(lines) if line.startswith("Run folder: ")]
    # once per run, not again for validate, test and the second fit (whose head is trained by then)
    assert [lines[i].split()[2] for i in headers] == ["runs/plain/version_0", "runs/api/version_0"], out
    assert all("newly initialized: classifier.bias" in lines[i + 2] for i in headers), out


def test_the_python_api_is_as_quiet_as_the_cli(tiny_bert, sentiment_files, tmp_path):
    config = classification_config(tmp_path / "api.yaml", tiny_bert, sentiment_files)
    script = "\n".join(api_session(tiny_bert, sentiment_files, config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": fake_srun(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert done.returncode == 0, done.stdout
    assert_quiet_with_one_header_per_run(done.stdout)


def test_a_continued_fit_is_as_quiet_as_the_first(tiny_bert, sentiment_files, tmp_path):
    files = {k: v for k, v in sentiment_files.items() if k in ("train", "validation")}
    config = classification_config(tmp_path / "again.yaml", tiny_bert, files, checkpoint__every_n_train_steps=2)
    hftrain_ok("fit", "--config", config, "--trainer.max_steps", "3")
    out = hftrain_ok("fit", "--config", config, "--trainer.max_steps", "5", "--ckpt_path", "last")
    lines = [line for line in out.split("\n") if line.strip()]
    assert not [(n, line) for line in lines for n in NOISE if n in line]
    assert "Restored all states from the checkpoint at runs/again/version_0/checkpoints/last.ckpt" in lines
    assert len(lines) <= 10, out  # max_steps wins, the text column used, cache, header, restored, export, result


def test_hftrains_own_warnings_read_as_one_line_and_others_keep_pythons_format(tmp_path):
    """A row cut at max_length is said as `Warning: …`, not as Python's `…/data.py:293: UserWarning: …` followed
    by the line of hftrain's source that warned; a warning of another library keeps the file it came from."""
    import warnings

    import hftrain

    ours = Path(hftrain.__file__).parent / "core" / "data.py"
    assert warnings.formatwarning("3 of 9 rows are cut", UserWarning, str(ours), 293, "warn(note)") == (
        "Warning: 3 of 9 rows are cut\n"
    )
    theirs = warnings.formatwarning("deprecated", FutureWarning, str(tmp_path / "lib.py"), 7, "old()")
    assert theirs.startswith(f"{tmp_path / 'lib.py'}:7: FutureWarning: deprecated")
