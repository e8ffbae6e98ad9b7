"""`reuse`: within a search, the parser, the tokenizer, a data file and the trainer check are built once and shared
by its trials; a run leaves the parser's defaults as they were, each trial gets the tokenizer as loaded, an edited
file is read again, a refused option is refused every time, and nothing is kept outside a search."""

import pytest
import yaml
from conftest import sentiment_rows, write_csv
from helpers import classification_config
from lightning.pytorch import Trainer

from hftrain import cli
from hftrain.api import Run
from hftrain.core import reuse
from hftrain.core.errors import HFTrainError
from hftrain.core.pretrained import load_tokenizer
from hftrain.core.sources import read_table

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def test_outside_a_search_each_run_loads_its_own(tiny_bert, tmp_path):
    assert load_tokenizer(tiny_bert) is not load_tokenizer(tiny_bert)
    path = write_csv(tmp_path / "train.csv", sentiment_rows(4, seed=1))
    assert read_table(path, None) is not read_table(path, None)


def test_a_search_loads_the_tokenizer_once_and_each_trial_gets_it_as_loaded(tiny_bert):
    with reuse.kept_for_the_search():
        tokenizer = load_tokenizer(tiny_bert)
        own = tokenizer.chat_template
        tokenizer.chat_template = TEMPLATE  # what a chat run's data.chat_template does
        assert load_tokenizer(tiny_bert) is tokenizer and tokenizer.chat_template == TEMPLATE  # the same run
        reuse.next_run()
        assert load_tokenizer(tiny_bert) is tokenizer and tokenizer.chat_template == own
        assert load_tokenizer(tiny_bert, revision="main") is not tokenizer  # asked otherwise: loaded apart
    assert load_tokenizer(tiny_bert) is not tokenizer  # the search is over


def test_a_search_reads_a_data_file_once_unless_it_changes(tmp_path):
    path = write_csv(tmp_path / "train.csv", sentiment_rows(4, seed=1))
    with reuse.kept_for_the_search():
        table = read_table(path, None)
        assert read_table(path, None) is table
        assert read_table(path, {"delimiter": ","}) is not table
        write_csv(path, sentiment_rows(6, seed=2))  # edited while the search runs
        assert len(read_table(path, None)) == 6


def test_a_search_checks_its_trainer_options_once_and_refuses_a_bad_one_each_time(monkeypatch):
    built = []

    class CountedTrainer(Trainer):
        def __init__(self, **options):
            built.append(options["max_epochs"] if "max_epochs" in options else options)
            super().__init__(**options)

    monkeypatch.setattr(cli, "Trainer", CountedTrainer)
    with reuse.kept_for_the_search():
        for epochs in (2, 2, 3):
            cli.check_trainer_options({"max_epochs": epochs})
        assert built == [2, 3]
        for _ in range(2):
            with pytest.raises(HFTrainError, match="gradient_clip_algorithm='nrom'"):
                cli.check_trainer_options({"gradient_clip_algorithm": "nrom"})
        assert len(built) == 4  # a refusal is not kept: asked again, refused again


@pytest.mark.processes  # fits a run
def test_a_search_builds_one_parser_and_a_run_leaves_its_defaults_as_they_were(tiny_bert, tmp_path, monkeypatch):
    files = {
        "train": str(write_csv(tmp_path / "train.csv", sentiment_rows(24, seed=1))),
        "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(8, seed=2))),
    }
    config = classification_config(tmp_path / "task.yaml", tiny_bert, files, trainer__max_epochs=1)
    parsers = []
    new_parser = cli.HFTrainCLI._new_parser
    monkeypatch.setattr(cli.HFTrainCLI, "_new_parser", lambda *a: parsers.append(new_parser(*a)) or parsers[-1])

    def defaults() -> str:
        return parsers[0].dump(parsers[0].get_defaults(skip_validation=True), skip_validation=True)

    with reuse.kept_for_the_search():
        first = Run(config, folder=tmp_path / "trial_0")
        before = defaults()
        first.fit()
        second = Run(config, model={"learning_rate": 0.5}, data={"batch_size": 4}, folder=tmp_path / "trial_1")
        assert len(parsers) == 1 and defaults() == before
    assert (second.module.learning_rate, second.data.batch_size) == (0.5, 4)
    assert not {id(c) for c in first.trainer.callbacks} & {id(c) for c in second.trainer.callbacks}
    assert (first.module.learning_rate, first.data.batch_size) == (1e-2, 16)
    saved = yaml.safe_load((tmp_path / "trial_0" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["learning_rate"] == 1e-2
    assert saved["trainer"]["logger"]["init_args"]["version"] is None  # the run's folder is not in the defaults
    Run(config, folder=tmp_path / "after")
    assert len(parsers) == 2  # outside the search: a parser of its own
