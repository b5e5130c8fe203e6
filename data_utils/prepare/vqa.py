"""VQAv2 questions and annotations -> ``vqa_{train,valid,test}.tsv`` (qid, image-id, question, answers, objects,
image) and ``answers.txt``, the answer list the decoding is restricted to."""
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

from unival.data_utils.answers import normalize_answer
from unival.data_utils.prepare.common import (MediaOptions, PrepareError, Written, answers_field, counted,
                                              load_json, nonempty_text, record_list, require_files, require_records,
                                              value_of, write_answer_list, write_split)

PREFIX = "vqa"
ANSWER_LIST = "answers.txt"
DEFAULT_NUM_ANSWERS = 3129  # the answer list of OFA and UnIVAL
IMAGE_COLUMN = 5
# COCO image folder of each output split, used when the questions file has no "data_subtype".
DEFAULT_IMAGE_FOLDERS = {"train": "train2014", "valid": "val2014", "test": "test2015"}


def vqa_score(count: int, annotators: int = 10) -> float:
    """Soft score of an answer given by ``count`` of the ``annotators``: the official VQA accuracy
    min(1, matches / 3), averaged over the ``annotators`` subsets that leave one annotator out. With 10
    annotators: 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0 (plain min(1, count / 3) would give 1/3, 2/3, 1)."""
    if not 0 < count <= annotators:
        raise ValueError(f"an answer given {counted(count, 'time')} by {counted(annotators, 'annotator')}")
    # Leaving out one of the `count` annotators who gave it leaves count - 1 matches; anyone else, count.
    total = count * min(1.0, (count - 1) / 3) + (annotators - count) * min(1.0, count / 3)
    return round(total / annotators, 6)


def human_answer_counts(annotation: dict, where: str) -> Tuple[Counter, int]:
    """(normalised answer -> how many annotators gave it, number of annotators); empty answers ignored."""
    answers = value_of(annotation, "answers", where, list)
    if not answers:
        raise PrepareError(f"{where}: no human answers")
    counts = Counter()
    for number, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise PrepareError(f"{where}: answer {number} is not an object")
        normalized = normalize_answer(value_of(answer, "answer", where, str))
        if normalized:
            counts[normalized] += 1
    return counts, len(answers)


def scored_candidates(counts: Counter, annotators: int, allowed: Optional[set]) -> List[Tuple[float, str]]:
    """(score, answer) of each distinct answer in ``allowed`` (all when None), best first, ties by answer."""
    pairs = [(vqa_score(count, annotators), answer) for answer, count in counts.items()
             if allowed is None or answer in allowed]
    return sorted(pairs, key=lambda pair: (-pair[0], pair[1]))


def most_frequent_answers(annotations: Iterable[dict], size: int, source: Union[str, Path]) -> List[str]:
    """The ``size`` most frequent normalised ``multiple_choice_answer`` (the consensus answer of each question)
    of the training annotations, most frequent first, ties in alphabetical order."""
    counts = Counter()
    for annotation in annotations:
        where = f"{source}: question {annotation.get('question_id')}"
        answer = normalize_answer(value_of(annotation, "multiple_choice_answer", where, str))
        if answer:
            counts[answer] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [answer for answer, _ in ranked[:size]]


def annotations_by_question(annotations: List[dict], source: Union[str, Path]) -> Dict[int, dict]:
    by_id = {}
    for annotation in annotations:
        qid = value_of(annotation, "question_id", f"{source}: annotation {shortened_id(annotation)}", (int, str))
        if qid in by_id:
            raise PrepareError(f"{source}: question {qid} is annotated twice")
        by_id[qid] = annotation
    return by_id


def shortened_id(record: dict) -> str:
    return str(record.get("question_id", "without question_id"))


def image_folder(questions_json: dict, split: str) -> str:
    """COCO image folder of a questions file: its ``data_subtype`` (test-dev2015 questions are about test2015
    images), or the split's usual folder."""
    subtype = questions_json.get("data_subtype") if isinstance(questions_json, dict) else None
    if not subtype:
        return DEFAULT_IMAGE_FOLDERS[split]
    return "test2015" if subtype == "test-dev2015" else str(subtype)


def coco_image_path(folder: str, image_id: int) -> str:
    return f"{folder}/COCO_{folder}_{int(image_id):012d}.jpg"


def question_rows(questions: List[dict], annotations: Optional[Dict[int, dict]], allowed: Optional[set],
                  folder: str, questions_path, annotations_path) -> Tuple[List[tuple], int]:
    """(rows, questions dropped because none of their answers is in ``allowed``). Without annotations (the
    test split) the answers column is empty."""
    rows, dropped, seen = [], 0, set()
    for question in questions:
        where = f"{questions_path}: question {shortened_id(question)}"
        qid = value_of(question, "question_id", where, (int, str))
        image_id = value_of(question, "image_id", where, (int, str))
        text = nonempty_text(value_of(question, "question", where), where, "question")
        seen.add(qid)
        answers = ""
        if annotations is not None:
            annotation = annotations.get(qid)
            if annotation is None:
                raise PrepareError(f"{where}: no annotation in {annotations_path}")
            labelled_where = f"{annotations_path}: question {qid}"
            if value_of(annotation, "image_id", labelled_where) != image_id:
                raise PrepareError(f"{labelled_where}: image {annotation['image_id']} but the question is about "
                                   f"image {image_id} ({questions_path})")
            candidates = scored_candidates(*human_answer_counts(annotation, labelled_where), allowed)
            if not candidates:
                dropped += 1
                continue
            answers = answers_field(candidates, labelled_where)
        rows.append((qid, image_id, text, answers, "", coco_image_path(folder, image_id)))
    if annotations is not None:
        unasked = [qid for qid in annotations if qid not in seen]
        if unasked:
            raise PrepareError(f"{annotations_path}: {counted(len(unasked), 'annotation')} of questions not in "
                               f"{questions_path}, e.g. question {unasked[0]}")
    return rows, dropped


def prepare_vqav2(out: Union[str, Path], train_questions, train_annotations, val_questions=None,
                  val_annotations=None, test_questions=None, num_answers: int = DEFAULT_NUM_ANSWERS,
                  media: Optional[MediaOptions] = None) -> List[Written]:
    """Writes ``answers.txt`` (the ``num_answers`` most frequent training answers) and ``vqa_<split>.tsv`` for
    each split given. Labelled rows keep only answers in the list; questions left without one are dropped."""
    media = media or MediaOptions()
    media.validate()
    if num_answers < 1:
        raise ValueError(f"--num-answers must be positive, got {num_answers}")
    if (val_questions is None) != (val_annotations is None):
        raise ValueError("give both --val-questions and --val-annotations, or neither")
    require_files([(train_questions, "--train-questions"), (train_annotations, "--train-annotations"),
                   (val_questions, "--val-questions"), (val_annotations, "--val-annotations"),
                   (test_questions, "--test-questions")])
    out = Path(out)
    train_labels = record_list(load_json(train_annotations, "--train-annotations"), "annotations", train_annotations)
    require_records(train_labels, train_annotations, "annotations")
    answer_list = most_frequent_answers(train_labels, num_answers, train_annotations)
    allowed = set(answer_list)
    splits = [("train", train_questions, "--train-questions", train_annotations, train_labels),
              ("valid", val_questions, "--val-questions", val_annotations, None),
              ("test", test_questions, "--test-questions", None, None)]
    # Every split is read before anything is written: bad annotations leave the output folder untouched.
    outputs = []
    for split, questions_path, option, annotations_path, labels in splits:
        if questions_path is None:
            continue
        questions_json = load_json(questions_path, option)
        questions = require_records(record_list(questions_json, "questions", questions_path), questions_path,
                                    "questions")
        annotations = None
        if annotations_path is not None:
            if labels is None:
                labels = record_list(load_json(annotations_path, "--val-annotations"), "annotations",
                                     annotations_path)
            annotations = annotations_by_question(labels, annotations_path)
        rows, dropped = question_rows(questions, annotations, allowed, image_folder(questions_json, split),
                                      questions_path, annotations_path)
        notes = [f"{counted(dropped, 'question')} dropped: no answer in {ANSWER_LIST}"] if dropped else []
        outputs.append((out / f"{PREFIX}_{split}.tsv", rows, notes))
    written = [write_answer_list(out / ANSWER_LIST, answer_list)]
    return written + [write_split(path, rows, IMAGE_COLUMN, media, notes) for path, rows, notes in outputs]
