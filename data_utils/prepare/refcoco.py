"""RefCOCO, RefCOCO+ and RefCOCOg (``refs(unc).p`` / ``refs(umd).p`` plus ``instances.json``) ->
``<prefix>_{train,valid,testA,testB,test}.tsv`` with the columns id, image-id, text, ``x0,y0,x1,y1``, image."""
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from unival.data_utils.prepare.common import (MediaOptions, PrepareError, Written, load_json, load_plain_pickle,
                                              counted, media_path, nonempty_text, numbered, record_list,
                                              require_files, require_records, value_of, write_split)
from unival.data_utils.transforms import BOX_TOLERANCE

DEFAULT_PREFIX = "refcoco"
DEFAULT_IMAGE_FOLDER = "train2014"  # every RefCOCO image is a COCO train2014 image
# refer's split names -> ours; RefCOCO/RefCOCO+ (unc) have testA (people) and testB (objects), RefCOCOg (umd) test.
REFER_SPLITS = {"train": "train", "val": "valid", "testA": "testA", "testB": "testB", "test": "test"}
IMAGE_COLUMN = 4
NUMBER = (int, float)


def format_box(box: Sequence[float]) -> str:
    # + 0.0 turns -0.0 into 0.0, so a box never prints "-0.00"
    return ",".join(f"{value + 0.0:.2f}" for value in box)


def corner_box(bbox, width: float, height: float, clip: bool, where: str) -> Tuple[Tuple[float, ...], bool]:
    """(COCO ``[x, y, w, h]`` -> ``(x0, y0, x1, y1)`` rounded to 2 decimals, inside the ``width`` x ``height``
    image; whether ``clip`` mended it). A box reaching outside by up to ``BOX_TOLERANCE`` pixels (annotation
    rounding, which the refcoco task accepts too) is clipped as a matter of course; further out it is an error,
    or is clipped with ``clip``."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
            isinstance(v, NUMBER) and not isinstance(v, bool) for v in bbox):
        raise PrepareError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:  # no clipping mends it
        raise PrepareError(f"{where}: bbox {list(bbox)} has a width or height of zero or less (COCO boxes are "
                           "[x, y, width, height])")
    box = [round(v, 2) for v in (x, y, x + w, y + h)]
    limits = (width, height, width, height)
    outside = any(v < -BOX_TOLERANCE or v > limit + BOX_TOLERANCE for v, limit in zip(box, limits))
    if outside and not clip:
        raise PrepareError(f"{where}: box {format_box(box)} (bbox {list(bbox)}) is outside the {width:g}x{height:g} "
                           f"image (by more than {BOX_TOLERANCE:g} pixel; pass --clip-boxes to clip it)")
    box = [min(max(v, 0.0), limit) for v, limit in zip(box, limits)]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise PrepareError(f"{where}: empty box {format_box(box)} (bbox {list(bbox)})")
    return tuple(box), outside


def instances_index(instances_path: Union[str, Path]) -> Tuple[Dict, Dict]:
    """(image id -> image record, annotation id -> annotation record) of a COCO-style instances file."""
    data = load_json(instances_path, "--instances")
    images, annotations = {}, {}
    for image in record_list(data, "images", instances_path):
        where = f"{instances_path}: image {image.get('id')}"
        images[value_of(image, "id", where, (int, str))] = image
        for key in ("width", "height"):
            value_of(image, key, where, NUMBER)
        value_of(image, "file_name", where, str)
    for annotation in record_list(data, "annotations", instances_path):
        annotations[value_of(annotation, "id", f"{instances_path}: annotation {annotation.get('id')}", (int, str))] = \
            annotation
    return images, annotations


def referring_rows(refs: List[dict], images: Dict, annotations: Dict, refs_path, instances_path,
                   image_folder: str = DEFAULT_IMAGE_FOLDER,
                   clip: bool = False) -> Tuple[Dict[str, List[tuple]], Counter]:
    """(rows (without the running id) of each split present in ``refs``, one per sentence of each ref; how many
    boxes of each split ``clip`` clipped)."""
    rows: Dict[str, List[tuple]] = {}
    clipped = Counter()
    for index, ref in enumerate(refs):
        where = f"{refs_path}: ref {ref.get('ref_id', f'number {index}')}"
        split = value_of(ref, "split", where, str)
        if split not in REFER_SPLITS:
            raise PrepareError(f"{where}: unknown split {split!r} (expected one of {list(REFER_SPLITS)})")
        image_id = value_of(ref, "image_id", where, (int, str))
        ann_id = value_of(ref, "ann_id", where, (int, str))
        if image_id not in images:
            raise PrepareError(f"{where}: image {image_id} is not in {instances_path}")
        if ann_id not in annotations:
            raise PrepareError(f"{where}: annotation {ann_id} is not in {instances_path}")
        image, annotation = images[image_id], annotations[ann_id]
        box_where = f"{where} (annotation {ann_id} of {instances_path})"
        box, outside = corner_box(value_of(annotation, "bbox", box_where), image["width"], image["height"], clip,
                                  box_where)
        clipped[REFER_SPLITS[split]] += outside
        path = media_path(image_folder, image["file_name"])
        sentences = value_of(ref, "sentences", where, list)
        if not sentences:
            raise PrepareError(f"{where}: no sentences")
        for number, sentence in enumerate(sentences):
            if not isinstance(sentence, dict):
                raise PrepareError(f"{where}: sentence {number} is not a dict")
            text = nonempty_text(value_of(sentence, "sent", where), where, f"sentence {number}")
            rows.setdefault(REFER_SPLITS[split], []).append((image_id, text, format_box(box), path))
    return rows, clipped


def prepare_refcoco(refs: Union[str, Path], instances: Union[str, Path], out: Union[str, Path],
                    prefix: str = DEFAULT_PREFIX, image_folder: str = DEFAULT_IMAGE_FOLDER, clip_boxes: bool = False,
                    media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``<out>/<prefix>_<split>.tsv`` for each split of the refs file; ids are the row numbers.

    The image path is ``<image_folder>/<file_name of instances.json>``: the refs' own ``file_name`` carries an
    annotation suffix (``COCO_train2014_000000581857_16.jpg``) that names no file.
    """
    media = media or MediaOptions()
    media.validate()
    require_files([(refs, "--refs"), (instances, "--instances")])
    ref_list = require_records(record_list(load_plain_pickle(refs, "--refs"), None, refs), refs, "refs")
    images, annotations = instances_index(instances)
    rows, clipped = referring_rows(ref_list, images, annotations, refs, instances, image_folder, clip_boxes)
    ordered = [split for split in REFER_SPLITS.values() if split in rows]
    return [write_split(Path(out) / f"{prefix}_{split}.tsv", numbered(rows[split]), IMAGE_COLUMN, media,
                        clipped_note(clipped[split]))
            for split in ordered]


def clipped_note(boxes: int) -> List[str]:
    """The note of the boxes --clip-boxes clipped (those within BOX_TOLERANCE of the image are not counted)."""
    if not boxes:
        return []
    return [f"{counted(boxes, 'box', 'boxes')} clipped to the image (more than {BOX_TOLERANCE:g} pixel outside; "
            "--clip-boxes)"]
