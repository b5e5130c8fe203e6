"""MSRVTT-QA and MSVD-QA (``{train,val,test}_qa.json``) -> ``video_vqa_{train,valid,test}.tsv`` with the columns
qid, video-id, question, ``1.0|!+answer``, ``-``, video path, and ``answers.txt`` from the training answers."""
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from unival.data_utils.prepare.common import (MediaOptions, PrepareError, Written, answers_field, clean_text,
                                              load_json, media_path, nonempty_text, record_list, require_file,
                                              require_files, value_of, write_answer_list, write_split)

PREFIX = "video_vqa"
ANSWER_LIST = "answers.txt"
VIDEO_COLUMN = 5
# dataset -> (default video folder, default extension)
VIDEO_DEFAULTS = {"msrvtt": ("videos", "mp4"), "msvd": ("YouTubeClips", "avi")}
MAPPING_LINE = re.compile(r"(?P<name>\S+)\s+vid(?P<id>\d+)")


def plain_answer(text: str) -> str:
    """Video QA answers are compared as given (exact match), so only case and spacing are normalised."""
    return " ".join(clean_text(text).lower().split())


def msvd_video_names(path: Union[str, Path]) -> Dict[int, str]:
    """MSVD-QA video id -> YouTube clip name, from ``youtube_mapping.txt`` lines ``<clip name> vid<id>``."""
    path = require_file(path, "--youtube-mapping")
    names = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            match = MAPPING_LINE.fullmatch(line.strip())
            if match is None:
                raise PrepareError(f"{path}:{number}: expected '<youtube clip name> vid<number>', got {line.strip()!r}")
            video_id = int(match["id"])
            if video_id in names:
                raise PrepareError(f"{path}:{number}: vid{video_id} is mapped twice")
            names[video_id] = match["name"]
    return names


def video_namer(dataset: str, youtube_mapping=None) -> Callable[[int, str], str]:
    """(integer video id, where) -> the video's name: ``video<id>`` for MSRVTT, the clip name for MSVD."""
    if dataset == "msrvtt":
        return lambda video_id, where: f"video{video_id}"
    if dataset != "msvd":
        raise ValueError(f"unknown video QA dataset {dataset!r} (expected msrvtt or msvd)")
    if youtube_mapping is None:
        raise FileNotFoundError("MSVD-QA needs --youtube-mapping (youtube_mapping.txt)")
    names = msvd_video_names(youtube_mapping)

    def msvd_name(video_id: int, where: str) -> str:
        if video_id not in names:
            raise PrepareError(f"{where}: video {video_id} (vid{video_id}) is not in {youtube_mapping}")
        return names[video_id]
    return msvd_name


def qa_records(path, option: str) -> List[Tuple[str, int, str, str, str]]:
    """(where, qid, video id, question, answer) of each question of a ``*_qa.json`` file."""
    records = []
    for index, item in enumerate(record_list(load_json(path, option), None, path)):
        where = f"{path}: question {item.get('id', f'number {index}')}"
        qid = value_of(item, "id", where, (int, str))
        video_id = value_of(item, "video_id", where, int)
        question = nonempty_text(value_of(item, "question", where), where, "question")
        answer = plain_answer(str(value_of(item, "answer", where, (str, int))))
        if not answer:
            raise PrepareError(f"{where}: empty answer")
        records.append((where, qid, video_id, question, answer))
    return records


def training_answer_list(records, size: Optional[int]) -> List[str]:
    """Distinct training answers, most frequent first (ties alphabetical), cut to ``size`` when given."""
    counts = Counter(answer for *_, answer in records)
    ranked = [answer for answer, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return ranked if size is None else ranked[:size]


def video_qa_rows(records, name_of: Callable[[int, str], str], video_folder: str, extension: str,
                  allowed: Optional[set] = None) -> Tuple[List[tuple], int]:
    """(rows, questions dropped because their answer is not in ``allowed``)."""
    rows, dropped = [], 0
    for where, qid, video_id, question, answer in records:
        if allowed is not None and answer not in allowed:
            dropped += 1
            continue
        name = name_of(video_id, where)
        path = media_path(video_folder, f"{name}.{extension.lstrip('.')}")
        rows.append((qid, name, question, answers_field([(1.0, answer)], where), "-", path))
    return rows, dropped


def prepare_video_qa(dataset: str, out: Union[str, Path], train=None, val=None, test=None, youtube_mapping=None,
                     video_folder: Optional[str] = None, extension: Optional[str] = None,
                     num_answers: Optional[int] = None, media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``video_vqa_<split>.tsv`` for each file given (val -> valid) and, from the training file,
    ``answers.txt``. Training questions whose answer is outside the list (only when ``num_answers`` cuts it)
    are dropped; valid and test keep every question, so accuracy is over the whole split."""
    media = media or MediaOptions()
    media.validate()
    if train is None:
        raise ValueError("--train is needed: the answer list comes from the training answers")
    if num_answers is not None and num_answers < 1:
        raise ValueError(f"--num-answers must be positive, got {num_answers}")
    require_files([(train, "--train"), (val, "--val"), (test, "--test"), (youtube_mapping, "--youtube-mapping")])
    default_folder, default_extension = VIDEO_DEFAULTS.get(dataset, (None, None))
    name_of = video_namer(dataset, youtube_mapping)
    video_folder = default_folder if video_folder is None else video_folder
    extension = extension or default_extension
    out = Path(out)
    train_records = qa_records(train, "--train")
    answer_list = training_answer_list(train_records, num_answers)
    inputs = [("train", train, "--train", set(answer_list)), ("valid", val, "--val", None),
              ("test", test, "--test", None)]
    outputs = []
    for split, path, option, allowed in inputs:
        if path is None:
            continue
        records = train_records if split == "train" else qa_records(path, option)
        rows, dropped = video_qa_rows(records, name_of, video_folder, extension, allowed)
        notes = [f"{dropped} questions dropped: answer not in {ANSWER_LIST}"] if dropped else []
        outputs.append((out / f"{PREFIX}_{split}.tsv", rows, notes))
    written = [write_answer_list(out / ANSWER_LIST, answer_list)]
    return written + [write_split(path, rows, VIDEO_COLUMN, media, notes) for path, rows, notes in outputs]
