"""COCO captions with Karpathy's splits (``dataset_coco.json``) -> ``caption_{train,valid,test}.tsv`` with the
columns id, image-id, caption, objects (empty), image."""
from pathlib import Path
from typing import Dict, List, Optional, Union

from unival.data_utils.prepare.common import (MediaOptions, PrepareError, Written, join_references, load_json,
                                              media_path, nonempty_text, numbered, record_list,
                                              require_records, value_of, write_split)

PREFIX = "caption"
# Karpathy's "restval" is the part of COCO val2014 that his split gives to training.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "valid", "test": "test"}
OUTPUT_SPLITS = ("train", "valid", "test")
IMAGE_COLUMN = 4


def image_path(image: dict, where: str) -> str:
    """``filepath/filename`` (e.g. ``val2014/COCO_val2014_000000391895.jpg``), relative to the COCO image root."""
    folder = value_of(image, "filepath", where, str)
    name = value_of(image, "filename", where, str)
    if not name:
        raise PrepareError(f"{where}: empty 'filename'")
    return media_path(folder, name)


def captions_of(image: dict, where: str) -> List[str]:
    sentences = value_of(image, "sentences", where, list)
    if not sentences:
        raise PrepareError(f"{where}: no sentences")
    captions = []
    for number, sentence in enumerate(sentences):
        if not isinstance(sentence, dict):
            raise PrepareError(f"{where}: sentence {number} is not an object")
        captions.append(nonempty_text(value_of(sentence, "raw", where), where, f"caption (sentence {number})"))
    return captions


def caption_rows(images: List[dict], source: Union[str, Path], include_restval: bool = True) -> Dict[str, List[tuple]]:
    """Rows of each output split, without the running id: training holds one row per caption, valid and test
    one row per image with every reference joined by ``&&``."""
    rows: Dict[str, List[tuple]] = {}
    for index, image in enumerate(images):
        where = f"{source}: image {image.get('cocoid', f'number {index}')}"
        cocoid = value_of(image, "cocoid", where, (int, str))
        karpathy_split = value_of(image, "split", where, str)
        if karpathy_split not in KARPATHY_SPLITS:
            raise PrepareError(f"{where}: unknown split {karpathy_split!r} (expected one of {list(KARPATHY_SPLITS)})")
        if karpathy_split == "restval" and not include_restval:
            continue
        split = KARPATHY_SPLITS[karpathy_split]
        path, captions = image_path(image, where), captions_of(image, where)
        if split == "train":
            rows.setdefault(split, []).extend((cocoid, caption, "", path) for caption in captions)
        else:
            rows.setdefault(split, []).append((cocoid, join_references(captions, where), "", path))
    return rows


def prepare_coco_caption(karpathy_json: Union[str, Path], out: Union[str, Path], media: Optional[MediaOptions] = None,
                         include_restval: bool = True) -> List[Written]:
    """Writes ``<out>/caption_<split>.tsv`` for each split with images; ids are the row numbers of each file."""
    media = media or MediaOptions()
    media.validate()
    images = record_list(load_json(karpathy_json, "--karpathy-json"), "images", karpathy_json)
    require_records(images, karpathy_json, "images")
    rows = caption_rows(images, karpathy_json, include_restval)
    return [write_split(Path(out) / f"{PREFIX}_{split}.tsv", numbered(rows[split]), IMAGE_COLUMN, media)
            for split in OUTPUT_SPLITS if split in rows]
