"""The private members hftrain relies on exist in the pinned versions, and their absence is a clear error."""

import types

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from hftrain.core import internals
from hftrain.core.errors import HFTrainError


def test_every_private_member_used_exists_in_the_installed_versions():
    from torchmetrics.functional.text import rouge

    trainer = Trainer(logger=False, enable_progress_bar=False)
    checkpoint = ModelCheckpoint(every_n_train_steps=5)
    assert internals.every_n_train_steps(checkpoint) == 5
    assert internals.checkpoint_saved_at(checkpoint, 0) is None
    assert internals.batches_trained(trainer) == -1  # no batch yet: the first counts as 0
    assert internals.logged_step(trainer) == 0  # the step the first logs are written at
    assert internals.slurm_requeue_signal(trainer) is None  # not a SLURM job
    assert internals.hpc_checkpoint_path(trainer).endswith("hpc_ckpt_1.ckpt")
    internals.set_fit_limits(trainer, max_epochs=7, max_steps=-1)
    assert (trainer.max_epochs, trainer.max_steps) == (7, -1)
    for owner, name in (
        (trainer.fit_loop, "_combined_loader_states_to_load"),
        (trainer.fit_loop, "_load_combined_loader_states"),
        (trainer.fit_loop, "_data_fetcher"),
        (checkpoint, "_last_checkpoint_saved"),
        (checkpoint, "_save_topk_checkpoint"),
        (checkpoint, "_monitor_candidates"),
        (checkpoint, "_ModelCheckpoint__warn_if_dir_not_empty"),
    ):
        assert hasattr(owner, name), name
    assert internals.rouge_tokens("The cats ran.", None) == ["the", "cats", "ran"]
    assert internals.rouge_lsum_fmeasure([["a", "b"]], [["a", "b"]]) == 1.0
    assert callable(rouge._rouge_lsum_score)
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser()
    parser.add_lightning_class_args(Trainer, "trainer")
    internals.set_option_help(parser, "trainer.max_steps", "new help")
    assert "new help" in parser.format_help()


def test_the_modules_hyperparameters_are_lightnings_dump_of_the_config(tiny_bert, tmp_path, monkeypatch):
    """HFTrainCLI overrides LightningCLI._dump_config to skip its second check of the config: Lightning must still
    dump through it, and the dump must be the one Lightning makes."""
    import yaml
    from conftest import sentiment_rows, write_csv
    from helpers import classification_config

    from hftrain.cli import HFTrainCLI

    monkeypatch.chdir(tmp_path)
    dumps = []
    dump = internals.dump_parsed_config
    monkeypatch.setattr(internals, "dump_parsed_config", lambda cli: dumps.append(cli) or dump(cli))
    files = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(8, seed=1)))}
    cli = HFTrainCLI(args=["--config", str(classification_config(tmp_path / "task.yaml", tiny_bert, files))], run=False)
    assert dumps and all(made is cli for made in dumps)  # once per module; the first dumps
    lightnings = cli.parser.dump(cli.config, skip_link_targets=False, skip_unset=False, format="yaml")
    dumped = yaml.safe_load(lightnings)  # the trainer's run folder was given back as asked since: not compared
    assert (cli.config_dump["model"], cli.config_dump["data"]) == (dumped["model"], dumped["data"])
    assert cli.model.hparams["learning_rate"] == cli.config_dump["model"]["init_args"]["learning_rate"]


def test_a_missing_private_member_names_the_tested_versions():
    renamed = types.SimpleNamespace(save_last=True)  # a ModelCheckpoint of a release that renamed its members
    with pytest.raises(HFTrainError, match=r"SimpleNamespace\._last_global_step_saved.*lightning>=2\.6,<2\.7"):
        internals.checkpoint_saved_at(renamed, 3)
    with pytest.raises(HFTrainError, match=r"torchmetrics .* torchmetrics>=1\.9,<1\.10"):
        internals._private(types.ModuleType("rouge"), "_rouge_lsum_score", "torchmetrics")
