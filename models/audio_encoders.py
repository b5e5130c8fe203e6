"""Audio backbones: PANN CNN6, CNN10 and CNN14 (Kong et al. 2020) with their log-mel front end inside the model,
parameter names as in the original UnIVAL (``encoder.embed_audios.*``), so PANN and UnIVAL weights load."""
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import librosa
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from unival.models.position import grid_position_ids
from unival.models.weights import read_state_dict

logger = logging.getLogger(__name__)

AMIN = 1e-10  # power floor of the dB conversion: -100 dB, as in PANN (ref 1.0, no top_db clipping)
# The STFT and mel filters are fixed functions of the options; the original stores them as parameters with
# requires_grad off (torchlibrosa's freeze_parameters), and so do we, so that they keep the original's names.
FRONTEND_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")
HEAD_PREFIXES = ("fc1.", "fc_audioset.")
AUDIOSET_CLASSES = 527


@dataclass(frozen=True)
class PannVariant:
    """Shape of one PANN: per-block output channels, convolutions per block and their kernel size."""

    channels: Tuple[int, ...]
    convs_per_block: int
    kernel_size: int
    pool_last_block: bool  # CNN14's sixth block does not halve time and frequency
    has_head: bool  # the original keeps (unused) fc1/fc_audioset only in CNN6


VARIANTS: Dict[str, PannVariant] = {
    "cnn6": PannVariant((64, 128, 256, 512), 1, 5, True, True),
    "cnn10": PannVariant((64, 128, 256, 512), 2, 3, True, False),
    "cnn14": PannVariant((64, 128, 256, 512, 1024, 2048), 2, 3, False, False),
}


def frozen(tensor: Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


def dft_filters(n_fft: int) -> Tuple[Tensor, Tensor]:
    """Real and imaginary one-sided DFT rows times a periodic Hann window, each (n_fft // 2 + 1, 1, n_fft)."""
    window = librosa.filters.get_window("hann", n_fft, fftbins=True)
    angles = 2 * np.pi * np.outer(np.arange(n_fft // 2 + 1), np.arange(n_fft)) / n_fft
    real = torch.from_numpy(np.cos(angles) * window).float()
    imag = torch.from_numpy(-np.sin(angles) * window).float()
    return real[:, None, :], imag[:, None, :]


class Float32Filters(nn.Module):
    """Fixed filters that stay float32 when the model is cast to float16 or bfloat16 (``.half()``, fairseq's
    ``--fp16``, ``unival evaluate --fp16``): rounded, the DFT and mel filters leak loud frequencies into quiet mel
    bins (up to 5 dB in float16, 26 dB in bfloat16 with noise 60 dB below a tone). Moves between devices apply."""

    def _apply(self, fn, recurse=True):
        float32 = {name: parameter.data for name, parameter in self.named_parameters()}
        super()._apply(fn, recurse)
        for name, parameter in self.named_parameters():
            if parameter.dtype != torch.float32:  # cast: keep the move, undo the rounding
                parameter.data = float32[name].to(parameter.device)
        return self


class STFTFilters(Float32Filters):
    """Holder of the fixed DFT filters, named ``conv_real`` / ``conv_imag`` as in torchlibrosa."""

    def __init__(self, n_fft: int, hop_size: int):
        super().__init__()
        real, imag = dft_filters(n_fft)
        self.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop_size, bias=False)
        self.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop_size, bias=False)
        self.conv_real.weight = frozen(real)
        self.conv_imag.weight = frozen(imag)


class PowerSpectrogram(nn.Module):
    """(B, samples) waveform -> (B, 1, frames, n_fft // 2 + 1) power spectrogram; frames centred (reflect padding)."""

    def __init__(self, n_fft: int, hop_size: int):
        super().__init__()
        self.n_fft = n_fft
        self.hop_size = hop_size
        self.stft = STFTFilters(n_fft, hop_size)

    def forward(self, waveform: Tensor) -> Tensor:
        x = F.pad(waveform[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")[:, 0]
        frames = x.unfold(-1, self.n_fft, self.hop_size)  # (B, frames, n_fft), a view
        # float32 even in a half-precision model: powers reach 1e6 and the dB floor is 1e-10. Products, not the
        # convolutions the filters are named for: on CUDA, cuDNN runs float32 convolutions in TF32 by default (10
        # mantissa bits, float16's), which moved quiet mel bins by up to 6.7 dB; float32 products are full float32
        # unless the process allows TF32 for them (torch.set_float32_matmul_precision).
        filters = torch.cat([self.stft.conv_real.weight[:, 0], self.stft.conv_imag.weight[:, 0]])
        real, imag = (frames @ filters.T).chunk(2, dim=-1)  # one product: the frames are copied once
        return (real ** 2 + imag ** 2)[:, None]


class LogMel(Float32Filters):
    """Power spectrogram -> log-mel in dB: 10 log10(max(power @ melW, 1e-10)), librosa's Slaney mel filters."""

    def __init__(self, sample_rate: int, n_fft: int, mel_bins: int, fmin: float, fmax: float):
        super().__init__()
        filters = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=mel_bins, fmin=fmin, fmax=fmax)
        self.melW = frozen(torch.from_numpy(np.ascontiguousarray(filters.T)).float())

    def forward(self, power: Tensor) -> Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=AMIN))


def stripe_mask(batch: int, length: int, max_width: int, stripes: int, device) -> Tensor:
    """(batch, length) bool, True inside ``stripes`` random stripes per row, each of width 0..max_width-1."""
    widths = torch.floor(torch.rand(batch, stripes, 1, device=device) * max_width).clamp(max=length)
    starts = torch.floor(torch.rand(batch, stripes, 1, device=device) * (length - widths + 1))
    steps = torch.arange(length, device=device)
    return ((steps >= starts) & (steps < starts + widths)).any(dim=1)


class SpecAugment(nn.Module):
    """Training-only time and frequency masking of a (B, 1, T, F) log-mel (set to 0, the bn0 mean)."""

    def __init__(self, time_mask_width: int = 64, time_masks: int = 2, freq_mask_width: int = 8, freq_masks: int = 2):
        super().__init__()
        self.time_mask_width, self.time_masks = time_mask_width, time_masks
        self.freq_mask_width, self.freq_masks = freq_mask_width, freq_masks

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        batch, _, frames, bins = x.shape
        time = stripe_mask(batch, frames, self.time_mask_width, self.time_masks, x.device)
        freq = stripe_mask(batch, bins, self.freq_mask_width, self.freq_masks, x.device)
        masked = time[:, None, :, None] | freq[:, None, None, :]
        return x.masked_fill(masked, 0.0)


class ConvBlock(nn.Module):
    """``num_convs`` x (conv, BatchNorm, ReLU), then 2x2 average pooling unless ``pool`` is off."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int, kernel_size: int, pool: bool):
        super().__init__()
        self.num_convs = num_convs
        self.pool = pool
        for i in range(1, num_convs + 1):
            conv = nn.Conv2d(in_channels if i == 1 else out_channels, out_channels, kernel_size,
                             padding=kernel_size // 2, bias=False)
            nn.init.xavier_uniform_(conv.weight)
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.num_convs + 1):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return F.avg_pool2d(x, kernel_size=2) if self.pool else x


class PannBackbone(nn.Module):
    """(B, samples) waveform -> (B, C, T', F') PANN feature map, before PANN's global pooling.

    T' is time (frames = samples // hop + 1, halved by each pooled block), F' the mel bins halved likewise.
    """

    def __init__(self, name: str = "cnn14", sample_rate: int = 48000, window_size: int = 1024, hop_size: int = 480,
                 mel_bins: int = 64, fmin: float = 50.0, fmax: float = 14000.0, time_mask_width: int = 64,
                 time_masks: int = 2, freq_mask_width: int = 8, freq_masks: int = 2, dropout: float = 0.2,
                 weights_path: Optional[str] = None):
        super().__init__()
        self.variant = variant_named(name)
        check_frontend_options(sample_rate, window_size, hop_size, mel_bins, fmin, fmax)
        self.name = name
        pools = num_pools(self.variant)
        if mel_bins < 2 ** pools:
            raise ValueError(f"{name} halves the mel axis {pools} times: --mel-bins must be at least "
                             f"{2 ** pools}, got {mel_bins}")
        self.hop_size = hop_size
        self.mel_bins = mel_bins
        self.dropout = dropout
        self.spectrogram_extractor = PowerSpectrogram(window_size, hop_size)
        self.logmel_extractor = LogMel(sample_rate, window_size, mel_bins, fmin, fmax)
        self.spec_augmenter = SpecAugment(time_mask_width, time_masks, freq_mask_width, freq_masks)
        self.bn0 = nn.BatchNorm2d(mel_bins)
        self._build_blocks()
        if self.variant.has_head:
            self._build_unused_head()
        self.num_channels = self.variant.channels[-1]
        if weights_path:
            self.load_weights(weights_path)

    def _build_blocks(self) -> None:
        channels = (1,) + self.variant.channels
        for i in range(1, len(channels)):
            pool = self.variant.pool_last_block or i < len(channels) - 1
            block = ConvBlock(channels[i - 1], channels[i], self.variant.convs_per_block, self.variant.kernel_size, pool)
            setattr(self, f"conv_block{i}", block)

    def _build_unused_head(self) -> None:
        """The original's CNN6 defines PANN's classifier and never calls it; kept frozen so its checkpoints load."""
        width = self.variant.channels[-1]
        self.fc1 = nn.Linear(width, width)
        self.fc_audioset = nn.Linear(width, AUDIOSET_CLASSES)
        for layer in (self.fc1, self.fc_audioset):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
            layer.requires_grad_(False)

    def fixed_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that no option trains: the front end's filters (functions of the options) and the unused
        classifier head (data-parallel training would wait for its gradients)."""
        yield from self.spectrogram_extractor.parameters()
        yield from self.logmel_extractor.parameters()
        for name in ("fc1", "fc_audioset"):
            if hasattr(self, name):
                yield from getattr(self, name).parameters()

    def output_size(self, num_samples: int) -> Tuple[int, int]:
        """(T', F') of the feature map for a waveform of ``num_samples`` samples."""
        return feature_size(self.name, num_samples, self.hop_size, self.mel_bins)

    def log_mel(self, waveform: Tensor) -> Tensor:
        """(B, samples) -> (B, 1, frames, mel_bins) log-mel in dB, before bn0."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            return self.logmel_extractor(self.spectrogram_extractor(waveform.float()))

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"audio encoder expects (batch, samples) waveforms, got shape {tuple(waveform.shape)}")
        if waveform.size(1) <= self.spectrogram_extractor.n_fft // 2 or self.output_size(waveform.size(1))[0] < 1:
            raise ValueError(f"{waveform.size(1)} samples are too short for {self.name} at hop {self.hop_size}")
        x = self.log_mel(waveform).to(self.bn0.weight.dtype)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        x = self.spec_augmenter(x)
        num_blocks = len(self.variant.channels)
        for i in range(1, num_blocks + 1):
            x = getattr(self, f"conv_block{i}")(x)
            if i < num_blocks:
                x = F.dropout(x, p=self.dropout, training=self.training)
        return x

    def load_weights(self, path: str, keep_frontend: bool = True) -> None:
        """Loads a PANN checkpoint (``{"model": state_dict}`` as in ``Cnn14_mAP_0.431.pth``), a bare state dict
        (.pth/.pt) or a .safetensors file.

        The classifier (``fc1``, ``fc_audioset``) of the file is ignored by models without one (CNN10, CNN14: the
        original's forward never uses it). With ``keep_frontend`` the model keeps the STFT and mel filters of its own
        options: PANN's released checkpoints hold 32 kHz mel filters, wrong for 48 kHz audio (the original loads
        them anyway); ``keep_frontend=False`` loads the file's, as the original does. Any other missing or
        unexpected key raises.
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"audio encoder weights not found: {file} (--audio-encoder-path)")
        state = read_state_dict(file)
        if not self.variant.has_head:
            state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
        if keep_frontend:
            self._report_frontend_difference(file, state)
            state = {k: v for k, v in state.items() if not k.startswith(FRONTEND_PREFIXES)}
        expected = {k for k in self.state_dict() if not (keep_frontend and k.startswith(FRONTEND_PREFIXES))}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{file} does not fit the {self.name} audio encoder: missing {missing}, "
                             f"unexpected {unexpected}")
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ValueError(f"{file} does not fit the {self.name} audio encoder: {err}") from err
        logger.info("loaded %s audio encoder weights from %s (%d tensors)", self.name, file, len(state))

    def _report_frontend_difference(self, file: Path, state: Dict[str, Tensor]) -> None:
        for key, value in self.state_dict().items():
            if key.startswith(FRONTEND_PREFIXES) and key in state:
                theirs = state[key]
                if theirs.shape != value.shape or not torch.allclose(theirs.float(), value.float(), atol=1e-4):
                    logger.warning("%s: %s differs from the filters of this encoder's options "
                                   "(another sample rate or window?); keeping the encoder's own", file, key)


def variant_named(name: str) -> PannVariant:
    if name not in VARIANTS:
        raise ValueError(f"unknown audio encoder {name!r}: choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def num_pools(variant: PannVariant) -> int:
    return len(variant.channels) - (0 if variant.pool_last_block else 1)


def feature_size(name: str, num_samples: int, hop_size: int, mel_bins: int = 64) -> Tuple[int, int]:
    """(T', F') of encoder ``name``'s feature map for ``num_samples`` samples; T' * F' tokens.

    A 10 s clip at 48 kHz with 64 mel bins gives, at hop 480 / hop 200: CNN6 and CNN10 62x4 = 248 / 150x4 = 600
    tokens, CNN14 31x2 = 62 / 75x2 = 150 tokens.
    """
    pools = num_pools(variant_named(name))
    frames = num_samples // hop_size + 1  # centred frames
    return frames // 2 ** pools, mel_bins // 2 ** pools


def check_frontend_options(sample_rate: int, window_size: int, hop_size: int, mel_bins: int, fmin: float,
                           fmax: float) -> None:
    for option, value in (("--audio-sample-rate", sample_rate), ("--window-size", window_size),
                          ("--hop-size", hop_size), ("--mel-bins", mel_bins)):
        if value <= 0:
            raise ValueError(f"{option} must be positive, got {value}")
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel range must satisfy 0 <= fmin < fmax <= sample_rate / 2; got fmin {fmin}, "
                         f"fmax {fmax}, sample rate {sample_rate}")


def build_audio_encoder(name: str, **options) -> PannBackbone:
    """``name`` in cnn6, cnn10, cnn14; ``options`` are :class:`PannBackbone`'s (front end, masking, weights)."""
    return PannBackbone(name, **options)


def audio_tokens(features: Tensor) -> Tensor:
    """(B, C, T', F') feature map -> (B, T' * F', C) tokens, time-major (all bins of frame 0 first)."""
    return features.flatten(2).transpose(1, 2)


def audio_position_ids(num_tokens: int, bucket_size: int, device=None) -> torch.LongTensor:
    """(N,) position ids of N audio tokens, as the original assigns them.

    The original ignores the (T', F') layout: it lays the N tokens row by row on a square of side ceil(sqrt(N))
    and takes that square's grid ids (the image ids, 1 + row * bucket_size + col); the square must fit the bucket.
    """
    side = math.ceil(math.sqrt(num_tokens))
    if side > bucket_size:
        raise ValueError(f"{num_tokens} audio tokens need a {side}x{side} position grid, larger than the "
                         f"{bucket_size}x{bucket_size} of --image-bucket-size: raise it or the hop size")
    return grid_position_ids(side, side, bucket_size, device=device)[:num_tokens]
