"""``unival demo``: the main job at toy scale. Writes the demo corpus, scores an untrained ``unival_tiny``
on test captioning, trains it with fairseq-train, scores it again and prints both."""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from unival.allocator import add_malloc_argument, environment_or_exit
from unival.train import run_fairseq, train_command

logger = logging.getLogger(__name__)

TASKS = {
    # demo task -> (config, evaluation split, options of its decoding when scored)
    "caption": ("caption/demo", "test", {"eval_beam": 5, "eval_max_len": 16}),
    "video_caption": ("video_caption/demo", "test", {"eval_beam": 5, "eval_max_len": 16}),
    "audio_caption": ("audio_caption/demo", "test", {"eval_beam": 5, "eval_max_len": 16}),
    "vqa_gen": ("vqa_gen/demo", "test", {}),
    "refcoco": ("refcoco/demo", "test", {}),
    "snli_ve": ("snli_ve/demo", "test", {}),
}
MAIN_METRICS = ("CIDEr", "BLEU-4", "METEOR", "ROUGE_L", "accuracy", "Acc@0.5")


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder for the corpus, checkpoints and results")
    parser.add_argument("--task", nargs="+", default=["caption"], choices=sorted(TASKS),
                        help="demo tasks to train, one after the other")
    parser.add_argument("--seed", type=int, default=1, help="seed of the corpus and of training")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and evaluation")
    add_malloc_argument(parser)
    parser.add_argument("--max-epoch", type=int, default=None, help="override the config's number of epochs")


def ensure_corpus(folder: Path, seed: int) -> None:
    from unival.data_utils.demo_corpus import write_demo_corpus

    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("seed") == seed:
        print(f"[demo] reusing the demo corpus in {folder}")
        return
    start = time.time()
    print(f"[demo] writing the demo corpus to {folder}", flush=True)
    write_demo_corpus(folder, seed=seed)
    print(f"[demo] corpus written in {time.time() - start:.0f} s", flush=True)


def score(model, task, task_name: str, split: str, title: str) -> dict:
    """Predicts ``split`` and scores it as ``unival evaluate`` would."""
    from unival.evaluate import EVALUATORS
    from unival.generate import generate_split
    from unival.metrics import CAPTION_METRICS, DEFAULT_JAVA_TIMEOUT

    start = time.time()
    predictions, references = generate_split(model, task, split, **TASKS[task_name][2])
    options = argparse.Namespace(task=task_name, metrics=list(CAPTION_METRICS), java_timeout=DEFAULT_JAVA_TIMEOUT,
                                 spice_cache=None)
    result = EVALUATORS[task_name].score(predictions, references, options)
    example = next(iter(predictions))
    print(f"[demo] {title}: {len(predictions)} test samples scored in {time.time() - start:.0f} s; "
          f"e.g. {predictions[example]!r} (reference {short_reference(references[example])!r})", flush=True)
    return {"scores": dict(result["scores"]), "skipped": dict(result["skipped"]), "example": predictions[example]}


def short_reference(reference):
    """The first reference caption, the most confident answer, or the reference itself (a label, a box)."""
    if isinstance(reference, dict):
        return max(reference, key=reference.get) if reference else ""
    if isinstance(reference, list) and reference and isinstance(reference[0], str):
        return reference[0]
    return reference


def print_table(before: dict, after: dict) -> None:
    names = [name for name in MAIN_METRICS if name in after["scores"]]
    names += sorted(set(after["scores"]) - set(names))
    width = max([9] + [len(name) for name in names])
    print(f"\n {'metric':<{width}} | untrained | trained")
    print(f"-{'-' * width}-+-----------+--------")
    for name in names:
        # caption metrics are fractions, accuracies percentages: both are shown as percentages
        scale = 1 if is_percentage(name) else 100
        print(f" {name:<{width}} | {scale * before['scores'][name]:9.1f} | {scale * after['scores'][name]:7.1f}")
    for name, reason in after["skipped"].items():
        print(f" {name:<{width}} | skipped: {reason}")
    print("(percent; caption scores x 100)" if not all(map(is_percentage, names)) else "(percent)")


def is_percentage(metric: str) -> bool:
    return metric.startswith("Acc") or metric.startswith("accuracy")


def train_and_score(task_name: str, out: Path, data: Path, args, env: dict) -> dict:
    """Scores the untrained model, trains with fairseq-train (in the environment ``env``), scores again; the
    results of one demo task."""
    from unival.generate import build_untrained, load_trained

    save_dir = out / task_name
    config, split, _ = TASKS[task_name]
    extra = ["--seed", str(args.seed)]
    if args.max_epoch is not None:
        extra += ["--max-epoch", str(args.max_epoch)]
    command = train_command(config, str(data), str(save_dir), extra)

    print(f"[demo] {task_name}: scoring the untrained model", flush=True)
    model, task = build_untrained(command[1:])
    before = score(model, task, task_name, split, "untrained")

    print(f"[demo] {task_name}: training: " + " ".join(command), flush=True)
    start = time.time()
    env_command = [str(Path(sys.executable).with_name("fairseq-train"))] + command[1:]
    status = run_fairseq(env_command, {**env, "OMP_NUM_THREADS": str(args.threads)}, "unival demo")
    if status != 0:
        raise RuntimeError(f"fairseq-train failed with exit status {status}")
    minutes = (time.time() - start) / 60

    model, task = load_trained(str(save_dir / "checkpoint_best.pt"))
    after = score(model, task, task_name, split, "trained")
    results = {"task": task_name, "train_minutes": round(minutes, 1), "untrained": before, "trained": after}
    (out / f"results_{task_name}.json").write_text(json.dumps(results, indent=2))
    return results


def run(args) -> int:
    torch.set_num_threads(args.threads)
    env, allocator = environment_or_exit(args.malloc, "demo")  # a bad --malloc stops before any work
    print(f"[demo] {allocator}", flush=True)
    out = Path(args.out).resolve()
    data = out / "data"
    ensure_corpus(data, args.seed)
    all_results = []
    for task_name in args.task:
        try:
            all_results.append(train_and_score(task_name, out, data, args, env))
        except RuntimeError as err:
            print(f"[demo] {task_name}: {err}", file=sys.stderr)
            return 1
    for results in all_results:
        print(f"\n[demo] {results['task']}: trained in {results['train_minutes']:.1f} min "
              f"(results_{results['task']}.json)")
        print_table(results["untrained"], results["trained"])
    return 0
