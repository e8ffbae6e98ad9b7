"""The `hftrain` command's front door: top-level help without heavy imports, everything else to the CLI."""

import subprocess
import sys
from importlib.metadata import version

import pytest
from conftest import REPO

from hftrain.cli import HFTrainCLI
from hftrain.command import SUBCOMMANDS, main


def test_help_lists_the_cli_subcommands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert set(SUBCOMMANDS) == set(HFTrainCLI.subcommands())
    assert all(f"  {name} " in out for name in SUBCOMMANDS)


def test_help_and_version_import_no_framework():
    probe = (
        "import sys; from hftrain.command import main; main(['--help']); main(['--version']); "
        "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-2:] == [f"hftrain {version('hftrain')}", "[]"]


def test_no_arguments_prints_usage_and_fails(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("usage: hftrain")


def test_subcommand_help_lists_the_configs_task_without_importing_a_framework():
    probe = (
        "import sys; from hftrain.command import main; main(['fit', '--config', 'configs/glue/mrpc.yaml', '--help']); "
        "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.splitlines()[-1] == "[]"
    assert "model: TextClassification (from configs/glue/mrpc.yaml)" in out
    assert "--data.text_pair_column str | None = 'sentence2' (config; default None)" in out
    assert "--model.multi_label_threshold float = 0.5" in out and "--trainer.max_epochs" in out
    assert "--data.doc_stride" not in out  # another task's option


def test_subcommand_help_without_a_config_lists_the_tasks(capsys):
    main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "  QuestionAnswering / QuestionAnsweringData: " in out
    assert "--data.predict_file" in out and "--prediction_writer.output_file" in out
    assert "--trainer.gradient_clip_val Optional[Union[int, float]] = 1.0" in out  # hftrain's, not None


def test_class_help_takes_short_names(capsys):
    main(["fit", "--model.help", "TokenClassification"])
    out = capsys.readouterr().out
    assert out.startswith("TokenClassification: ") and "--model.tag_scheme" in out
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--data.help", "Tokens"])
    assert exit_.value.code == 2 and "TokenClassificationData" in capsys.readouterr().err
