"""Task ``video_caption``: video -> caption, with the prompt " what does the video describe?"."""
from dataclasses import dataclass, field
from typing import Callable

import torch
from fairseq.tasks import register_task

from unival.data_utils.video import load_video, video_transform
from unival.tasks.caption import CaptionConfig, CaptionTask


@dataclass
class VideoOptions:
    """Frame sampling options of every video task."""

    num_frames: int = field(default=8, metadata={"help": "frames sampled per video, one per equal segment"})
    patch_frame_size: int = field(default=224, metadata={"help": "frames are resized and cropped to this size"})


def video_loader(task, training: bool) -> Callable:
    """(video column, rng) -> (C, T, H, W) frames for ``task`` (its config has the :class:`VideoOptions`)."""
    transform = video_transform(task.cfg.patch_frame_size, train=training)

    def load(field: str, rng) -> torch.Tensor:
        return transform(load_video(field, task.media_dir, task.cfg.num_frames, train=training, rng=rng))
    return load


@dataclass
class VideoCaptionConfig(CaptionConfig, VideoOptions):
    pass


@register_task("video_caption", dataclass=VideoCaptionConfig)
class VideoCaptionTask(CaptionTask):
    cfg: VideoCaptionConfig
    media_key, patch_type, prompt = "patch_video", 1, " what does the video describe?"

    def media_loader(self, training: bool) -> Callable:
        return video_loader(self, training)
