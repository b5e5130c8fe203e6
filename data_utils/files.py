"""Files written atomically (under a temporary name beside their place, then renamed), with the permissions any
file the process creates gets: ``tempfile.mkstemp`` makes files only their owner can read, which would lock the
other users of a shared data folder out of prepared TSV files, their indexes and dictionaries."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Tuple, Union


def creation_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def written_beside(path: Union[str, Path], mode: str = "w", **open_args) -> Iterator[Tuple[IO, str]]:
    """(open file, its temporary name) beside ``path``, whose folder is created; the file is closed when the block
    ends and removed if it fails. Renaming it into place is the caller's (``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(temporary, creation_mode())
        with os.fdopen(handle, mode, **open_args) as file:
            yield file, temporary
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@contextmanager
def atomic_write(path: Union[str, Path], mode: str = "w", **open_args) -> Iterator[IO]:
    """A file to write ``path`` through: it appears, complete, when the block ends, and not at all if it fails
    (concurrent writers of the same file each rename a whole one)."""
    with written_beside(path, mode, **open_args) as (file, temporary):
        yield file
    os.replace(temporary, path)
