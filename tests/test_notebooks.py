"""The shipped notebooks, run top to bottom in a real Jupyter kernel (nbclient + ipykernel) as a user runs them,
offline with the all-MiniLM-L6-v2 of the `demo` extra; one more cell reads what they computed."""

import csv
import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, minilm_path
from helpers import classification_config
from test_console import api_session, assert_quiet_with_one_header_per_run, fake_srun

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def run_notebook(name: str, folder: Path, report: dict[str, str], extra: str = "") -> tuple[dict, list, float]:
    """Run `notebooks/<name>.ipynb` from a copy of the repository's notebooks and configs in `folder`, then the
    code `extra` and a cell printing `report` (names and Python expressions) as JSON: (the report's values,
    the executed cells, seconds taken)."""
    for part in ("notebooks", "configs"):
        shutil.copytree(REPO / part, folder / part)
    notebook = nbformat.read(folder / "notebooks" / f"{name}.ipynb", as_version=4)
    values = ", ".join(f"{key!r}: {expression}" for key, expression in report.items())
    notebook.cells += [
        nbformat.v4.new_code_cell(extra),
        nbformat.v4.new_code_cell(f"import json\nprint(json.dumps({{{values}}}, default=str))"),
    ]
    start = time.monotonic()
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder / "notebooks")}}
    )
    client.execute()
    seconds = time.monotonic() - start
    return json.loads(notebook.cells[-1].outputs[-1]["text"]), notebook.cells, seconds


def assert_progress_shown_in_place(cells, epochs: int, metric: str) -> None:
    """The fit cell holds one progress display per epoch, each updated in place to its final line (nbclient
    applies the kernel's display updates as Jupyter does), and no output anywhere asks for ipywidgets or shows
    a RecursionError."""
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    displayed = [o["data"]["text/plain"] for o in outputs if o.output_type == "display_data"]
    lines = [
        re.match(rf"epoch (\d+)/{epochs} · step (\d+)/(\d+) · loss .* samples/s .* {metric}", text)
        for text in displayed
    ]
    lines = [line for line in lines if line]
    assert [int(line.group(1)) for line in lines] == list(range(1, epochs + 1)), displayed
    assert lines[-1].group(2) == lines[-1].group(3)  # the last update of the last epoch: every step done
    shown = [o.get("text") or o.get("data", {}).get("text/plain", "") for o in outputs]
    assert not any('install "ipywidgets"' in text or "IProgress" in text or "RecursionError" in text for text in shown)


@pytest.fixture
def needs_minilm():
    if minilm_path() is None:
        pytest.skip("the all-MiniLM-L6-v2 weights of the `demo` extra are not installed")


@pytest.mark.service  # a real Jupyter kernel (nbclient)
@pytest.mark.usefixtures("needs_minilm")
def test_quickstart_notebook_trains_predicts_and_exports(tmp_path, capsys):
    report = {
        "best": "run.best",
        "monitor": "run.results['monitor']",
        "predictions": "predictions",
        "pipeline": "classify(['It stopped charging after a week.'])",
        "folder": "str(run.folder)",
    }
    results, cells, seconds = run_notebook("quickstart", tmp_path, report)
    with open(REPO / "configs" / "quickstart" / "validation.csv") as f:
        labels = Counter(row["label"] for row in csv.DictReader(f))
    majority = max(labels.values()) / sum(labels.values())
    assert results["monitor"] == "val/accuracy" and results["best"]["val/accuracy"] > majority + 0.05
    assert results["folder"] == "runs/quickstart/version_0"
    assert [p["label"] in labels for p in results["predictions"]] == [True, True]
    assert results["pipeline"][0]["label"] in labels
    assert_progress_shown_in_place(cells, epochs=1, metric="val/accuracy")
    with capsys.disabled():
        print(f"\nnotebooks/quickstart.ipynb ran in {seconds:.0f} s")


RERUN_FIT = """try:  # the fit cell run once more
    trainer.fit(model, datamodule=data)
    rerun = "trained again"
except hftrain.HFTrainError as error:
    rerun = str(error)"""


@pytest.mark.service  # a real Jupyter kernel (nbclient)
@pytest.mark.usefixtures("needs_minilm")
def test_ner_notebook_trains_with_a_plain_trainer_and_a_second_fit_says_why_it_does_nothing(tmp_path, capsys):
    report = {
        "results": "results",
        "entities": "[p['entities'] for p in predictions]",
        "tagged": "tagger('Emma flew to Hanoi last week .')",
        "rerun": "rerun",
    }
    results, cells, seconds = run_notebook("ner", tmp_path, report, extra=RERUN_FIT)
    assert results["results"]["best"]["val/f1"] > 0.5
    first, second = [[(e["text"], e["type"]) for e in entities] for entities in results["entities"]]
    assert first == [("Emma", "PER"), ("Hanoi", "LOC")] and ("Berlin", "LOC") in second  # names never trained on
    assert {e["entity_group"] for e in results["tagged"]} == {"PER", "LOC"}
    assert "already trained to max_epochs=2" in results["rerun"]
    assert_progress_shown_in_place(cells, epochs=2, metric="val/f1")
    with capsys.disabled():
        print(f"\nnotebooks/ner.ipynb ran in {seconds:.0f} s")


@pytest.mark.service  # a real Jupyter kernel (nbclient)
def test_the_python_api_is_as_quiet_in_a_kernel_as_the_cli(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    """Every cell's outputs (streams and displays, as Jupyter shows them) hold no notice the CLI drops, and
    each run's header once, however many calls its trainer serves."""
    config = classification_config(tmp_path / "api.yaml", tiny_bert, sentiment_files)
    monkeypatch.setenv("PATH", fake_srun(tmp_path))  # the kernel inherits it
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(code) for code in api_session(tiny_bert, sentiment_files, config)]
    )
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells for output in cell.outputs]
    shown = [o.get("text") or o.get("data", {}).get("text/plain", "") for o in outputs]
    assert_quiet_with_one_header_per_run("\n".join(shown))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
