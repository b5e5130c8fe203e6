"""Pretraining step (task unify, task-balanced streams): one forward and backward pass over the batch that mixes
every stream, against one pass per stream with the losses normalised and summed the same way (how balanced
batches are often run), on the same samples and model; and the bytes of the batch's media tensors when each holds
only its modality's samples (what the unify batches do) against a row for every sample (placeholders).

    python -m bench.pretrain_step --streams image,audio --rows 4 --steps 10

Prints JSON: each side's median seconds and the ratio per_stream_over_one_pass (above 1: one pass is faster).
Both sides alternate in one process, so the machine's load affects them alike.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

STREAM_INPUTS = {
    "image": [("caption", "caption"), ("vqa", "vqa"), ("grounding", "refcoco")],
    "video": [("video-caption", "video_caption"), ("video-qa", "video_vqa")],
    "audio": [("audio-caption", "audio_caption")],
}


def write_streams(media: Path, out: Path, streams: List[str]) -> None:
    """The training files of ``streams`` (task unify) in ``out``, from the demo corpus in ``media``."""
    from unival.data_utils.prepare.pretrain import prepare_pretraining

    for stream in streams:
        prepare_pretraining(out, stream, "train",
                            [(kind, media / f"{prefix}_train.tsv") for kind, prefix in STREAM_INPUTS[stream]])


def build(folder: Path, streams: List[str], rows: int, image_size: int):
    """(task, model, criterion, mixed batch, the per-stream batches) on a demo corpus written into ``folder``."""
    from unival.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
    from unival.data_utils.demo_corpus import write_demo_corpus
    from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults
    from unival.tasks.unify import UnifyConfig, UnifyTask

    media = folder / "corpus"
    write_demo_corpus(media, seed=3, num_images=(4 * rows, 1, 1), num_videos=(2 * rows, 1, 1),
                      num_audios=(2 * rows, 1, 1), modalities=tuple(streams))
    write_streams(media, folder / "streams", streams)
    task = UnifyTask.setup_task(UnifyConfig(
        data=str(folder / "streams"), media_dir=str(media), streams=",".join(streams), patch_image_size=image_size,
        train_subset="train", valid_subset="valid", seed=1, num_frames=4, patch_frame_size=64,
        audio_clip_seconds=2.0, audio_sample_rate=16000))
    task.load_dataset("train")
    mixture = task.dataset("train")
    indices = mixture.batch_by_size(mixture.ordered_indices(), max_sentences=rows * len(streams))[0]
    items = [mixture[index] for index in indices]
    mixed = mixture.collater(items)
    separate = [mixture.datasets[name].collater([item for stream, item in items if stream == number])
                for number, name in enumerate(mixture.names)]
    values = architecture_defaults("unival_tiny")
    values.update(video_encoder="r3d_18" if "video" in streams else None,
                  audio_encoder="cnn6" if "audio" in streams else None, audio_sample_rate=16000,
                  audio_hop_size=160, audio_window_size=512, audio_fmax=8000.0)
    torch.manual_seed(0)
    model = UnivalModel.from_config(UnivalConfig(**values), task.dictionary).train()
    task.adopt_model(model)
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1).train()
    return model, criterion, mixed, separate


def media_bytes(batch: Dict, padded: bool) -> int:
    """Bytes of the batch's media tensors; ``padded``: as if each held a row for every sample of the batch."""
    total = 0
    samples = batch["net_input"]["src_tokens"].size(0)
    for key in ("patch_images", "patch_videos", "patch_audios"):
        tensor = batch["net_input"].get(key)
        if tensor is not None:
            rows = samples if padded else tensor.size(0)
            total += rows * tensor[0].numel() * tensor.element_size()
    return total


def one_pass(model, criterion, mixed, separate) -> None:
    model.zero_grad(set_to_none=True)
    loss, _, _ = criterion(model, mixed)
    loss.backward()


def per_stream(model, criterion, mixed, separate) -> None:
    model.zero_grad(set_to_none=True)
    total = 0
    for batch in separate:
        loss, sample_size, _ = criterion(model, batch)
        total = total + loss / sample_size
    total.backward()


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="image,audio", help="comma-separated: image, video, audio")
    parser.add_argument("--rows", type=int, default=4, help="rows of each stream in the batch")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions of each side (medians reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    streams = [name.strip() for name in args.streams.split(",")]
    unknown = sorted(set(streams) - set(STREAM_INPUTS))
    if unknown:
        raise SystemExit(f"bench.pretrain_step: unknown stream {unknown[0]!r} (streams: {', '.join(STREAM_INPUTS)})")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="unival_pretrain_step_") as folder:
        model, criterion, mixed, separate = build(Path(folder), streams, args.rows, args.image_size)
        sides = {"one_pass": one_pass, "per_stream": per_stream}
        seconds: Dict[str, List[float]] = {name: [] for name in sides}
        for step in range(args.warmup + args.steps):
            for name, run in sides.items():
                start = time.perf_counter()
                run(model, criterion, mixed, separate)
                if step >= args.warmup:
                    seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "streams": streams, "rows_per_stream": args.rows, "samples": int(mixed["nsentences"]),
        "threads": args.threads, "image_size": args.image_size,
        **{f"{name}_median_s": round(value, 4) for name, value in medians.items()},
        "per_stream_over_one_pass": round(medians["per_stream"] / medians["one_pass"], 3),
        "media_bytes": media_bytes(mixed, padded=False), "media_bytes_with_placeholders": media_bytes(mixed, True),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
