"""``unival evaluate``: scores predictions (a JSON list or fairseq-generate output) against references (a caption
TSV, a JSON of id -> references, or COCO annotations), prints a table and writes the scores as JSON."""
import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from unival.data_utils.tsv import TSVReader
from unival.metrics import CAPTION_METRICS, DEFAULT_JAVA_TIMEOUT, score_captions
from unival.tasks.caption import REFERENCE_SEPARATOR

CAPTION_TSV_COLUMNS = ("id", "image_id", "caption", "objects", "image")
# How prediction ids name a reference row: a TSV column, or the 0-based row, which is what fairseq-generate
# prints as the sample id for this plugin's datasets.
ID_COLUMNS = {"id": 0, "image_id": 1}
ROW = "row"
WHITESPACE = re.compile(r"\s*")
HYPOTHESIS_LINE = re.compile(r"[HD]-(?P<id>[^\s]+)\t(?P<score>[^\t]*)(?:\t(?P<text>.*))?")
TARGET_LINE = re.compile(r"T-(?P<id>[^\s]+)\t(?P<text>.*)")


class InputError(ValueError):
    """A predictions or references file that does not parse; the message starts with the file (and line)."""


@dataclass
class Predictions:
    captions: Dict[str, str]
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

def json_predictions(path: str, text: str) -> Predictions:
    """``[{"image_id" or "id": ..., "caption": ...}, ...]``; one id key for the whole file."""
    items = load_json(path, text)
    if not isinstance(items, list):
        raise InputError(f"{path}: expected a JSON list of {{\"image_id\" (or \"id\"), \"caption\"}} objects, "
                         f"got a {type(items).__name__}")
    captions, id_kind = {}, None
    for index, item in enumerate(items):
        where = lambda: f"{path}:{json_list_item_line(text, index)}: prediction {index}"  # noqa: E731
        if not isinstance(item, dict) or "caption" not in item or not ({"image_id", "id"} & item.keys()):
            raise InputError(f"{where()}: expected an object with \"image_id\" (or \"id\") and \"caption\", "
                             f"got {shorten(item)}")
        name = "image_id" if "image_id" in item else "id"
        id_kind = id_kind or name
        if name != id_kind:
            raise InputError(f"{where()}: identified by {name!r} while earlier predictions use {id_kind!r}")
        if not isinstance(item["caption"], str):
            raise InputError(f"{where()}: \"caption\" must be a string, got {shorten(item['caption'])}")
        key = str(item[name])
        if key in captions:
            raise InputError(f"{where()}: a second prediction for {name} {key!r}")
        captions[key] = item["caption"]
    return Predictions(captions, id_kind or "id")


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


def read_predictions(path: str) -> Predictions:
    """Predictions of a JSON list or of fairseq-generate output, told apart by the content."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith(("[", "{")):
        return json_predictions(path, text)
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


def evaluate_caption_files(args) -> Dict:
    predictions = read_predictions(args.predictions)
    if args.references:
        references = read_references(args.references, predictions.id_kind)
    elif predictions.targets:
        references = predictions.targets
    else:
        raise InputError(f"{args.predictions}: no references given (--references) and no T- lines to take them from")
    if args.only_predicted_ids:
        references = restricted_to(references, predictions.captions)
    return evaluate_caption_predictions(predictions.captions, references, args.metrics, timeout=args.java_timeout,
                                        spice_cache_dir=args.spice_cache)


# Each task's evaluation reads its files and returns the results dictionary.
EVALUATORS: Dict[str, Callable[[argparse.Namespace], Dict]] = {"caption": evaluate_caption_files}


def task_name(value: str) -> str:
    if value not in EVALUATORS:
        raise argparse.ArgumentTypeError(
            f"no evaluation for {value!r} yet (available: {', '.join(EVALUATORS)}; video and audio captions are "
            f"scored with 'caption'); the metrics of other tasks come with their task")
    return value


def results_table(results: Dict) -> str:
    rows = [(name, f"{value:.4f}") for name, value in results["scores"].items()]
    rows += [(name, f"skipped: {reason}") for name, reason in results["skipped"].items()]
    width = max([len("metric")] + [len(name) for name, _ in rows])
    lines = [f"{results['task']}: {results['num_predictions']} predictions, tokenizer: {results['tokenizer']}",
             f"{'metric':<{width}}  score"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--task", type=task_name, default="caption", metavar="{" + ",".join(EVALUATORS) + "}",
                        help="what the predictions are (default: caption; also for video and audio captions)")
    parser.add_argument("--predictions", required=True,
                        help="JSON list of {\"image_id\" (or \"id\"), \"caption\"} objects, or the output of "
                             "fairseq-generate (its D- lines, else H- lines; ids are the 0-based TSV rows)")
    parser.add_argument("--references",
                        help="caption TSV (id, image_id, caption with references joined by '&&', objects, image), "
                             "JSON {id: [references]} or COCO annotations; default: the T- lines of fairseq-generate")
    parser.add_argument("--only-predicted-ids", action="store_true",
                        help="score only the reference ids that have a prediction (e.g. the Karpathy test images "
                             "against captions_val2014.json); without it a missing prediction is an error")
    parser.add_argument("--metrics", nargs="+", choices=CAPTION_METRICS, default=list(CAPTION_METRICS),
                        help="metrics to compute (default: all)")
    parser.add_argument("--output", help="write the results as JSON to this file")
    parser.add_argument("--java-timeout", type=float, default=DEFAULT_JAVA_TIMEOUT,
                        help="seconds each Java step (tokenizer, METEOR, SPICE) may run before it is given up")
    parser.add_argument("--spice-cache", help="folder where SPICE caches parsed references between runs")


def run(args) -> int:
    try:
        results = EVALUATORS[args.task](args)
    except (ValueError, OSError) as err:
        print(f"unival evaluate: error: {err}", file=sys.stderr)
        return 2
    print(results_table(results))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {output}")
    return 0
