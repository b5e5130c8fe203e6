"""AudioCaps (``{train,val,test}.csv``) and Clotho (``clotho_captions_{development,validation,evaluation}.csv``)
-> ``audio_caption_{train,valid,test}.tsv`` with the columns id, audio-id, caption, ``-``, audio path."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from unival.data_utils.prepare.common import (MediaOptions, PrepareError, Written, csv_records, join_references,
                                              media_path, nonempty_text, numbered, require_files, require_records,
                                              write_split)

PREFIX = "audio_caption"
AUDIO_COLUMN = 4
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
AUDIOCAPS_PATTERN_FIELDS = ("audiocap_id", "youtube_id", "start_time", "split")
DEFAULT_AUDIOCAPS_PATTERN = "{youtube_id}_{start_time}.wav"
CLOTHO_COLUMNS = ("file_name",) + tuple(f"caption_{k}" for k in range(1, 6))
# our split -> Clotho's name for it (the word in its CSV and folder names)
CLOTHO_SPLITS = {"train": "development", "valid": "validation", "test": "evaluation"}


def grouped_rows(items: Sequence[Tuple[str, str, str, str]], split: str) -> List[tuple]:
    """(audio id, caption, path, where) items -> rows (without the running id): one per caption in train, one
    per clip with its captions joined by ``&&`` elsewhere (clips in order of first appearance)."""
    if split == "train":
        return [(audio_id, caption, "-", path) for audio_id, caption, path, _ in items]
    clips: Dict[str, Tuple[str, str, List[str]]] = {}
    for audio_id, caption, path, where in items:
        clips.setdefault(audio_id, (path, where, []))[2].append(caption)
    return [(audio_id, join_references(captions, where), "-", path)
            for audio_id, (path, where, captions) in clips.items()]


def write_audio_splits(out, rows: Dict[str, List[tuple]], media: MediaOptions) -> List[Written]:
    """Writes the files once every input is read: a bad annotation leaves the output folder untouched."""
    return [write_split(Path(out) / f"{PREFIX}_{split}.tsv", numbered(split_rows), AUDIO_COLUMN, media)
            for split, split_rows in rows.items()]


# ---------------------------------------------------------------------------------------------------------------
# AudioCaps


def check_audio_pattern(pattern: str) -> None:
    """A pattern may only use the fields {audiocap_id}, {youtube_id}, {start_time} and {split}."""
    try:
        pattern.format(**{name: "x" for name in AUDIOCAPS_PATTERN_FIELDS})
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"--audio-pattern {pattern!r}: bad pattern ({err!r}); it may use the fields "
                         f"{', '.join('{' + name + '}' for name in AUDIOCAPS_PATTERN_FIELDS)}") from None


def audiocaps_items(path, option: str, split_name: str, pattern: str) -> List[Tuple[str, str, str, str]]:
    """(audio id ``<youtube_id>_<start_time>``, caption, audio path, where) of each line of an AudioCaps CSV."""
    items = []
    for number, record in csv_records(path, option, AUDIOCAPS_COLUMNS):
        where = f"{path}:{number}"
        fields = {name: record[name].strip() for name in AUDIOCAPS_COLUMNS[:3]}
        for name, value in fields.items():
            if not value:
                raise PrepareError(f"{where}: empty {name}")
        caption = nonempty_text(record["caption"], where, "caption")
        audio_id = f"{fields['youtube_id']}_{fields['start_time']}"
        items.append((audio_id, caption, pattern.format(split=split_name, **fields), where))
    return require_records(items, path, "captions")


def prepare_audiocaps(out: Union[str, Path], train=None, val=None, test=None,
                      audio_pattern: str = DEFAULT_AUDIOCAPS_PATTERN,
                      media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``audio_caption_<split>.tsv`` for each CSV given (val -> valid); the audio path is
    ``audio_pattern`` filled from the CSV line (and ``{split}``: train, val or test); ids are row numbers."""
    media = media or MediaOptions()
    media.validate()
    check_audio_pattern(audio_pattern)
    inputs = [("train", "train", train, "--train"), ("valid", "val", val, "--val"), ("test", "test", test, "--test")]
    if all(path is None for _, _, path, _ in inputs):
        raise ValueError("give at least one of --train, --val and --test")
    require_files([(path, option) for _, _, path, option in inputs])
    rows = {split: grouped_rows(audiocaps_items(path, option, split_name, audio_pattern), split)
            for split, split_name, path, option in inputs if path is not None}
    return write_audio_splits(out, rows, media)


# ---------------------------------------------------------------------------------------------------------------
# Clotho


def clotho_items(path, option: str, folder: str) -> List[Tuple[str, str, str, str]]:
    """(file name, caption, ``<folder>/<file name>``, where) of each caption of a Clotho captions CSV."""
    items = []
    for number, record in csv_records(path, option, CLOTHO_COLUMNS):
        where = f"{path}:{number}"
        file_name = record["file_name"].strip()
        if not file_name:
            raise PrepareError(f"{where}: empty file_name")
        for column in CLOTHO_COLUMNS[1:]:
            caption = nonempty_text(record[column], where, column)
            items.append((file_name, caption, media_path(folder, file_name), where))
    return require_records(items, path, "captions")


def prepare_clotho(out: Union[str, Path], development=None, validation=None, evaluation=None,
                   audio_folders: Optional[Dict[str, str]] = None,
                   media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``audio_caption_<split>.tsv`` for each CSV given (development -> train, validation -> valid,
    evaluation -> test); the audio path is ``<folder of the split>/<file_name>``, the folder named after the
    split (``development`` ...) unless ``audio_folders`` says otherwise; ids are row numbers."""
    media = media or MediaOptions()
    media.validate()
    folders = {**{name: name for name in CLOTHO_SPLITS.values()}, **(audio_folders or {})}
    inputs = [(split, name, path) for (split, name), path in
              zip(CLOTHO_SPLITS.items(), (development, validation, evaluation))]
    if all(path is None for _, _, path in inputs):
        raise ValueError("give at least one of --development, --validation and --evaluation")
    require_files([(path, f"--{name}") for _, name, path in inputs])
    rows = {split: grouped_rows(clotho_items(path, f"--{name}", folders[name]), split)
            for split, name, path in inputs if path is not None}
    return write_audio_splits(out, rows, media)
