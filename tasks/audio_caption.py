"""Task ``audio_caption``: audio -> caption, with the prompt " what does the audio describe?" (the original
reused the video prompt here)."""
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from fairseq.tasks import register_task
from omegaconf import II

from unival.data_utils.audio import load_audio
from unival.tasks.caption import CaptionConfig, CaptionTask


@dataclass
class AudioCaptionConfig(CaptionConfig):
    audio_clip_seconds: float = field(
        default=10.0, metadata={"help": "clip length: longer audio is cropped (randomly in training), shorter "
                                        "audio repeated"})
    audio_sample_rate: int = II("model.audio_sample_rate")


@register_task("audio_caption", dataclass=AudioCaptionConfig)
class AudioCaptionTask(CaptionTask):
    cfg: AudioCaptionConfig
    media_key, patch_type, prompt = "patch_audio", 2, " what does the audio describe?"

    def media_loader(self, training: bool) -> Callable:
        def load(field: str, rng) -> torch.Tensor:
            samples = load_audio(field, self.media_dir, self.cfg.audio_sample_rate, self.cfg.audio_clip_seconds,
                                 train=training, rng=rng)
            # float64: fairseq's --fp16 halves every float32 tensor of a batch, and a float16 waveform loses the
            # quiet parts of the spectrum; the encoder's front end computes in float32 from this.
            return torch.from_numpy(samples.astype(np.float64))
        return load
