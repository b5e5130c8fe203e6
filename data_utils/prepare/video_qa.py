"""MSRVTT-QA and MSVD-QA (``{train,val,test}_qa.json``) -> ``video_vqa_{train,valid,test}.tsv`` with the columns
qid, video-id, question, ``1.0|!+answer``, ``-``, video path, and ``answers.txt`` from the training answers."""
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from unival.data_utils.answers import parse_answers
from unival.data_utils.prepare.common import (MediaFilter, MediaOptions, PrepareError, Written, answers_field,
                                              clean_text, counted, load_json, media_notes, media_path,
                                              nonempty_text, record_list, require_file, require_files,
                                              require_records, value_of, write_answer_list, write_split, write_tsv)

PREFIX = "video_vqa"
ANSWER_LIST = "answers.txt"
ANSWER_COLUMN, VIDEO_COLUMN = 3, 5
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
    return require_records(records, path, "questions")


def row_answer(row) -> str:
    """The one answer of a video QA row (its answers column is ``1.0|!+answer``)."""
    return parse_answers(row[ANSWER_COLUMN])[0][1]


def training_answer_list(answers: List[str], size: Optional[int]) -> List[str]:
    """Distinct training answers, most frequent first (ties alphabetical), cut to ``size`` when given."""
    counts = Counter(answers)
    ranked = [answer for answer, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return ranked if size is None else ranked[:size]


def video_qa_rows(records, name_of: Callable[[int, str], str], video_folder: str, extension: str) -> List[tuple]:
    """One row per question, in file order."""
    rows = []
    for where, qid, video_id, question, answer in records:
        name = name_of(video_id, where)
        path = media_path(video_folder, f"{name}.{extension.lstrip('.')}")
        rows.append((qid, name, question, answers_field([(1.0, answer)], where), "-", path))
    return rows


def prepare_video_qa(dataset: str, out: Union[str, Path], train=None, val=None, test=None, youtube_mapping=None,
                     video_folder: Optional[str] = None, extension: Optional[str] = None,
                     num_answers: Optional[int] = None, media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``video_vqa_<split>.tsv`` for each file given (val -> valid) and ``answers.txt``, from the answers
    of the training rows written: a question left out for its missing video (``media.skip_missing``) does not
    count. Training questions whose answer is outside the list (only when ``num_answers`` cuts it) are dropped;
    valid and test keep every question, so accuracy is over the whole split."""
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
    rows = {split: video_qa_rows(qa_records(path, option), name_of, video_folder, extension)
            for split, path, option in [("train", train, "--train"), ("valid", val, "--val"), ("test", test, "--test")]
            if path is not None}
    # The training videos are checked first, so that the answer list holds only answers of rows written.
    train_path = out / f"{PREFIX}_train.tsv"
    check = MediaFilter(media, VIDEO_COLUMN, train_path)
    with_video = list(check(rows["train"]))
    answers_of_rows = [row_answer(row) for row in with_video]
    answer_list = training_answer_list(answers_of_rows, num_answers)
    allowed = set(answer_list)
    kept = [row for row, answer in zip(with_video, answers_of_rows) if answer in allowed]
    dropped = len(with_video) - len(kept)
    notes = [f"{counted(dropped, 'question')} dropped: answer not in {ANSWER_LIST}"] if dropped else []
    answers = write_answer_list(out / ANSWER_LIST, answer_list)
    if check.skipped:
        answers.notes.append(f"from the {counted(len(with_video), 'training question')} with a video file")
    written = [answers, Written(train_path, write_tsv(train_path, kept), notes + media_notes(check))]
    return written + [write_split(out / f"{PREFIX}_{split}.tsv", split_rows, VIDEO_COLUMN, media)
                      for split, split_rows in rows.items() if split != "train"]
