"""What every converter shares: reading annotation files with errors that name the file and line (or record),
checking or embedding the media a row names, and writing TSV files atomically."""
import base64
import csv
import io
import json
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from unival.data_utils.answers import CANDIDATE_SEPARATOR, CONFIDENCE_SEPARATOR, format_answers
from unival.data_utils.files import written_beside

REFERENCE_SEPARATOR = "&&"
FIELD_BREAKS = str.maketrans({"\t": " ", "\r": " ", "\n": " "})
MISSING_SHOWN = 5  # missing media files listed in an error; the rest are counted
NOT_FOUND, EMPTY = "not found", "empty"  # why a media file cannot be used (MediaFilter.missing)


class PrepareError(ValueError):
    """An annotation file that does not fit its benchmark's format; the message starts with the file (and the
    line or record)."""


class MissingMediaError(PrepareError):
    """Rows name media files that are not under the media folder."""


@dataclass
class Written:
    """One output file: where it is, how many rows (or lines) it holds, and what was left out."""
    path: Path
    rows: int
    notes: List[str] = field(default_factory=list)
    unit: str = "rows"

    def summary(self) -> str:
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"wrote {self.path}: {counted(self.rows, self.unit[:-1])}{notes}"

    def warning(self) -> Optional[str]:
        """A line for an empty output: it is still written (an older file of that name would otherwise stay
        and be read as this run's), but nothing can train or be evaluated on it."""
        if self.rows:
            return None
        why = "; ".join(self.notes) if self.notes else "no input record made one"
        return f"warning: {self.path} holds no {self.unit}: {why}"


# ---------------------------------------------------------------------------------------------------------------
# Reading


def require_file(path: Union[str, Path, None], option: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming the option when it is not given or not a file."""
    if not path:
        raise FileNotFoundError(f"no file given for {option}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({option})")
    return path


def require_files(files: Sequence[Tuple[Union[str, Path, None], str]]) -> None:
    """Checks every (path, option) whose path is given before anything is written."""
    for path, option in files:
        if path is not None:
            require_file(path, option)


def load_json(path: Union[str, Path], option: str) -> Any:
    path = require_file(path, option)
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as err:
        raise PrepareError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from err
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: not UTF-8 text ({err})") from err


def json_lines(path: Union[str, Path], option: str) -> Iterator[Tuple[int, dict]]:
    """(1-based line number, object) of each non-blank line of a JSON-lines file."""
    path = require_file(path, option)
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            line = utf8_text(raw, path, number)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PrepareError(f"{path}:{number}: invalid JSON: {err.msg} (column {err.colno})") from err
            if not isinstance(record, dict):
                raise PrepareError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def csv_records(path: Union[str, Path], option: str, columns: Sequence[str]) -> Iterator[Tuple[int, Dict[str, str]]]:
    """(line number, row as a dict) of each record of a CSV file whose header must hold ``columns``; the line
    number is the record's first line (quoted fields may span lines)."""
    path = require_file(path, option)
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise stick to the first name.
    text = utf8_text(path.read_bytes(), path, encoding="utf-8-sig")
    # strict: a quote left open (which would swallow the rest of the file into one field) is an error
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise PrepareError(f"{path}: empty file (expected a header with {', '.join(columns)})") from None
        header = [name.strip() for name in header]
        missing = [name for name in columns if name not in header]
        if missing:
            raise PrepareError(f"{path}:1: header {header} lacks the columns {missing}")
        start = reader.line_num + 1
        for values in reader:
            if not any(value.strip() for value in values):
                start = reader.line_num + 1
                continue
            if len(values) != len(header):
                raise PrepareError(f"{path}:{start}: expected {counted(len(header), 'field')} ({', '.join(header)}), "
                                   f"got {len(values)}")
            yield start, dict(zip(header, values))
            start = reader.line_num + 1
    except csv.Error as err:
        raise PrepareError(f"{path}:{start}: malformed CSV record ({err}; a quote left open?)") from err


def utf8_text(data: bytes, path: Path, line: Optional[int] = None, encoding: str = "utf-8") -> str:
    """``data`` decoded; an error names the file and the line (``line``, or counted in ``data``) and the byte."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        number = line if line is not None else data[:err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise PrepareError(f"{path}:{number}: not UTF-8 text (byte {data[err.start]:#04x} at column {column}); "
                           "convert the file to UTF-8") from err


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only lists, dicts, strings and numbers: an annotation pickle that names a class (which could
    run code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: annotation pickles hold plain data only")


def load_plain_pickle(path: Union[str, Path], option: str) -> Any:
    path = require_file(path, option)
    try:
        with open(path, "rb") as file:
            return PlainDataUnpickler(file).load()
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as err:
        raise PrepareError(f"{path}: not a readable pickle of plain data: {err}") from err


def record_list(data: Any, key: Optional[str], path: Union[str, Path]) -> List[dict]:
    """``data[key]`` (or ``data`` itself when ``key`` is None), checked to be a list of JSON objects."""
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise PrepareError(f"{path}: expected a JSON object with a {key!r} list")
        data = data[key]
    if not isinstance(data, list):
        raise PrepareError(f"{path}: expected a list{f' under {key!r}' if key else ''}, got {type(data).__name__}")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise PrepareError(f"{path}: item {index}{f' of {key!r}' if key else ''} is not an object: "
                               f"{shortened(item)}")
    return data


def require_records(records: Sequence[Any], path: Union[str, Path], what: str) -> Sequence[Any]:
    """``records`` themselves; an error naming ``path`` when there are none (an empty list or file converts to
    nothing, which is never what a run means to do)."""
    if not records:
        raise PrepareError(f"{path}: no {what} in the file: nothing to convert")
    return records


def value_of(record: dict, key: str, where: str, kind: Union[type, Tuple[type, ...]] = object) -> Any:
    """``record[key]``, with an error naming ``where`` (file and line or record id) when absent or mistyped."""
    if key not in record:
        raise PrepareError(f"{where}: missing key {key!r} in {shortened(record)}")
    value = record[key]
    # bool is an int in Python, never a valid id or text here
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise PrepareError(f"{where}: {key!r} has the wrong type: {shortened(value)}")
    return value


def shortened(value: Any, keep: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= keep else text[: keep - 3] + "..."


def clean_text(value: Any) -> str:
    """A text field: tabs and line breaks made spaces (they would split the TSV), surrounding spaces removed."""
    return str(value).translate(FIELD_BREAKS).strip()


def nonempty_text(value: Any, where: str, what: str) -> str:
    text = clean_text(value) if isinstance(value, str) else ""
    if not text:
        raise PrepareError(f"{where}: empty or non-text {what}: {shortened(value)}")
    return text


def join_references(texts: Sequence[str], where: str) -> str:
    """Reference texts of one item joined by ``&&`` (the evaluation-file format)."""
    if not texts:
        raise PrepareError(f"{where}: no reference text")
    for text in texts:
        if REFERENCE_SEPARATOR in text:
            raise PrepareError(f"{where}: the text {text!r} contains the reference separator {REFERENCE_SEPARATOR}")
    return REFERENCE_SEPARATOR.join(texts)


def answers_field(candidates: Sequence[Tuple[float, str]], where: str) -> str:
    """The answers column ``conf|!+answer&&...`` of (confidence, answer) candidates."""
    for _, answer in candidates:
        if CANDIDATE_SEPARATOR in answer or CONFIDENCE_SEPARATOR in answer:
            raise PrepareError(f"{where}: the answer {answer!r} contains a separator of the answers column "
                               f"({CANDIDATE_SEPARATOR} or {CONFIDENCE_SEPARATOR})")
    return format_answers(candidates)


# ---------------------------------------------------------------------------------------------------------------
# Media


def media_path(folder: str, name: str) -> str:
    """``folder/name`` (the path a row stores, relative to the media folder); just ``name`` without a folder."""
    folder = folder.strip("/") if folder else ""
    return f"{folder}/{name}" if folder else name


@dataclass
class MediaOptions:
    """How media paths are treated: ``check`` that each exists under ``media_dir`` (missing ones are an error,
    or skipped and counted with ``skip_missing``); ``embed`` replaces the path by the file's base64."""
    media_dir: Optional[str] = None
    check: bool = False
    skip_missing: bool = False
    embed: bool = False

    @property
    def reads_files(self) -> bool:
        return self.check or self.skip_missing or self.embed

    def validate(self) -> None:
        if not self.reads_files:
            return
        if not self.media_dir:
            raise FileNotFoundError("--check-media, --skip-missing-media and --embed-images need --media-dir")
        if not os.path.isdir(self.media_dir):
            raise FileNotFoundError(f"media folder {self.media_dir} not found (--media-dir)")


class MediaFilter:
    """Passes rows through, checking (or embedding) the media of column ``column``. Files that are missing or
    empty (0 bytes: no image, video or audio) are collected; at the end they raise :class:`MissingMediaError`
    (listing the first few), or with ``skip_missing`` their rows are left out and counted in ``skipped``."""

    def __init__(self, options: MediaOptions, column: int, output: Path):
        self.options = options
        self.column = column
        self.output = output
        self.missing: Dict[str, str] = {}  # relative path -> NOT_FOUND or EMPTY, in order of first use
        self.skipped = 0
        self._last: Tuple[Optional[str], Optional[str]] = (None, None)  # path -> base64 of the previous row

    def __call__(self, rows: Iterable[Sequence[str]]) -> Iterator[List[str]]:
        for row in rows:
            row = list(row)
            if self.options.reads_files:
                media = self.media_field(row[self.column])
                if media is None:
                    self.missing[row[self.column]] = self.problem(row[self.column])
                    self.skipped += 1
                    continue
                row[self.column] = media
            yield row
        if self.missing and not self.options.skip_missing:
            raise MissingMediaError(self.missing_message())

    def media_field(self, relative: str) -> Optional[str]:
        """What the media column holds for ``relative``: itself, its base64 when embedding, None if the file is
        missing or empty."""
        path = os.path.join(self.options.media_dir, relative)
        if not self.options.embed:
            return relative if os.path.isfile(path) and os.path.getsize(path) > 0 else None
        if self._last[0] == relative:  # training files repeat an image for each of its captions
            return self._last[1]
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as file:
            data = file.read()
        if not data:
            return None
        encoded = base64.b64encode(data).decode("ascii")
        self._last = (relative, encoded)
        return encoded

    def problem(self, relative: str) -> str:
        """Why ``media_field`` refused ``relative``: NOT_FOUND or EMPTY."""
        return EMPTY if os.path.isfile(os.path.join(self.options.media_dir, relative)) else NOT_FOUND

    def missing_message(self) -> str:
        shown = [f"{relative} (empty)" if problem == EMPTY and len(set(self.missing.values())) > 1 else relative
                 for relative, problem in list(self.missing.items())[:MISSING_SHOWN]]
        more = len(self.missing) - len(shown)
        return (f"{self.output}: {counted(len(self.missing), 'media file')} {problems(self.missing)} under "
                f"{self.options.media_dir} ({counted(self.skipped, 'row')}), e.g. {', '.join(shown)}"
                f"{f' and {more} more' if more else ''} (pass --skip-missing-media to leave their rows out)")


def problems(missing: Dict[str, str]) -> str:
    """"not found", "empty" or "not found or empty": what is wrong with the ``missing`` media files."""
    return " or ".join(problem for problem in (NOT_FOUND, EMPTY) if problem in missing.values())


def skipped_note(skipped: int, missing: Dict[str, str]) -> str:
    """The note of rows left out by --skip-missing-media (``missing`` as in :class:`MediaFilter`)."""
    what = problems(missing).replace(NOT_FOUND, "missing")
    return f"{counted(skipped, 'row')} skipped: {counted(len(missing), 'media file')} {what}"


def counted(number: int, noun: str, plural: Optional[str] = None) -> str:
    """``1 row``, ``2 rows``; ``plural`` for nouns that do not just take an s (``box``, ``boxes``)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


# ---------------------------------------------------------------------------------------------------------------
# Writing


# (temporary file, destination) of each file written inside staged_outputs(), renamed when it ends
_staged: Optional[List[Tuple[str, Path]]] = None


@contextmanager
def staged_outputs():
    """The files written inside the block appear together when it ends without an error, and none otherwise: a
    conversion that fails on its last split (a missing media file, found while writing it) leaves the output
    folder as it was."""
    global _staged
    if _staged is not None:
        raise RuntimeError("staged_outputs() blocks do not nest")
    _staged = staged = []
    try:
        yield
    except BaseException:
        for temporary, _ in staged:
            if os.path.exists(temporary):
                os.unlink(temporary)
        raise
    else:
        for temporary, path in staged:
            os.replace(temporary, path)
    finally:
        _staged = None


def atomic_write_lines(path: Path, lines: Iterable[str]) -> int:
    """Writes ``lines`` (each without its newline) to a temporary file beside ``path``, then renames it (inside
    ``staged_outputs``, when the block ends): an interrupted or failed run never leaves a half-written file.
    Returns the number of lines."""
    count = 0
    with written_beside(path, "w", encoding="utf-8", newline="\n") as (file, temporary):
        for line in lines:
            file.write(line + "\n")
            count += 1
    if _staged is None:
        os.replace(temporary, path)
    else:
        _staged.append((temporary, path))
    return count


def numbered(rows: Iterable[Sequence[Any]]) -> Iterator[tuple]:
    """Rows behind a running id (0, 1, ...): the id column of files whose source has no id per row. Rows
    later skipped for missing media leave gaps, so ids stay the same with and without skipping."""
    return ((row_id, *row) for row_id, row in enumerate(rows))


def tsv_line(row: Sequence[Any]) -> str:
    return "\t".join(str(value).translate(FIELD_BREAKS) for value in row)


def write_tsv(path: Path, rows: Iterable[Sequence[Any]]) -> int:
    """Writes ``rows`` as tab-separated lines (tabs and line breaks inside fields made spaces)."""
    return atomic_write_lines(path, (tsv_line(row) for row in rows))


def write_split(path: Path, rows: Iterable[Sequence[Any]], media_column: int, media: MediaOptions,
                notes: Sequence[str] = ()) -> Written:
    """Writes one split file through the media check; returns what was written."""
    check = MediaFilter(media, media_column, path)
    count = write_tsv(path, check(rows))
    return Written(path, count, list(notes) + media_notes(check))


def media_notes(check: MediaFilter) -> List[str]:
    """The note of the rows ``check`` left out, if it left out any."""
    return [skipped_note(check.skipped, check.missing)] if check.skipped else []


def write_answer_list(path: Path, answers: Sequence[str]) -> Written:
    """One answer a line, in the order given (most frequent first)."""
    return Written(path, atomic_write_lines(path, (clean_text(answer) for answer in answers)), unit="answers")
