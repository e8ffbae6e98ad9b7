"""What the trials of a search build alike and may share: the CLI's parser, the tokenizer, the raw data files and
the check of the trainer's options.

A search runs its trials one after the other in one process, each a full `hftrain fit` built from its own
config, and every trial would build the same parser, load the same tokenizer, re-read the same files and build
the same throwaway trainer: about a third of a trial's start-up, which the HF Trainer does not pay (it holds its
tokenizer and data from before the search). `hftrain tune` keeps them for the search (`kept_for_the_search`);
anything else, a notebook's fits included, builds its own, so that an edit made between two fits is seen.
"""

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

# while a search runs: what was loaded, by what it was loaded from, with how to make it as loaded again
_kept: dict[Hashable, tuple[Any, Callable[[Any], None] | None]] | None = None


@contextmanager
def kept_for_the_search() -> Iterator[None]:
    """Within, `once` loads each key once; what it kept is dropped on leaving."""
    global _kept
    outer, _kept = _kept, {} if _kept is None else _kept
    try:
        yield
    finally:
        _kept = outer


def once(key: Hashable, load: Callable[[], T], as_loaded: Callable[[T], None] | None = None) -> T:
    """`load()`; within `kept_for_the_search`, what it returned for `key` the first time. `key` must name all that
    `load` depends on. A load that raises keeps nothing, so the next asks again. `as_loaded` undoes what a run
    may change in the value, before the next run (`next_run`)."""
    if _kept is None:
        return load()
    if key not in _kept:
        _kept[key] = (load(), as_loaded)
    return _kept[key][0]


def next_run() -> None:
    """A new run starts: each kept value is made as it was loaded, whatever the runs before changed in it."""
    for value, as_loaded in (_kept or {}).values():
        if as_loaded is not None:
            as_loaded(value)
