"""SNLI-VE (``snli_ve_{train,dev,test}.jsonl``) -> ``snli_ve_{train,valid,test}.tsv`` with the columns id,
image-id, image, hypothesis, premise, label (yes / no / maybe)."""
from pathlib import Path
from typing import List, Optional, Union

from unival.data_utils.prepare.common import (MediaOptions, PrepareError, Written, json_lines, media_path,
                                              nonempty_text, numbered, require_files, require_records,
                                              write_split)

PREFIX = "snli_ve"
DEFAULT_IMAGE_FOLDER = "flickr30k_images"
LABELS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
# The official files spell the image key "Flikr30kID" (value "3416050480.jpg"); others use "Flickr30K_ID".
IMAGE_ID_KEYS = ("Flickr30K_ID", "Flikr30kID")
IMAGE_COLUMN = 2


def flickr_image_id(record: dict, where: str) -> str:
    for key in IMAGE_ID_KEYS:
        if key in record:
            value = str(record[key]).strip()
            image_id = value[: -len(".jpg")] if value.lower().endswith(".jpg") else value
            if not image_id:
                raise PrepareError(f"{where}: empty {key}")
            return image_id
    raise PrepareError(f"{where}: no Flickr30k image id (expected one of the keys {', '.join(IMAGE_ID_KEYS)})")


def entailment_rows(path: Union[str, Path], option: str, image_folder: str = DEFAULT_IMAGE_FOLDER) -> List[tuple]:
    """Rows (without the running id) of one jsonl file, in file order."""
    rows = []
    for number, record in json_lines(path, option):
        where = f"{path}:{number}"
        image_id = flickr_image_id(record, where)
        label = record.get("gold_label")
        if label not in LABELS:
            raise PrepareError(f"{where}: gold_label {label!r} is not one of {', '.join(LABELS)}")
        hypothesis = nonempty_text(record.get("sentence2"), where, "hypothesis (sentence2)")
        premise = nonempty_text(record.get("sentence1"), where, "premise (sentence1)")
        rows.append((image_id, media_path(image_folder, f"{image_id}.jpg"), hypothesis, premise, LABELS[label]))
    return require_records(rows, path, "pairs")


def prepare_snli_ve(out: Union[str, Path], train=None, dev=None, test=None, image_folder: str = DEFAULT_IMAGE_FOLDER,
                    media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``<out>/snli_ve_<split>.tsv`` for each file given (dev -> valid); ids are the row numbers."""
    media = media or MediaOptions()
    media.validate()
    inputs = [("train", train, "--train"), ("valid", dev, "--dev"), ("test", test, "--test")]
    if all(path is None for _, path, _ in inputs):
        raise ValueError("give at least one of --train, --dev and --test")
    require_files([(path, option) for _, path, option in inputs])
    rows = {split: entailment_rows(path, option, image_folder) for split, path, option in inputs if path is not None}
    return [write_split(Path(out) / f"{PREFIX}_{split}.tsv", numbered(split_rows), IMAGE_COLUMN, media)
            for split, split_rows in rows.items()]
