"""Pretraining streams of the unify task: the per-task TSV files (image captions, VQA, grounding, video captions
and QA, audio captions) -> ``<stream>_<split>.tsv`` with the columns uniq_id, media, caption, question, refs,
gt_objects, dataset_name, type; one file per stream (image, video, audio...), which may mix kinds."""
import math
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from unival.data_utils.answers import parse_answers
from unival.data_utils.media import MAX_PATH, base64_bytes
from unival.data_utils.prepare.common import (REFERENCE_SEPARATOR, MediaFilter, MediaOptions, PrepareError,
                                              Written, counted, require_files, skipped_note, write_tsv)
from unival.data_utils.transforms import parse_box

UNIFY_COLUMNS = ("uniq_id", "media", "caption", "question", "refs", "gt_objects", "dataset_name", "type")
UNIFY_TYPES = ("caption", "qa", "visual_grounding", "video_caption", "video_qa", "audio_caption")
MEDIA_COLUMN = UNIFY_COLUMNS.index("media")
QUESTION_TYPES = ("qa", "video_qa")
NAME = re.compile(r"[A-Za-z0-9_]+")  # stream and split names: they make the file name


@dataclass(frozen=True)
class InputKind:
    """One kind of per-task TSV file: the type its rows get and the columns its task reads (extra columns are
    ignored, as the tasks ignore them)."""
    type: str
    columns: Tuple[str, ...]

    @property
    def images(self) -> bool:
        return self.columns[-1] == "image"


# input kind (its option without the dashes) -> what its files hold
INPUT_KINDS = {
    "caption": InputKind("caption", ("id", "image-id", "caption", "objects", "image")),
    "vqa": InputKind("qa", ("question-id", "image-id", "question", "answers", "objects", "image")),
    "grounding": InputKind("visual_grounding", ("id", "image-id", "text", "x0,y0,x1,y1", "image")),
    "video-caption": InputKind("video_caption", ("id", "video-id", "caption", "-", "video")),
    "video-qa": InputKind("video_qa", ("question-id", "video-id", "question", "answers", "-", "video")),
    "audio-caption": InputKind("audio_caption", ("id", "audio-id", "caption", "-", "audio")),
}


# ---------------------------------------------------------------------------------------------------------------
# Reading


def tsv_fields(path: Path) -> Iterator[Tuple[str, List[str]]]:
    """(``path:line``, fields) of each non-blank line; lines end at ``\\n`` only, as the tasks' reader splits
    them, so the line numbers are the ones its errors give."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise PrepareError(f"{path}:{number}: not UTF-8 text ({err})") from err
            if line.strip():
                yield f"{path}:{number}", line.split("\t")


def required_text(value: str, where: str, what: str) -> str:
    if not value.strip():
        raise PrepareError(f"{where}: empty {what}")
    return value


def checked_captions(value: str, where: str) -> str:
    """The caption field as it is: one caption, or several joined by ``&&`` of which one at least has text."""
    if not any(caption.strip() for caption in value.split(REFERENCE_SEPARATOR)):
        raise PrepareError(f"{where}: empty caption {value!r}")
    return value


def checked_answers(value: str, where: str) -> str:
    try:
        parse_answers(value)
    except ValueError as err:
        raise PrepareError(f"{where}: {err}") from err
    return value


def checked_box(value: str, where: str) -> str:
    """The box field as it is, once it reads as finite corners x0 <= x1, y0 <= y1 (what the grounding loss
    needs; the image size is checked when the image is loaded)."""
    try:
        x0, y0, x1, y1 = parse_box(value)
    except ValueError as err:
        raise PrepareError(f"{where}: {err}") from err
    if not all(math.isfinite(c) for c in (x0, y0, x1, y1)) or x0 > x1 or y0 > y1:
        raise PrepareError(f"{where}: box {value!r}: expected finite corners with x0 <= x1 and y0 <= y1")
    return value


def unified_row(kind: InputKind, fields: List[str], name: str, where: str) -> Optional[Tuple[str, ...]]:
    """The unify columns of one input row; None for a question without answers (a test question)."""
    if len(fields) < len(kind.columns):
        raise PrepareError(f"{where}: expected the {len(kind.columns)} columns {', '.join(kind.columns)}, got "
                           f"{len(fields)}")
    row_id, text, media = fields[0], fields[2], fields[len(kind.columns) - 1]
    required_text(row_id, where, "id")
    required_text(media, where, f"{kind.columns[-1]} field")
    uniq_id = f"{name}-{row_id}"
    if kind.type in QUESTION_TYPES:
        required_text(text, where, "question")
        if not fields[3].strip():
            return None
        objects = fields[4] if kind.images else ""
        return uniq_id, media, "", text, checked_answers(fields[3], where), objects, name, kind.type
    if kind.type == "visual_grounding":
        required_text(text, where, "text")
        return uniq_id, media, text, "", checked_box(fields[3], where), "", name, kind.type
    objects = fields[3] if kind.images else ""  # video and audio files hold a "-" there
    return uniq_id, media, checked_captions(text, where), "", "", objects, name, kind.type


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # what an image field may name
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")
MEDIA_SUFFIXES = {"image": IMAGE_SUFFIXES, "video": VIDEO_SUFFIXES, "audio": AUDIO_SUFFIXES}


def options_of_kinds(kinds: Sequence[str]) -> str:
    return " or ".join(f"--{name}" for name in kinds)


def other_kind_hint(kind: InputKind, fields: List[str]) -> str:
    """For a first row that does not read as ``kind``: the input kinds whose files have its number of columns."""
    others = [name for name, other in INPUT_KINDS.items() if other != kind and len(other.columns) == len(fields)]
    return f" (is it a file of another kind? {options_of_kinds(others)} read {len(fields)} columns)" if others else ""


def names_media(field: str, medium: str) -> bool:
    """Whether a field names (or, for images, holds) media of ``medium``: a file with one of its suffixes, or an
    image's base64."""
    text = field.strip()
    return text.lower().endswith(MEDIA_SUFFIXES[medium]) or (
        medium == "image" and len(text) > 64 and base64_bytes(text) is not None)  # no image is that small


# Suffixes a file of another medium may also have: animated GIFs are videos too, and mp4/webm/mkv/mov files
# often carry sound only (AudioSet's YouTube downloads)
SHARED_SUFFIXES = {"video": (".gif",), "audio": (".mp4", ".webm", ".mkv", ".mov", ".m4v")}


def check_first_row(kind: InputKind, fields: List[str], where: str) -> None:
    """Refuses a first row that reads as one of another kind of file: its media column names no media but the
    column another kind with as many columns reads does (a VQA file given as --caption reads its objects column
    as the images), or its media path names a file of another medium (an image caption file given as
    --video-caption reads as one-frame videos)."""
    medium, media = kind.columns[-1], fields[len(kind.columns) - 1]
    if len(fields) > len(kind.columns) and not names_media(media, medium):
        fitting = [name for name, other in INPUT_KINDS.items() if other != kind and len(other.columns) == len(fields)
                   and names_media(fields[len(other.columns) - 1], other.columns[-1])]
        if fitting:
            raise PrepareError(f"{where}: {len(fields)} columns where a file of this kind has {len(kind.columns)} "
                               f"({', '.join(kind.columns)}), and column {len(fields)} holds the media: is it a "
                               f"file of {options_of_kinds(fitting)}?")
    name = media.strip().lower()
    for other, suffixes in MEDIA_SUFFIXES.items():
        if other != medium and name.endswith(suffixes) and not name.endswith(SHARED_SUFFIXES.get(medium, ())):
            kinds = [option for option, candidate in INPUT_KINDS.items() if candidate.columns[-1] == other]
            raise PrepareError(f"{where}: the {medium} field names a file of {other} ({media.strip()}): is it a file "
                               f"of {options_of_kinds(kinds)}?")


class InputFile:
    """The rows of one per-task TSV file in the unify columns; ``unanswered`` counts the questions left out
    for having no answers. The file's stem is the dataset name and prefixes its ids; ``media_prefix`` is the
    folder (under the pretraining media folder) that its media paths are relative to."""

    def __init__(self, kind: str, path: Union[str, Path], media_prefix: str = "", media_dir: Optional[str] = None):
        self.kind = INPUT_KINDS[kind]
        self.path = Path(path)
        self.name = self.path.stem
        self.media_prefix = media_prefix
        self.media_dir = media_dir
        self.unanswered = 0

    def __iter__(self) -> Iterator[Tuple[str, ...]]:
        first_line: Dict[str, str] = {}
        lines = 0
        for where, fields in tsv_fields(self.path):
            lines += 1
            try:
                row = unified_row(self.kind, fields, self.name, where)
            except PrepareError as err:
                hint = other_kind_hint(self.kind, fields) if lines == 1 else ""
                raise PrepareError(f"{err}{hint}") from err
            if lines == 1:
                check_first_row(self.kind, fields, where)
            if row is None:
                self.unanswered += 1
                continue
            if row[0] in first_line:
                raise PrepareError(f"{where}: id {fields[0]!r} repeats {first_line[row[0]]}")
            first_line[row[0]] = where
            if self.media_prefix:
                row = (row[0], self.prefixed(row[MEDIA_COLUMN]), *row[MEDIA_COLUMN + 1:])
            yield row
        if not lines:
            raise PrepareError(f"{self.path}: no rows in the file: nothing to convert")

    def prefixed(self, field: str) -> str:
        """``media_prefix/field``; an absolute path, or an image field that holds base64, as it is."""
        folder = os.path.join(self.media_dir or "", self.media_prefix)
        if os.path.isabs(field) or (self.kind.images and embedded_image(field, folder)):
            return field
        return posixpath.join(self.media_prefix, field)


# ---------------------------------------------------------------------------------------------------------------
# Media


def embedded_image(field: str, media_dir: str) -> bool:
    """Whether an image field holds the image's base64 rather than a path, decided as the image loader
    (``media_bytes``) decides: a field that names a file is a path, else base64 if it decodes."""
    if len(field) <= MAX_PATH and os.path.isfile(os.path.join(media_dir, field)):
        return False
    return base64_bytes(field) is not None


class StreamMediaFilter(MediaFilter):
    """The media check of one input file. Image fields that already hold base64 (the demo corpus's and OFA's
    files) pass as they are; video and audio are never embedded: their tasks read files."""

    def __init__(self, options: MediaOptions, source: InputFile):
        super().__init__(options if source.kind.images else replace(options, embed=False), MEDIA_COLUMN,
                         source.path)  # missing media are reported against the input file that names them
        self.images = source.kind.images

    def media_field(self, relative: str) -> Optional[str]:
        if self.images and embedded_image(relative, self.options.media_dir):
            return relative
        return super().media_field(relative)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def checked_inputs(inputs: Sequence[Tuple[str, ...]], media_dir: Optional[str] = None) -> List[InputFile]:
    """The input files of (kind, path) or (kind, path, media prefix) triples, once every kind is known, every
    file exists and no two share a dataset name."""
    if not inputs:
        raise ValueError(f"no input files: give one or more of {', '.join(f'--{kind}' for kind in INPUT_KINDS)}")
    for kind, *_ in inputs:
        if kind not in INPUT_KINDS:
            raise ValueError(f"unknown input kind {kind!r} (expected one of {', '.join(INPUT_KINDS)})")
    require_files([(path, f"--{kind}") for kind, path, *_ in inputs])
    files, seen = [InputFile(*spec, media_dir=media_dir) for spec in inputs], {}
    for source in files:
        if source.name in seen:
            raise ValueError(f"{seen[source.name]} and {source.path} have the same name {source.name!r}: it is "
                             f"the dataset name and id prefix of their rows, so it must differ. Give one of them "
                             f"a name of its own by linking (or copying) it, e.g. {renaming(source.path)}, and "
                             "pass the new name")
        seen[source.name] = source.path
    return files


def renaming(path: Path) -> str:
    """A command that gives ``path`` a second name, prefixed by its folder's (``clotho_audio_caption_train.tsv``
    for ``clotho/audio_caption_train.tsv``): a link's own name is the dataset name."""
    folder = path.parent.name or "other"
    return f"ln -s {path.name} {path.parent / f'{folder}_{path.name}'}"


def type_counts(counts: Counter) -> str:
    return ", ".join(f"{counts[kind]} {kind}" for kind in UNIFY_TYPES if counts[kind])


def prepare_pretraining(out: Union[str, Path], stream: str, split: str = "train",
                        inputs: Sequence[Tuple[str, Union[str, Path]]] = (),
                        media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``<out>/<stream>_<split>.tsv``: the rows of every input, in the order given, in the unify columns.

    ``inputs`` are (kind, path) pairs, the kinds keys of :data:`INPUT_KINDS`, or (kind, path, media prefix)
    triples. Each row's uniq_id is ``<dataset name>-<id>``, the dataset name being its file's stem; media paths
    are put under the input's media prefix (a folder of the pretraining media folder; base64 images and
    absolute paths stay as they are), then checked, or embedded, by ``media`` (whose ``media_dir`` is then the
    folder that holds the prefixes). Questions without answers (test files) cannot be trained on: they are left
    out and counted in the notes.
    """
    media = media or MediaOptions()
    media.validate()
    for value, option in ((stream, "--stream"), (split, "--split")):
        if not NAME.fullmatch(value or ""):
            raise ValueError(f"{option} must be letters, digits and underscores, got {value!r}")
    files = checked_inputs(inputs, media.media_dir)
    path = Path(out) / f"{stream}_{split}.tsv"
    checks = [StreamMediaFilter(media, source) for source in files]
    counts = Counter()

    def counted_rows():
        for check, source in zip(checks, files):
            for row in check(source):
                counts[row[-1]] += 1
                yield row

    written = Written(path, write_tsv(path, counted_rows()))
    if written.rows:
        written.notes.append(type_counts(counts))
    unanswered = sum(source.unanswered for source in files)
    if unanswered:
        written.notes.append(f"{counted(unanswered, 'question')} without answers left out")
    skipped = sum(check.skipped for check in checks)
    if skipped:
        missing = {field: problem for check in checks for field, problem in check.missing.items()}
        written.notes.append(skipped_note(skipped, missing))
    return [written]
