"""`reuse`: within a search, the tokenizer, a data file and the trainer check are loaded once and shared by its
trials; each trial gets the tokenizer as loaded, an edited file is read again, a refused option is refused every
time, and nothing is kept outside a search."""

import pytest
from conftest import sentiment_rows, write_csv
from lightning.pytorch import Trainer

from hftrain import cli
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
