"""Data-loading benchmark: images, video clips and audio clips decoded and transformed per second by one worker
(the project's loaders and transforms on a generated demo corpus), and by a torch DataLoader with N workers.

    python -m bench.data_loading --workers 2
"""
import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench import common
from unival.data_utils.audio import load_audio
from unival.data_utils.demo_corpus import MEDIA_DIRS, write_demo_corpus
from unival.data_utils.media import load_image
from unival.data_utils.transforms import image_transform
from unival.data_utils.video import load_video, video_transform


class MediaDataset(Dataset):
    """What a training worker does per sample of one modality: decode the file and apply the transform."""

    def __init__(self, files: List[Path], load: Callable[[str], torch.Tensor]):
        self.files, self.load = files, load

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(str(self.files[index]))


def loaders(args: argparse.Namespace) -> Dict[str, Callable[[str], torch.Tensor]]:
    """Per modality: file path -> model input, with the training transforms of the tasks."""
    to_image = image_transform(args.image_size, train=True)
    to_clip = video_transform(args.frame_size, train=True)
    rng = np.random.default_rng(0)
    return {
        "image": lambda path: to_image(load_image(path)),
        "video": lambda path: to_clip(load_video(path, num_frames=args.num_frames, train=True, rng=rng)),
        "audio": lambda path: torch.from_numpy(load_audio(path, None, args.sample_rate, args.clip_seconds,
                                                          train=True, rng=rng)),
    }


def write_corpus(folder: Path, args: argparse.Namespace) -> Dict[str, List[Path]]:
    """Generates ``args.items`` files of each modality; returns their paths."""
    counts = (args.items, 1, 1)
    write_demo_corpus(folder, num_images=counts, num_videos=counts, num_audios=counts, image_size=args.image_size,
                      image_format="path", video_size=args.video_size, video_frames=args.video_frames)
    return {modality: sorted((folder / MEDIA_DIRS[modality]).iterdir())[:args.items] for modality in MEDIA_DIRS}


def one_worker_rate(dataset: MediaDataset, repeats: int) -> Dict[str, float]:
    """Items per second of one process decoding the files in turn (the best of ``repeats`` passes)."""
    dataset[0]  # warm-up: codecs and resampler initialise on first use
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        best = min(best, time.perf_counter() - start)
    return {"seconds_per_item": best / len(dataset), "items_per_s": len(dataset) / best}


def data_loader_rate(dataset: MediaDataset, workers: int, batch_size: int) -> Dict[str, float]:
    """Items per second through a DataLoader with ``workers`` processes collating batches, as fairseq's
    ``--num-workers`` does (start-up excluded)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=workers > 0)
    for _ in loader:  # first pass starts the workers
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    seconds = time.perf_counter() - start
    return {"workers": workers, "batch_size": batch_size, "items_per_s": len(dataset) / seconds,
            "items_per_s_per_worker": len(dataset) / seconds / max(workers, 1)}


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the measuring process (DataLoader workers use 1)")
    parser.add_argument("--items", type=int, default=32, help="files generated per modality")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the files; the fastest is reported")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the parallel measurement "
                                                                "(0: skip it)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the DataLoader measurement")
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated and resized images")
    parser.add_argument("--video-size", type=int, default=224, help="side of the generated video frames")
    parser.add_argument("--video-frames", type=int, default=32, help="frames of each generated clip")
    parser.add_argument("--num-frames", type=int, default=8, help="frames sampled from each clip")
    parser.add_argument("--frame-size", type=int, default=224, help="side of the transformed frames")
    parser.add_argument("--sample-rate", type=int, default=48000, help="audio rate the encoder expects "
                                                                       "(files are 16 kHz: resampling included)")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="audio clip length")
    parser.add_argument("--data-dir", help="folder for the generated corpus (default: a temporary folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.data_dir) if args.data_dir else Path(scratch) / "corpus"
        files = write_corpus(folder, args)
        results = {}
        for modality, load in loaders(args).items():
            dataset = MediaDataset(files[modality], load)
            results[modality] = {"files": len(dataset), **one_worker_rate(dataset, args.repeats)}
            if args.workers > 0:
                results[modality]["data_loader"] = data_loader_rate(dataset, args.workers, args.batch_size)
        results["video"]["frames_per_s"] = results["video"]["items_per_s"] * args.num_frames
    settings = {key: getattr(args, key) for key in ("items", "image_size", "video_size", "video_frames",
                                                    "num_frames", "frame_size", "sample_rate", "clip_seconds")}
    output = {"benchmark": "data_loading", "threads": torch.get_num_threads(), "settings": settings,
              "results": results}
    common.print_json(output)
    return output


if __name__ == "__main__":
    main()
