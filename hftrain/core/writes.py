"""How a run writes its files: whole or not at all, and a full disk said in one paragraph.

Every file a run keeps (checkpoints, `config.yaml`, `results.json`, `hf_model/`, predictions, the model card)
goes through `replacing`: the new content is written beside its destination as `<name>.partial`, flushed to
disk and renamed over it. The rename is atomic, so the path always holds either its previous content or the
complete new one, whatever kills the process. Lightning's default checkpoint writer stages the file in the
system temp folder instead: on a cluster where the run folder and /tmp are different filesystems that move is
a copy, and a kill in the middle of it leaves a truncated `last.ckpt` behind.

A write that fails removes its partial file. One that fails because the disk (or the user's quota) is full
becomes `disk_full`'s `HFTrainError`, which names the folder, the size the write needed and what to do; the
CLI prints it and exits with status 2. Nothing written before is lost, so `--ckpt_path last` continues once
there is room.
"""

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hftrain.core.errors import HFTrainError

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how libraries that wrap the system error in their own type (torch's zip writer, safetensors' Rust writer)
# still say it: the C library's text for ENOSPC
FULL_DISK_TEXT = os.strerror(errno.ENOSPC)


@contextmanager
def replacing(path: str | Path, needed: Callable[[], int]) -> Iterator[Path]:
    """The path to write `path`'s new content to (a file, a folder or a link); when the block ends, it is
    flushed to disk and takes `path`'s place.

    If the block fails, the partial content is removed and `path` keeps what it held; a full disk is raised as
    `disk_full(path, needed())` (`needed` is asked only then: it may cost as much as the write).
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(partial)  # left by a process killed mid-write
        yield partial
        _sync(partial)
        _swap(partial, path)
    except BaseException as err:
        _remove(partial)
        if is_full_disk(err):
            raise disk_full(path, needed()) from err
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) through `replacing`."""
    data = text.encode("utf-8")
    with replacing(path, needed=lambda: len(data)) as partial:
        partial.write_bytes(data)


def is_full_disk(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, says that the disk or the quota is full."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in FULL_DISK_ERRNOS or FULL_DISK_TEXT in str(err):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def disk_full(path: Path, needed: int) -> HFTrainError:
    """The paragraph for a write of `needed` bytes to `path` that did not fit."""
    folder = path.parent
    free = shutil.disk_usage(_existing(folder)).free
    kept = f" (the previous {path.name} included)" if path.exists() else ""
    return HFTrainError(
        f"The disk is full: writing {path.name} to {folder} needed {size_text(needed)}, and {size_text(free)} "
        f"is free there. The run stopped; everything it wrote before is intact{kept}. Free space on that disk, or "
        f"move the runs folder to a disk with room and point the logger's save_dir at it "
        f"(--trainer.logger.init_args.save_dir), then run the same command again: a fit continues from its last "
        f"checkpoint with --ckpt_path last."
    )


def size_text(n: int) -> str:
    """Bytes as a person reads them: `377.4 kB`, `1.2 GB` (powers of 1000, as `df -H`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _sync(partial: Path) -> None:
    """Flush the new files' content to disk before the rename makes them the real ones."""
    if partial.is_symlink():
        return
    for file in [partial] if partial.is_file() else [f for f in partial.rglob("*") if f.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _swap(partial: Path, path: Path) -> None:
    if not (partial.is_dir() and not partial.is_symlink()):
        os.replace(partial, path)  # atomic for a file or a link
        return
    previous = path.with_name(path.name + ".previous")  # a folder cannot be renamed over a full one
    _remove(previous)
    if path.exists():
        path.rename(previous)
    partial.rename(path)
    _remove(previous)
