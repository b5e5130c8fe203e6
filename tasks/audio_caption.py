"""Task ``audio_caption``: audio -> caption, with the prompt " what does the audio describe?" (the original
reused the video prompt here)."""
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from fairseq.tasks import register_task
from omegaconf import II

from unival.data_utils.audio import load_audio
from unival.tasks.base import INPUT_OPTIONS
from unival.tasks.caption import CaptionConfig, CaptionTask


@dataclass
class AudioCaptionConfig(CaptionConfig):
    audio_clip_seconds: float = field(
        default=10.0, metadata={"help": "clip length: longer audio is cropped (randomly in training), shorter "
                                        "audio repeated"})
    # The model's --audio-sample-rate in training; None in fairseq-generate and unival evaluate, which have no model
    # options: the task then takes the rate from the model it is given (adopt_model).
    audio_sample_rate: Optional[int] = II("oc.select:model.audio_sample_rate,null")


class AudioInput:
    """Reading audio clips at the sample rate of the model's audio encoder, for tasks whose config has
    ``audio_clip_seconds`` and ``audio_sample_rate`` (mixed in before :class:`UnivalTask`)."""

    model_sample_rate: Optional[int] = None

    def adopt_model(self, model) -> None:
        super().adopt_model(model)
        rate = model.cfg.audio_sample_rate
        if self.cfg.audio_sample_rate is not None and self.cfg.audio_sample_rate != rate:
            raise ValueError(f"{self.task_name}: the task reads audio at {self.cfg.audio_sample_rate} Hz but the "
                             f"model's audio encoder was built for {rate} Hz (--audio-sample-rate)")
        self.model_sample_rate = rate

    @property
    def task_name(self) -> str:
        return getattr(self.cfg, "_name", None) or type(self).__name__

    @property
    def sample_rate(self) -> int:
        """The rate audio is resampled to: the model's ``--audio-sample-rate``."""
        rate = self.cfg.audio_sample_rate or self.model_sample_rate
        if rate is None:
            raise ValueError(f"{self.task_name}: no sample rate to read audio at: it is the model's "
                             f"--audio-sample-rate, known once the task has built or been given the model "
                             f"(task.build_model or task.adopt_model)")
        return rate

    def audio_loader(self, training: bool) -> Callable:
        """(audio column, rng) -> (samples,) float64 waveform of ``audio_clip_seconds`` at :attr:`sample_rate`."""
        def load(field: str, rng) -> torch.Tensor:
            samples = load_audio(field, self.media_dir, self.sample_rate, self.cfg.audio_clip_seconds,
                                 train=training, rng=rng)
            # float64: fairseq's --fp16 halves every float32 tensor of a batch, and a float16 waveform loses the
            # quiet parts of the spectrum; the encoder's front end computes in float32 from this.
            return torch.from_numpy(samples.astype(np.float64))
        return load


@register_task("audio_caption", dataclass=AudioCaptionConfig)
class AudioCaptionTask(AudioInput, CaptionTask):
    cfg: AudioCaptionConfig
    media_key, patch_type, prompt = "patch_audio", 2, " what does the audio describe?"
    input_options = tuple(name for name in INPUT_OPTIONS if name not in ("patch_image_size",
                                                                          "imagenet_default_mean_and_std"))

    def media_loader(self, training: bool) -> Callable:
        return self.audio_loader(training)
