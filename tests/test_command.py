"""The `hftrain` command's front door: top-level help without heavy imports, everything else to the CLI."""

import subprocess
import sys
from importlib.metadata import version

import pytest

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


def test_subcommands_reach_the_full_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0 and "--model.help" in capsys.readouterr().out
