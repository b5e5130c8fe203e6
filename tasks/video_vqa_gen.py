"""Task ``video_vqa_gen``: video + question -> answer, as ``vqa_gen`` (answer trie, VQA accuracy) with frames
sampled as in ``video_caption`` (MSRVTT-QA, MSVD-QA)."""
from dataclasses import dataclass
from typing import Callable

from fairseq.tasks import register_task

from unival.tasks.video_caption import VideoOptions, video_loader
from unival.tasks.vqa_gen import VqaGenConfig, VqaGenTask


@dataclass
class VideoVqaGenConfig(VqaGenConfig, VideoOptions):
    pass


@register_task("video_vqa_gen", dataclass=VideoVqaGenConfig)
class VideoVqaGenTask(VqaGenTask):
    cfg: VideoVqaGenConfig
    media_key, patch_type = "patch_video", 1

    def media_loader(self, training: bool) -> Callable:
        return video_loader(self, training)
