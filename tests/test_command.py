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
    assert set(SUBCOMMANDS) == set(HFTrainCLI.subcommands()) | {"tune"}  # tune runs fits of its own
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
    assert "--data.dataset_config_name str | None = 'mrpc' (config; default None)" in out
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


def test_mistakes_the_config_shows_are_named_before_any_framework_is_imported(tmp_path):
    no_class = tmp_path / "no_class.yaml"
    no_class.write_text("model:\n  init_args:\n    model_name_or_path: some/model\n")
    probe = (
        "import sys\nfrom hftrain.command import main\n"
        "for args in sys.argv[1:]:\n"
        "    try:\n        main(args.split())\n    except SystemExit as exit_:\n        print('exit', exit_.code)\n"
        "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules))"
    )
    cases = [
        "fitt",
        f"fit --config {no_class}",
        "fit --model TextClassification --model.learning_rat 1",
        "fit --model TextClassification --data TextClassificationData --trainer.max_epochs -3",
    ]
    done = subprocess.run([sys.executable, "-c", probe, *cases], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["exit 2"] * 4 + ["[]"]
    errors = done.stderr.splitlines()
    assert len(errors) == 4 and all(line.startswith("hftrain: error: ") for line in errors), errors
    assert "'fitt' is not a subcommand. Did you mean fit?" in errors[0]
    assert "no_class.yaml sets no model class" in errors[1]
    assert "Did you mean --model.learning_rate?" in errors[2]
    assert "trainer.max_epochs must be a number of epochs, 0 or more, or -1 for no limit; got -3" in errors[3]


def test_the_trainer_defaults_to_the_hf_trainers_three_epochs(capsys):
    main(["fit", "--help"])
    assert "--trainer.max_epochs Optional[int] = 3\n" in capsys.readouterr().out
