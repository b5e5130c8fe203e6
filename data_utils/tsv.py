"""Random access to the rows of a tab-separated file through a byte-offset index built in one streaming pass
and cached beside the file (or under ``UNIVAL_CACHE_DIR``), safe to use from forked DataLoader workers."""
import hashlib
import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from unival.data_utils.files import atomic_write

logger = logging.getLogger(__name__)

INDEX_SUFFIX = ".index.npy"
INDEX_FORMAT = 1
HEADER = 4  # format, file size, file mtime (ns), number of rows; then the rows' start offsets and the end offset
CHUNK = 1 << 24


class TSVFormatError(ValueError):
    """A row that does not fit the file's layout; the message starts with ``path:line:``."""


def cache_dir() -> Path:
    return Path(os.environ.get("UNIVAL_CACHE_DIR") or Path.home() / ".cache" / "unival")


def index_cache_paths(path: str) -> List[Path]:
    """Where the index of ``path`` may be cached, in order: beside the file, then in the user's cache folder."""
    absolute = os.path.abspath(path)
    digest = hashlib.sha1(absolute.encode("utf-8")).hexdigest()[:16]
    return [Path(absolute + INDEX_SUFFIX), cache_dir() / f"{digest}-{os.path.basename(absolute)}{INDEX_SUFFIX}"]


def line_start_offsets(path: str) -> np.ndarray:
    """Byte offsets of the starts of the lines of ``path``, then the file size (int64, one pass in chunks)."""
    starts = [np.zeros(1, dtype=np.int64)]
    position = 0
    with open(path, "rb") as file:
        while True:
            chunk = file.read(CHUNK)
            if not chunk:
                break
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == ord("\n"))
            starts.append(newlines.astype(np.int64) + position + 1)
            position += len(chunk)
    offsets = np.concatenate(starts)
    if offsets[-1] != position:  # last line without a newline
        offsets = np.append(offsets, np.int64(position))
    return offsets


def without_trailing_blank_lines(path: str, offsets: np.ndarray) -> np.ndarray:
    with open(path, "rb") as file:
        while len(offsets) > 1:
            file.seek(int(offsets[-2]))
            if file.read(int(offsets[-1] - offsets[-2])).strip(b"\r\n"):
                break
            offsets = offsets[:-1]
    return offsets


def file_signature(path: str) -> List[int]:
    stat = os.stat(path)
    return [INDEX_FORMAT, stat.st_size, stat.st_mtime_ns]


def cached_offsets(cache: Path, signature: List[int]) -> Optional[np.ndarray]:
    """The offsets stored in ``cache`` if it was written for a file of this size and mtime, else None."""
    try:
        stored = np.load(cache, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if stored.ndim != 1 or len(stored) < HEADER or stored[:3].tolist() != signature:
        return None
    if len(stored) != HEADER + int(stored[3]) + 1:
        return None
    return stored[HEADER:]


def write_index(cache: Path, signature: List[int], offsets: np.ndarray) -> None:
    """Writes atomically: ranks and workers indexing the same file at once never see half a file."""
    with atomic_write(cache, "wb") as file:
        np.save(file, np.concatenate([np.array(signature + [len(offsets) - 1], dtype=np.int64), offsets]))


def indexed_offsets(path: str, use_cache: bool) -> np.ndarray:
    """Row start offsets of ``path`` plus the end of the last row, from a valid cache or one pass over the file."""
    signature = file_signature(path)
    caches = index_cache_paths(path) if use_cache else []
    for cache in caches:
        offsets = cached_offsets(cache, signature)
        if offsets is not None:
            return offsets
    offsets = without_trailing_blank_lines(path, line_start_offsets(path))
    for cache in caches:
        try:
            write_index(cache, signature, offsets)
            return offsets
        except OSError as err:
            logger.info("cannot cache the row index of %s at %s (%s)", path, cache, err)
    if caches:
        logger.warning("row index of %s not cached (set UNIVAL_CACHE_DIR to a writable folder)", path)
    return offsets


class TSVReader:
    """Rows of a TSV file by index, without reading the file into memory.

    ``selected_cols`` lists the columns to return, in the order given (OFA's ``--selected-cols 0,4,2``).
    Every row must have as many columns as the first one. A trailing empty line is ignored; an empty line
    elsewhere is a row that raises :class:`TSVFormatError` when read.
    """

    def __init__(self, path: str, selected_cols: Optional[Sequence[int]] = None, separator: str = "\t",
                 cache_index: bool = True):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TSV file {path} not found")
        self.path = str(path)
        self.separator = separator
        self.offsets = indexed_offsets(self.path, cache_index)
        self._fd = None
        self._pid = None
        self.layout_index = self.first_nonempty_row()
        self.num_columns = None if self.layout_index is None else len(self.line(self.layout_index).split(separator))
        self.selected_cols = None if selected_cols is None else [int(column) for column in selected_cols]
        if self.selected_cols is not None and self.num_columns is not None:
            for column in self.selected_cols:
                if not 0 <= column < self.num_columns:
                    raise ValueError(f"{self.path}: selected column {column} does not exist (line "
                                     f"{self.line_number(self.layout_index)} has {self.num_columns} columns, "
                                     f"numbered from 0)")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def line_number(self, index: int) -> int:
        """1-based line of row ``index`` in the file, for messages."""
        return int(index) + 1

    def first_nonempty_row(self) -> Optional[int]:
        """The row whose column count every row must have (the first one, unless it is empty)."""
        for index in range(len(self)):
            if self.line(index):
                return index
        return None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def descriptor(self) -> int:
        # A forked DataLoader worker must not share the parent's open file: it opens the file for itself.
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def raw_line(self, index: int) -> bytes:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: row {index} out of range (the file has {len(self)} rows)")
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return os.pread(self.descriptor(), end - start, start)  # no shared file position: thread-safe

    def line(self, index: int) -> str:
        """Text of row ``index`` without its line ending."""
        raw = self.raw_line(index)
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise TSVFormatError(f"{self.path}:{self.line_number(index)}: not valid UTF-8 ({err})") from err

    def row(self, index: int) -> List[str]:
        """The selected columns of row ``index`` (all columns when none were selected)."""
        text = self.line(index)
        where = f"{self.path}:{self.line_number(index)}"
        if not text:
            raise TSVFormatError(f"{where}: empty line")
        columns = text.split(self.separator)
        if len(columns) != self.num_columns:
            raise TSVFormatError(f"{where}: expected {self.num_columns} columns, got {len(columns)} (every row "
                                 f"must have the columns of line {self.line_number(self.layout_index)})")
        if self.selected_cols is None:
            return columns
        return [columns[column] for column in self.selected_cols]

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, None

    def __del__(self):
        self.close()
