"""MSR-VTT captions (``train_val_videodatainfo.json``, ``test_videodatainfo.json``) ->
``video_caption_{train,valid,test}.tsv`` with the columns id, video-id, caption, ``-``, video path."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from unival.data_utils.prepare.common import (MediaOptions, PrepareError, Written, join_references, load_json,
                                              media_path, nonempty_text, numbered, record_list, require_files,
                                              require_records, value_of, write_split)

PREFIX = "video_caption"
MSRVTT_SPLITS = {"train": "train", "validate": "valid", "test": "test"}
OUTPUT_SPLITS = ("train", "valid", "test")
DEFAULT_VIDEO_FOLDER = "videos"
DEFAULT_EXTENSION = "mp4"
VIDEO_COLUMN = 4


def videos_and_captions(annotation_files: Sequence[Union[str, Path]]):
    """(video id -> (output split, file listing it), video id -> captions in file order) over all the files."""
    splits: Dict[str, Tuple[str, Union[str, Path]]] = {}
    captions: Dict[str, List[str]] = {}
    for path in annotation_files:
        data = load_json(path, "--annotations")
        for video in require_records(record_list(data, "videos", path), path, "videos"):
            where = f"{path}: video {video.get('video_id')}"
            video_id = value_of(video, "video_id", where, str)
            split = value_of(video, "split", where, str)
            if split not in MSRVTT_SPLITS:
                raise PrepareError(f"{where}: unknown split {split!r} (expected one of {list(MSRVTT_SPLITS)})")
            if video_id in splits:
                raise PrepareError(f"{where}: listed twice")
            splits[video_id] = (MSRVTT_SPLITS[split], path)
            captions[video_id] = []
        for sentence in record_list(data, "sentences", path):
            where = f"{path}: sentence {sentence.get('sen_id', '')} of video {sentence.get('video_id')}"
            video_id = value_of(sentence, "video_id", where, str)
            if video_id not in captions:
                raise PrepareError(f"{where}: the video is not in the \"videos\" of the annotation files")
            captions[video_id].append(nonempty_text(value_of(sentence, "caption", where), where, "caption"))
    return splits, captions


def video_caption_rows(splits: Dict[str, Tuple[str, Union[str, Path]]], captions: Dict[str, List[str]],
                       video_folder: str, extension: str) -> Dict[str, List[tuple]]:
    """Rows (without the running id) per split: one per caption in train, one per video (references joined
    by ``&&``) in valid and test."""
    rows: Dict[str, List[tuple]] = {}
    for video_id, (split, source) in splits.items():
        where = f"{source}: video {video_id}"
        if not captions[video_id]:
            raise PrepareError(f"{where}: no caption in the annotation files")
        path = media_path(video_folder, f"{video_id}.{extension.lstrip('.')}")
        if split == "train":
            rows.setdefault(split, []).extend((video_id, caption, "-", path) for caption in captions[video_id])
        else:
            references = join_references(captions[video_id], where)
            rows.setdefault(split, []).append((video_id, references, "-", path))
    return rows


def prepare_msrvtt_caption(annotations: Sequence[Union[str, Path]], out: Union[str, Path],
                           video_folder: str = DEFAULT_VIDEO_FOLDER, extension: str = DEFAULT_EXTENSION,
                           media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``<out>/video_caption_<split>.tsv`` for each split with videos (MSR-VTT's "validate" is our
    valid); the video path is ``<video_folder>/<video_id>.<extension>``; ids are the row numbers."""
    media = media or MediaOptions()
    media.validate()
    if not annotations:
        raise ValueError("give at least one file to --annotations")
    require_files([(path, "--annotations") for path in annotations])
    rows = video_caption_rows(*videos_and_captions(annotations), video_folder, extension)
    return [write_split(Path(out) / f"{PREFIX}_{split}.tsv", numbered(rows[split]), VIDEO_COLUMN, media)
            for split in OUTPUT_SPLITS if split in rows]
