"""Tests of the TSV reader: offsets, cached index, column selection, format errors, fork safety."""
import multiprocessing
import os
import pickle

import numpy as np
import pytest

from unival.data_utils import tsv
from unival.data_utils.tsv import TSVFormatError, TSVReader


def write(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return path


def forbid_indexing(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path} indexed again instead of using the cache")
    monkeypatch.setattr(tsv, "line_start_offsets", fail)


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVAL_CACHE_DIR", str(tmp_path / "user_cache"))


def test_offsets_and_rows(tmp_path):
    path = write(tmp_path / "a.tsv", "a\tb\tc\nddd\tee\tf\ng\th\ti\n")
    reader = TSVReader(str(path))
    assert len(reader) == 3
    assert reader.offsets.dtype == np.int64
    assert reader.offsets.tolist() == [0, 6, 15, 21]
    assert reader.row(1) == ["ddd", "ee", "f"]
    assert reader.row(2) == ["g", "h", "i"]
    assert reader.line_number(2) == 3


def test_last_line_without_newline_and_crlf(tmp_path):
    reader = TSVReader(str(write(tmp_path / "a.tsv", "a\tb\r\nc\td")))
    assert len(reader) == 2
    assert reader.row(0) == ["a", "b"] and reader.row(1) == ["c", "d"]


def test_trailing_empty_lines_ignored(tmp_path):
    reader = TSVReader(str(write(tmp_path / "a.tsv", "a\tb\n\n\r\n")))
    assert len(reader) == 1
    assert len(TSVReader(str(write(tmp_path / "empty.tsv", "")))) == 0


def test_blank_line_in_the_middle_is_an_error_row(tmp_path):
    path = write(tmp_path / "a.tsv", "a\tb\n\nc\td\n")
    reader = TSVReader(str(path))
    assert len(reader) == 3
    with pytest.raises(TSVFormatError, match=f"^{path}:2: empty line$"):
        reader.row(1)
    assert reader.row(2) == ["c", "d"]


def test_selected_columns_in_given_order(tmp_path):
    reader = TSVReader(str(write(tmp_path / "a.tsv", "id\tpath\tcaption\n")), selected_cols=[2, 0])
    assert reader.row(0) == ["caption", "id"]
    with pytest.raises(ValueError, match="selected column 3 does not exist"):
        TSVReader(str(tmp_path / "a.tsv"), selected_cols=[0, 3])


def test_wrong_column_count_names_path_and_line(tmp_path):
    path = write(tmp_path / "a.tsv", "a\tb\tc\nd\te\tf\ng\th\n")
    reader = TSVReader(str(path))
    with pytest.raises(TSVFormatError) as info:
        reader.row(2)
    assert str(info.value).startswith(f"{path}:3: expected 3 columns, got 2")
    assert isinstance(info.value, ValueError)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes(b"a\tb\n\xff\tc\n")
    with pytest.raises(TSVFormatError, match=f"{path}:2: not valid UTF-8"):
        TSVReader(str(path)).row(1)


def test_index_out_of_range(tmp_path):
    reader = TSVReader(str(write(tmp_path / "a.tsv", "a\n")))
    with pytest.raises(IndexError, match="row 1 out of range"):
        reader.row(1)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no.tsv")):
        TSVReader(str(tmp_path / "no.tsv"))


def test_index_cached_beside_file_and_reused(tmp_path, monkeypatch):
    path = write(tmp_path / "a.tsv", "a\tb\nc\td\n")
    TSVReader(str(path))
    cache = tmp_path / "a.tsv.index.npy"
    stored = np.load(cache)
    stat = os.stat(path)
    assert stored.tolist() == [tsv.INDEX_FORMAT, stat.st_size, stat.st_mtime_ns, 2, 0, 4, 8]
    forbid_indexing(monkeypatch)
    assert TSVReader(str(path)).row(1) == ["c", "d"]


def test_cache_invalidated_when_file_changes(tmp_path, monkeypatch):
    path = write(tmp_path / "a.tsv", "a\tb\nc\td\n")
    assert len(TSVReader(str(path))) == 2
    with open(path, "ab") as file:
        file.write(b"e\tf\n")
    reader = TSVReader(str(path))
    assert len(reader) == 3 and reader.row(2) == ["e", "f"]

    write(path, "x\ty\nz\tw\nu\tv\n")  # same size, new content: the mtime tells
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert TSVReader(str(path)).row(0) == ["x", "y"]
    forbid_indexing(monkeypatch)
    assert TSVReader(str(path)).row(2) == ["u", "v"]


def test_unwritable_beside_cache_falls_back_to_cache_dir(tmp_path, monkeypatch):
    path = write(tmp_path / "a.tsv", "a\tb\nc\td\n")
    (tmp_path / "a.tsv.index.npy").mkdir()  # cannot be written, even by root
    assert TSVReader(str(path)).row(1) == ["c", "d"]
    cached = list((tmp_path / "user_cache").iterdir())
    assert [p.name.endswith("-a.tsv.index.npy") for p in cached] == [True]
    forbid_indexing(monkeypatch)
    assert TSVReader(str(path)).row(0) == ["a", "b"]


def test_no_cache_written_when_disabled(tmp_path):
    path = write(tmp_path / "a.tsv", "a\tb\n")
    assert TSVReader(str(path), cache_index=False).row(0) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv"]


def test_index_spans_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(tsv, "CHUNK", 7)
    lines = [f"{i}\t{'x' * (i % 5)}" for i in range(40)]
    reader = TSVReader(str(write(tmp_path / "a.tsv", "\n".join(lines) + "\n")), cache_index=False)
    assert len(reader) == 40
    assert [reader.row(i) for i in (0, 13, 39)] == [["0", ""], ["13", "xxx"], ["39", "xxxx"]]


def read_in_child(reader, indices, queue):
    queue.put(([reader.row(i) for i in indices], reader._pid == os.getpid()))


def test_rows_read_in_forked_worker(tmp_path):
    path = write(tmp_path / "a.tsv", "".join(f"{i}\trow{i}\n" for i in range(20)))
    reader = TSVReader(str(path))
    assert reader.row(3) == ["3", "row3"]  # the parent has the file open before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=read_in_child, args=(reader, [17, 0, 9], queue))
    child.start()
    rows, reopened = queue.get(timeout=20)
    child.join(timeout=20)
    assert child.exitcode == 0
    assert rows == [["17", "row17"], ["0", "row0"], ["9", "row9"]]
    assert reopened
    assert reader.row(4) == ["4", "row4"]


def test_pickled_reader_reads(tmp_path):
    reader = TSVReader(str(write(tmp_path / "a.tsv", "a\tb\nc\td\n")), selected_cols=[1])
    reader.row(0)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.row(1) == ["d"]
