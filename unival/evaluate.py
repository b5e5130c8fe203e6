"""``unival evaluate``: scores any task's predictions (a JSON list or fairseq-generate output, or made here by a
checkpoint) against the references of its TSV (captions also JSON or COCO annotations), prints a table and writes
the scores as JSON."""
import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from unival.data_utils.answers import answer_confidences, normalize_answer
from unival.data_utils.media import load_image
from unival.data_utils.transforms import bins_to_box, parse_box
from unival.data_utils.tsv import TSVReader
from unival.metrics import CAPTION_METRICS, DEFAULT_JAVA_TIMEOUT, check_same_ids, score_captions
from unival.task_metrics import entailment_accuracy, entailment_label, grounding_accuracy
from unival.tasks.base import INPUT_OPTIONS
from unival.tasks.caption import REFERENCE_SEPARATOR
from unival.tasks.refcoco import bins_from_text
from unival.tasks.vqa_gen import vqa_score

CAPTION_TSV_COLUMNS = ("id", "image_id", "caption", "objects", "image")
# How prediction ids name a reference row: a TSV column, or the 0-based row, which is what fairseq-generate
# prints as the sample id for this plugin's datasets.
ID_COLUMNS = {"id": 0, "image_id": 1}
ROW = "row"
WHITESPACE = re.compile(r"\s*")
HYPOTHESIS_LINE = re.compile(r"[HD]-(?P<id>[^\s]+)\t(?P<score>[^\t]*)(?:\t(?P<text>.*))?")
TARGET_LINE = re.compile(r"T-(?P<id>[^\s]+)\t(?P<text>.*)")

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """A predictions or references file that does not parse; the message starts with the file (and line)."""


@dataclass
class Predictions:
    values: Dict[str, object]  # id -> prediction (caption, answer, box)
    id_kind: str  # "id", "image_id" or ROW: which references the ids name
    targets: Dict[str, List[str]] = field(default_factory=dict)  # T- lines of fairseq-generate output


def shorten(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def split_references(text: str) -> List[str]:
    return [ref.strip() for ref in text.split(REFERENCE_SEPARATOR) if ref.strip()]


def unique(items: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(items))


def first_character(path: str) -> str:
    """The first non-blank character of the file, read without loading it (TSVs with images are large)."""
    with open(path, encoding="utf-8-sig", errors="replace") as file:
        while True:
            chunk = file.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]


def load_json(path: str, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from err


def json_list_item_line(text: str, index: int) -> int:
    """1-based line where item ``index`` of the top-level list in ``text`` (valid JSON) starts."""
    decoder = json.JSONDecoder()
    position = WHITESPACE.match(text, text.index("[") + 1).end()
    for _ in range(index):
        _, position = decoder.raw_decode(text, position)
        position = WHITESPACE.match(text, position).end() + 1  # past the comma
        position = WHITESPACE.match(text, position).end()
    return text.count("\n", 0, position) + 1


# ------------------------------------------------------------------------------------------------ predictions

def json_predictions(path: str, text: str, value_key: str = "caption", id_keys: Sequence[str] = ("image_id", "id"),
                     value_types: Tuple[type, ...] = (str,)) -> Predictions:
    """``[{"image_id" (or "id"): ..., "caption": ...}, ...]`` (for captions; other tasks name the value and the id
    keys differently); one id key for the whole file."""
    keys = " (or ".join(f'"{key}"' for key in id_keys) + ")" * (len(id_keys) - 1)
    items = load_json(path, text)
    if not isinstance(items, list):
        raise InputError(f"{path}: expected a JSON list of {{{keys}, \"{value_key}\"}} objects, "
                         f"got a {type(items).__name__}")
    values, id_kind = {}, None
    for index, item in enumerate(items):
        where = lambda: f"{path}:{json_list_item_line(text, index)}: prediction {index}"  # noqa: E731
        if not isinstance(item, dict) or value_key not in item or not (set(id_keys) & item.keys()):
            raise InputError(f"{where()}: expected an object with {keys} and \"{value_key}\", got {shorten(item)}")
        name = next(key for key in id_keys if key in item)
        id_kind = id_kind or name
        if name != id_kind:
            raise InputError(f"{where()}: identified by {name!r} while earlier predictions use {id_kind!r}")
        if not isinstance(item[value_key], value_types):
            kind = " or ".join({str: "a string", list: "a list of 4 numbers"}.get(t, t.__name__) for t in value_types)
            raise InputError(f"{where()}: \"{value_key}\" must be {kind}, got {shorten(item[value_key])}")
        key = str(item[name])
        if key in values:
            raise InputError(f"{where()}: a second prediction for {name} {key!r}")
        values[key] = item[value_key]
    return Predictions(values, id_kind or id_keys[-1])


def parse_hypothesis(path: str, number: int, line: str) -> Tuple[str, str]:
    """(sample id, text) of an ``H-`` or ``D-`` line of fairseq-generate."""
    match = HYPOTHESIS_LINE.fullmatch(line)
    if match is not None:
        try:
            float(match["score"])
            return match["id"], match["text"] or ""
        except ValueError:
            pass
    raise InputError(f"{path}:{number}: {line[0]}- line does not parse (expected {line[0]}-<id><TAB><score><TAB>"
                     f"<text>): {shorten(line)}")


def generate_output_predictions(path: str, text: str) -> Predictions:
    """The best hypothesis per sample of fairseq-generate output: its D- line (detokenized), else its H- line."""
    hypotheses, detokenized, targets = {}, {}, {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(("H-", "D-")):
            store = hypotheses if line[0] == "H" else detokenized
            key, caption = parse_hypothesis(path, number, line)
            store.setdefault(key, caption)  # with --nbest the best hypothesis comes first
        elif line.startswith("T-"):
            match = TARGET_LINE.fullmatch(line)
            if match is None:
                raise InputError(f"{path}:{number}: T- line does not parse (expected T-<id><TAB><text>): "
                                 f"{shorten(line)}")
            targets.setdefault(match["id"], split_references(match["text"]))
    if not hypotheses and not detokenized:
        raise InputError(f"{path}: neither a JSON list of predictions nor fairseq-generate output "
                         f"(no H-<id> or D-<id> lines)")
    return Predictions({**hypotheses, **detokenized}, ROW, targets)


def read_predictions(path: str, **json_format) -> Predictions:
    """Predictions of a JSON list (``json_format``: see :func:`json_predictions`) or of fairseq-generate output,
    told apart by the content."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith(("[", "{")):
        return json_predictions(path, text, **json_format)
    return generate_output_predictions(path, text)


# ------------------------------------------------------------------------------------------------- references

def tsv_references(path: str, id_kind: str) -> Dict[str, List[str]]:
    """References of a caption TSV keyed as the predictions name them; rows sharing a key are merged."""
    reader = TSVReader(path, cache_index=False)
    try:
        if reader.num_columns is not None and reader.num_columns != len(CAPTION_TSV_COLUMNS):
            raise InputError(f"{path}:{reader.line_number(reader.layout_index)}: a caption TSV has "
                             f"{len(CAPTION_TSV_COLUMNS)} columns ({', '.join(CAPTION_TSV_COLUMNS)}), this line "
                             f"has {reader.num_columns}")
        references: Dict[str, List[str]] = {}
        for index in range(len(reader)):
            row = reader.row(index)
            refs = split_references(row[2])
            if not refs:
                raise InputError(f"{path}:{reader.line_number(index)}: no reference caption in the caption column")
            key = str(index) if id_kind == ROW else row[ID_COLUMNS[id_kind]]
            references[key] = unique(references.get(key, []) + refs)
        return references
    finally:
        reader.close()


def coco_references(path: str, annotations) -> Dict[str, List[str]]:
    if not isinstance(annotations, list):
        raise InputError(f"{path}: \"annotations\" must be a list, got {type(annotations).__name__}")
    references: Dict[str, List[str]] = {}
    for index, item in enumerate(annotations):
        if not isinstance(item, dict) or "image_id" not in item or not isinstance(item.get("caption"), str):
            raise InputError(f"{path}: annotation {index} must be an object with \"image_id\" and a string "
                             f"\"caption\", got {shorten(item)}")
        references.setdefault(str(item["image_id"]), []).append(item["caption"])
    return references


def json_references(path: str) -> Dict[str, List[str]]:
    """``{id: [reference, ...]}`` or COCO annotations ``{"annotations": [{"image_id", "caption"}, ...]}``."""
    data = load_json(path, Path(path).read_text(encoding="utf-8-sig"))
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object (id -> list of references, or COCO annotations), "
                         f"got a {type(data).__name__}")
    if "annotations" in data:
        return coco_references(path, data["annotations"])
    for key, refs in data.items():
        if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
            raise InputError(f"{path}: the references of id {key!r} must be a list of strings, got {shorten(refs)}")
    return {str(key): list(refs) for key, refs in data.items()}


def read_references(path: str, id_kind: str) -> Dict[str, List[str]]:
    """References of a JSON file or a caption TSV, told apart by the content."""
    first = first_character(path)
    if first == "{":
        return json_references(path)
    if first == "[":
        raise InputError(f"{path}: a JSON list; references are a JSON object (id -> list of references, or COCO "
                         f"annotations) or a caption TSV")
    return tsv_references(path, id_kind)


def restricted_to(references: Mapping[str, List[str]], keys) -> Dict[str, List[str]]:
    return {key: references[key] for key in keys if key in references}


# ---------------------------------------------------------------------------------------------- evaluation

def evaluate_caption_predictions(predictions: Mapping, references: Mapping, metrics: Sequence[str] = CAPTION_METRICS,
                                 timeout: float = DEFAULT_JAVA_TIMEOUT, spice_cache_dir: Optional[str] = None) -> Dict:
    """Scores captions (id -> text) against references (id -> list of texts); the result is what
    ``unival evaluate --output`` writes: task, num_predictions, scores, skipped (metric -> reason), tokenizer."""
    result = score_captions(predictions, references, metrics, timeout=timeout, spice_cache_dir=spice_cache_dir)
    return {"task": "caption", "num_predictions": len(predictions), **result.as_dict()}


def caption_references(args, predictions: Predictions) -> Dict[str, List[str]]:
    if args.references:
        references = read_references(args.references, predictions.id_kind)
    elif predictions.targets:
        logger.warning("references from the T- lines of %s: fairseq-generate prints one target per sample (a caption "
                       "row's first reference), so each prediction is scored against one reference; pass "
                       "--references with the split's TSV to score against all of them", args.predictions)
        references = predictions.targets
    else:
        raise InputError(f"{args.predictions}: no references given (--references) and no T- lines to take them from")
    return references


def score_captions_of(predictions: Mapping, references: Mapping, args) -> Dict:
    return evaluate_caption_predictions(predictions, references, args.metrics, timeout=args.java_timeout,
                                        spice_cache_dir=args.spice_cache)


# ---- answers (VQA, entailment) and boxes (grounding): references are a column of the task's TSV ------------

def tsv_column(path: str, id_kind: str, column: int, parse: Callable[[str], object],
               id_columns: Mapping[str, int]) -> Dict[str, object]:
    """``parse`` of column ``column`` of every row of a task TSV, keyed as the predictions name the rows;
    a value that does not parse raises with the file and line."""
    reader = TSVReader(path, cache_index=False)
    try:
        values = {}
        for index in range(len(reader)):
            row = reader.row(index)
            if len(row) <= column:
                raise InputError(f"{path}:{reader.line_number(index)}: expected at least {column + 1} columns, "
                                 f"got {len(row)}")
            try:
                value = parse(row[column])
            except ValueError as err:
                raise InputError(f"{path}:{reader.line_number(index)}: {err}") from err
            values[str(index) if id_kind == ROW else row[id_columns[id_kind]]] = value
        return values
    finally:
        reader.close()


def references_file(args) -> str:
    if not args.references:
        raise InputError(f"--task {args.task} needs --references (the task's TSV of the split)")
    return args.references


def vqa_references(args, predictions: Predictions) -> Dict[str, Dict[str, float]]:
    return tsv_column(references_file(args), predictions.id_kind, 3, answer_confidences, {"question_id": 0, "id": 0})


def entailment_references(args, predictions: Predictions) -> Dict[str, str]:
    return tsv_column(references_file(args), predictions.id_kind, 5, entailment_label, {"id": 0})


def grounding_references(args, predictions: Predictions) -> Dict[str, Tuple[float, ...]]:
    return tsv_column(references_file(args), predictions.id_kind, 3, parse_box, {"id": 0})


def normalized_confidences(confidences: Mapping[str, float]) -> Dict[str, float]:
    """Reference answers normalised as predictions are (``unival prepare`` already wrote them so; other TSVs
    may not have): answers that become equal keep the highest confidence."""
    normalized: Dict[str, float] = {}
    for answer, confidence in confidences.items():
        key = normalize_answer(answer)
        normalized[key] = max(confidence, normalized.get(key, 0.0))
    return normalized


def score_answers(predictions: Mapping[str, str], references: Mapping[str, Dict[str, float]], args) -> Dict:
    """VQA accuracy (percent): the mean confidence of the reference answer each prediction matches, both
    normalised as the official VQA evaluation does (case, punctuation, number words, articles)."""
    check_same_ids(predictions, references)
    total = sum(vqa_score(normalize_answer(str(predictions[key])), normalized_confidences(references[key]))
                for key in references)
    return {"task": args.task, "num_predictions": len(predictions),
            "scores": {"accuracy": 100.0 * total / len(references)}, "skipped": {}}


def score_entailment(predictions: Mapping[str, str], references: Mapping[str, str], args) -> Dict:
    """Accuracy (percent); a prediction may be yes/no/maybe or entailment/contradiction/neutral, in any case."""
    check_same_ids(predictions, references)
    keys = list(references)
    labels = []
    for key in keys:
        try:
            labels.append(entailment_label(str(predictions[key])))
        except ValueError as err:
            raise InputError(f"{getattr(args, 'predictions', None) or 'the predictions'}: prediction {key!r}: "
                             f"{err}") from err
    accuracy = entailment_accuracy(labels, [references[key] for key in keys])
    return {"task": args.task, "num_predictions": len(predictions), "scores": {"accuracy": accuracy},
            "skipped": {}}


def score_grounding(predictions: Mapping[str, Sequence[float]], references: Mapping[str, Sequence[float]],
                    args) -> Dict:
    """Acc@0.5 overall and by the size of the reference box (small / medium / large, COCO's area thresholds)."""
    check_same_ids(predictions, references)
    keys = list(references)
    for key in keys:
        box = predictions[key]
        if len(box) != 4 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in box):
            raise InputError(f"{getattr(args, 'predictions', None) or 'the predictions'}: the predicted box of "
                             f"{key!r} is {shorten(box)}: expected 4 numbers x0, y0, x1, y1")
    summary = grounding_accuracy(torch.tensor([list(map(float, predictions[key])) for key in keys]),
                                 torch.tensor([list(references[key]) for key in keys]))
    scores = {("Acc@0.5" + name[len("accuracy"):].replace("_", " ")): value
              for name, value in summary.items() if name.startswith("accuracy")}
    counts = {name: value for name, value in summary.items() if name.startswith("count")}
    return {"task": args.task, "num_predictions": len(predictions), "scores": scores, "skipped": {},
            "counts": counts}


def boxes_of_generated_bins(args, predictions: Predictions) -> Dict[str, List[float]]:
    """fairseq-generate prints grounding hypotheses as four ``<bin_k>`` tokens: fractions k / (num_bins - 1) of
    the sides of the image the model saw, hence of the original image's (whose size the references TSV gives).
    Which fraction a bin is depends on the model's --num-bins, which must be given."""
    if args.num_bins is None:
        raise InputError("--task refcoco with fairseq-generate output needs --num-bins, the number of <bin> tokens "
                         "of the model (1000 for UnIVAL's; the demo's 128), to turn its bins into boxes")
    reader = TSVReader(references_file(args), cache_index=False)
    media_dir = args.media_dir or str(Path(args.references).parent)
    try:
        boxes = {}
        for key, text in predictions.values.items():
            try:
                bins = bins_from_text(str(text))
                if max(bins) >= args.num_bins:
                    raise ValueError(f"<bin_{max(bins)}> is beyond --num-bins {args.num_bins}: give the model's")
            except ValueError as err:
                raise InputError(f"{args.predictions}: sample {key}: {err}") from err
            index = int(key)
            where = f"{args.references}:{reader.line_number(index)}"
            size = load_image(reader.row(index)[4], media_dir, source=where).size
            boxes[key] = list(bins_to_box(bins, size, args.num_bins))
        return boxes
    finally:
        reader.close()


@dataclass(frozen=True)
class TaskEvaluation:
    """How ``unival evaluate`` reads and scores one kind of task's predictions."""

    json_format: Dict  # value_key, id_keys, value_types of the JSON predictions
    saved_id_key: str  # the id key of predictions written by --save-predictions (row ids of the TSV's column 0)
    references: Callable[[argparse.Namespace, Predictions], Dict]
    score: Callable[[Mapping, Mapping, argparse.Namespace], Dict]
    from_generate: Optional[Callable[[argparse.Namespace, Predictions], Dict]] = None  # D- texts -> predictions


CAPTIONS = TaskEvaluation(dict(value_key="caption", id_keys=("image_id", "id")), "id", caption_references,
                          score_captions_of)
ANSWERS = TaskEvaluation(dict(value_key="answer", id_keys=("question_id", "id")), "question_id", vqa_references,
                         score_answers)
EVALUATORS: Dict[str, TaskEvaluation] = {
    "caption": CAPTIONS, "video_caption": CAPTIONS, "audio_caption": CAPTIONS,
    "vqa_gen": ANSWERS, "video_vqa_gen": ANSWERS,
    "snli_ve": TaskEvaluation(dict(value_key="answer", id_keys=("id",)), "id", entailment_references,
                              score_entailment),
    "refcoco": TaskEvaluation(dict(value_key="box", id_keys=("id",), value_types=(list,)), "id",
                              grounding_references, score_grounding, from_generate=boxes_of_generated_bins),
}


def evaluate_files(args) -> Dict:
    """Scores a predictions file (JSON or fairseq-generate output) against the references of ``args.task``."""
    evaluation = EVALUATORS[args.task]
    predictions = read_predictions(args.predictions, **evaluation.json_format)
    references = evaluation.references(args, predictions)
    values = predictions.values
    if predictions.id_kind == ROW and evaluation.from_generate is not None:
        values = evaluation.from_generate(args, predictions)
    if args.only_predicted_ids:
        references = restricted_to(references, values)
    return evaluation.score(values, references, args)


def adopted_input_options(task: str, trained_with: Mapping[str, Any], given: Sequence[str]) -> List[str]:
    """Arguments for the options that change the model's inputs (image size, frames, clip length, bins...) which
    the training run set to another value than the task's default and ``given`` (the command line and --config)
    does not set: the model then gets the inputs it was trained on."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    fields = TASK_DATACLASS_REGISTRY[task].__dataclass_fields__
    given_flags = {argument.split("=")[0] for argument in given if argument.startswith("--")}
    argv: List[str] = []
    for name in INPUT_OPTIONS:
        flag = "--" + name.replace("_", "-")
        value = trained_with.get(name)
        if name not in fields or value is None or flag in given_flags or value == fields[name].default:
            continue
        if isinstance(fields[name].default, bool):
            argv += [flag] if value is True else []  # a flag cannot be turned off: left to the warning
        else:
            argv += [flag, str(value)]
    return argv


def evaluate_checkpoint(args) -> Dict:
    """Loads a model, predicts ``--split`` of ``--data`` with the task built from ``--task`` and the options after
    ``--`` (as fairseq-generate would), and scores the predictions: finetuned and zero-shot evaluation alike."""
    from unival.checkpoint import (build_from_checkpoint, load_checkpoint_and_task_options, read_checkpoint,
                                   stored_task_options)
    from unival.generate import build_task, generate_split

    if not args.data:
        raise InputError("--checkpoint needs --data (the folder of the task's TSV files)")
    from unival.train import find_config, load_config, task_options_argv

    if args.config:
        config_task = load_config(find_config(args.config)).get("task")
        if config_task != args.task:
            raise InputError(f"--config {args.config} is a config of the {config_task} task, not of --task "
                             f"{args.task}")
    given = (task_options_argv(args.config) if args.config else []) + list(args.passthrough)
    if Path(args.checkpoint).is_dir():  # a folder of `unival convert`: the task options it stored, if any
        from unival.convert import stored_folder_task_options
        state, trained_with = None, stored_folder_task_options(args.checkpoint)
    else:
        state = read_checkpoint(args.checkpoint)
        trained_with = stored_task_options(state)
    trained_task = (trained_with or {}).get("_name")
    if trained_task and trained_task != args.task:
        print(f"[unival evaluate] note: the checkpoint was trained on the {trained_task} task and is evaluated as "
              f"{args.task}", flush=True)
    adopted = adopted_input_options(args.task, trained_with or {}, given)
    if adopted:
        print(f"[unival evaluate] as in the checkpoint's training run: {' '.join(adopted)}", flush=True)
    task = build_task(args.task, args.data, given + adopted)
    if state is None:  # the vocabulary the model was trained with, where the checkpoint stores it
        from unival.convert import DICTIONARY_FILE, stored_folder_vocabulary
        vocabulary = stored_folder_vocabulary(args.checkpoint)
        if vocabulary is not None:
            task.adopt_vocabulary(vocabulary, str(Path(args.checkpoint) / DICTIONARY_FILE))
    else:
        task.load_state_dict(state.get("task_state") or {})
    task.require_vocabulary(str(args.checkpoint))
    if state is None:
        model, _ = load_checkpoint_and_task_options(args.checkpoint, ema=args.ema, dictionary=task.target_dictionary)
    else:
        model = build_from_checkpoint(state, ema=args.ema, dictionary=task.target_dictionary,
                                      source=str(args.checkpoint))[0].eval()
    if trained_with:
        task.warn_about_training_options(trained_with)  # those given otherwise than in training
    if torch.cuda.is_available() and not args.cpu:
        model = model.cuda()
    model = in_precision(model, args)
    evaluation = EVALUATORS[args.task]
    predictions, references = generate_split(model, task, args.split, batch_size=args.batch_size)
    if args.save_predictions:
        save_predictions(args.save_predictions, predictions, evaluation)
        print(f"wrote {args.save_predictions}")
    if not any(references.values()):  # e.g. VQAv2 test-dev: scored by the benchmark's server
        results = {"task": args.task, "num_predictions": len(predictions), "scores": {},
                   "skipped": {"all metrics": f"the {args.split} split has no references"}}
    else:
        results = evaluation.score(predictions, references, args)
    return {**results, "checkpoint": str(args.checkpoint), "ema": bool(args.ema), "split": args.split}


def in_precision(model, args):
    """The model in the precision of ``--fp16`` or ``--bf16`` (as fairseq-generate --fp16 casts it: weights and
    activations; media are cast on entry), else as loaded (float32)."""
    dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else None
    if dtype is None:
        return model
    if next(model.parameters()).device.type == "cpu":
        logger.warning("--%s on the CPU: predictions in %s, but no faster than float32 there (meant for GPUs)",
                       "fp16" if args.fp16 else "bf16", dtype)
    return model.to(dtype)


def save_predictions(path: str, predictions: Mapping, evaluation: TaskEvaluation) -> None:
    """Predictions as the JSON list ``unival evaluate --predictions`` reads back (VQA: the official format)."""
    value_key = evaluation.json_format["value_key"]
    items = [{evaluation.saved_id_key: json_id(key), value_key: list(value) if isinstance(value, tuple) else value}
             for key, value in predictions.items()]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")


def json_id(key: str):
    """An id as the benchmarks' own files write it: a number when it is one (VQA's question_id, COCO's
    image_id), the text otherwise."""
    return int(key) if key.isascii() and key.isdigit() and str(int(key)) == key else key


def task_name(value: str) -> str:
    if value not in EVALUATORS:
        raise argparse.ArgumentTypeError(f"no evaluation for {value!r} (available: {', '.join(EVALUATORS)})")
    return value


def results_table(results: Dict) -> str:
    rows = [(name, f"{value:.4f}") for name, value in results["scores"].items()]
    rows += [(name, f"skipped: {reason}") for name, reason in results["skipped"].items()]
    width = max([len("metric")] + [len(name) for name, _ in rows])
    tokenizer = f", tokenizer: {results['tokenizer']}" if "tokenizer" in results else ""
    lines = [f"{results['task']}: {results['num_predictions']} predictions{tokenizer}",
             f"{'metric':<{width}}  score"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--task", type=task_name, default="caption", metavar="{" + ",".join(EVALUATORS) + "}",
                        help="what the predictions are (default: caption)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions",
                        help="JSON list of predictions ({\"image_id\" or \"id\", \"caption\"}; {\"question_id\", "
                             "\"answer\"} for VQA; {\"id\", \"answer\"} for snli_ve; {\"id\", \"box\": [x0, y0, x1, "
                             "y1]} for refcoco), or the output of fairseq-generate (its D- lines, else H- lines; ids "
                             "are the 0-based TSV rows)")
    source.add_argument("--checkpoint",
                        help="predict with this model instead (ours, an original UnIVAL checkpoint, or a folder from "
                             "'unival convert'): needs --data; task options such as --dict-file go after '--'")
    parser.add_argument("--references",
                        help="captions: TSV, JSON {id: [references]} or COCO annotations (default: the T- lines of "
                             "fairseq-generate, one reference per sample); other tasks: the task's TSV of the split")
    parser.add_argument("--media-dir",
                        help="refcoco with fairseq-generate output: the folder the TSV's image paths are relative to "
                             "(default: the references file's folder; the task's --media-dir)")
    parser.add_argument("--only-predicted-ids", action="store_true",
                        help="score only the reference ids that have a prediction (e.g. the Karpathy test images "
                             "against captions_val2014.json); without it a missing prediction is an error")
    parser.add_argument("--metrics", nargs="+", choices=CAPTION_METRICS, default=list(CAPTION_METRICS),
                        help="caption metrics to compute (default: all)")
    parser.add_argument("--output", help="write the results as JSON to this file")
    parser.add_argument("--java-timeout", type=float, default=DEFAULT_JAVA_TIMEOUT,
                        help="seconds each Java step (tokenizer, METEOR, SPICE) may run before it is given up")
    parser.add_argument("--spice-cache", help="folder where SPICE caches parsed references between runs")
    parser.add_argument("--patch-image-size", type=int,
                        help="not needed: <bin> tokens are fractions of the image's sides whatever the size the "
                             "model saw (accepted for earlier command lines)")
    parser.add_argument("--num-bins", type=int,
                        help="refcoco with fairseq-generate output: the model's number of <bin> tokens (1000 for "
                             "UnIVAL's)")
    parser.add_argument("--data", help="--checkpoint: the folder of the task's TSV files")
    parser.add_argument("--config", help="--checkpoint: take the task's options (dictionary, resolution, decoding) "
                                         "from this training config, e.g. vqav2/finetune; options after '--' win")
    parser.add_argument("--split", default="test", help="--checkpoint: the split to predict (default: test)")
    parser.add_argument("--ema", action="store_true", help="--checkpoint: use the EMA weights the checkpoint holds")
    parser.add_argument("--batch-size", type=int, default=16, help="--checkpoint: samples per batch")
    parser.add_argument("--cpu", action="store_true", help="--checkpoint: predict on the CPU even with a GPU")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true",
                           help="--checkpoint: predict with the model cast to float16 (GPUs; default float32)")
    precision.add_argument("--bf16", action="store_true",
                           help="--checkpoint: predict with the model cast to bfloat16 (GPUs; default float32)")
    parser.add_argument("--save-predictions", help="--checkpoint: also write the predictions as JSON here")


def run(args) -> int:
    try:
        results = evaluate_checkpoint(args) if args.checkpoint else evaluate_files(args)
    except (ValueError, OSError) as err:
        hint = " (task options go after `--`: unival evaluate ... -- --tsv-prefix PREFIX)" \
            if args.checkpoint and "pass --tsv-prefix" in str(err) else ""
        print(f"unival evaluate: error: {err}{hint}", file=sys.stderr)
        return 2
    results["task"] = args.task  # the caption metrics say "caption" for video and audio captions too
    print(results_table(results))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {output}")
    return 0
