"""Loading the audio clip a TSV field names: decode, mix to mono, resample and cut to a fixed length,
with errors that name the row and the file."""
import os
from typing import Optional, Tuple

import librosa
import numpy as np
import soundfile

from unival.data_utils.media import MediaError, located, resolve_media_path
from unival.data_utils.video import first_line, pyav_module

# librosa's default: soxr's high-quality resampler (about -100 dB aliasing, flat passband to ~0.91 Nyquist),
# many times faster than the "best" settings and far better than the audio codecs' own errors.
RESAMPLE_QUALITY = "soxr_hq"
UNSET_WAV_SIZES = (0, 0xFFFFFFFF)  # data sizes streaming writers leave in the header
# Shorter than this a clip holds less than one analysis window of the log-mel front end (1024 samples: 21 ms at
# the paper's 48 kHz) and repeat-padding it to the clip length makes a buzz at its repetition rate, not its sound.
MIN_AUDIO_SECONDS = 0.025
# One step of 16-bit audio: a clip whose every sample is closer to 0 holds no sound (it would be digital silence in
# 16 bits), and this is what rounding leaves of channels that cancel (L = -R written to PCM is off by one step).
SILENCE_PEAK = 2.0 ** -15


def load_audio(field: str, data_dir: Optional[str], sample_rate: int, clip_seconds: float, train: bool,
               rng: Optional[np.random.Generator] = None, source: Optional[str] = None,
               allow_silent: bool = False) -> np.ndarray:
    """The (samples,) float32 clip of the audio file a TSV field names, at ``sample_rate``.

    The file (relative to ``data_dir`` unless absolute) is mixed to mono and resampled, then cut to
    ``clip_seconds``: a longer file is cropped (training: at a random offset drawn from ``rng``; evaluation: from
    the start, so evaluation is deterministic), a shorter one is repeated whole as often as it fits and the rest
    filled with zeros (the original's "repeatpad"). Missing, empty, truncated and undecodable files raise
    :class:`MediaError` starting with ``source`` (``"train.tsv:12"``) and naming the file. Unless
    ``allow_silent``, so does a file whose mono mix at ``sample_rate`` (what the model would get, before the cut)
    is silent, every sample within ``SILENCE_PEAK`` (one 16-bit step) of 0 (a broken export or decode far more
    often than a real recording; also channels that cancel), or shorter than ``MIN_AUDIO_SECONDS`` (25 ms: less
    than one analysis window of the log-mel front end) and than the clip.
    """
    length = clip_samples(sample_rate, clip_seconds)
    path = existing_audio_path(field, data_dir, source)
    samples, file_rate = decode_audio(path, source)
    check_samples(samples, path, source)
    mono = resample(samples.mean(axis=1), file_rate, sample_rate)
    if not allow_silent:
        check_signal(mono, samples, sample_rate, min(length, clip_samples(sample_rate, MIN_AUDIO_SECONDS)), path,
                     source)
    return crop_or_repeat_pad(mono, length, train, rng)


def clip_samples(sample_rate: int, clip_seconds: float) -> int:
    if sample_rate <= 0 or clip_seconds <= 0:
        raise ValueError(f"audio sample rate and clip length must be positive, got {sample_rate} Hz, "
                         f"{clip_seconds} s")
    return int(round(sample_rate * clip_seconds))


def existing_audio_path(field: str, data_dir: Optional[str], source: Optional[str]) -> str:
    field = field.strip()
    if not field:
        raise MediaError(located(source, "empty audio field"))
    path = resolve_media_path(field, data_dir)
    if not os.path.isfile(path):
        raise MediaError(located(source, f"audio file not found: {os.path.abspath(path)} (field {field!r})"))
    return path


def decode_audio(path: str, source: Optional[str]) -> Tuple[np.ndarray, int]:
    """(frames, channels) float32 samples and the file's sample rate: soundfile (libsndfile: WAV, FLAC, OGG,
    MP3...), else PyAV (FFmpeg: AAC/m4a and the rest)."""
    if os.path.getsize(path) == 0:
        raise MediaError(located(source, f"empty audio file (0 bytes): {path}"))
    missing = missing_wav_bytes(path)
    if missing:
        raise MediaError(located(source, f"truncated WAV file: {path} ends {missing} bytes before the end of "
                                         "the audio data its header declares"))
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return samples, int(rate)
    except (RuntimeError, ValueError) as err:
        soundfile_reason = first_line(err)
    try:
        return decode_with_pyav(path)
    except (pyav_module().FFmpegError, ValueError) as err:  # FFmpegError is a ValueError; ours say what is missing
        pyav_reason = getattr(err, "strerror", None) or first_line(err)
    raise MediaError(located(source, f"not a readable audio file: {path} (soundfile: {soundfile_reason}; "
                                     f"PyAV: {pyav_reason})"))


def decode_with_pyav(path: str) -> Tuple[np.ndarray, int]:
    """The first audio stream's (frames, channels) float32 samples at its own rate."""
    av = pyav_module()
    with av.open(path) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        # Converts any sample format (int16, planar float...) to planar float32, keeping the rate and channels.
        to_float = av.AudioResampler(format="fltp")
        blocks = [converted.to_ndarray() for frame in container.decode(stream)
                  for converted in to_float.resample(frame)]
        blocks += [converted.to_ndarray() for converted in to_float.resample(None)]  # what it still holds
        rate = stream.rate
    if not blocks:
        raise ValueError("the audio stream decodes to no samples")
    return np.ascontiguousarray(np.concatenate(blocks, axis=1).T, dtype=np.float32), int(rate)


def missing_wav_bytes(path: str) -> int:
    """How many bytes of the audio data a RIFF/WAVE header declares are missing from the file (0 if none or not
    a WAV). libsndfile silently reads what is there; a cut WAV is a failed copy, so we report it."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        header = file.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return 0
        offset = 12
        while offset + 8 <= size:
            file.seek(offset)
            chunk = file.read(8)
            chunk_size = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                return 0 if chunk_size in UNSET_WAV_SIZES else max(0, offset + 8 + chunk_size - size)
            offset += 8 + chunk_size + chunk_size % 2  # chunks are padded to an even size
    return 0


def check_samples(samples: np.ndarray, path: str, source: Optional[str]) -> None:
    if samples.shape[0] == 0:
        raise MediaError(located(source, f"audio file has no samples (0 frames): {path}"))
    if not np.isfinite(samples).all():
        raise MediaError(located(source, f"audio file has NaN or infinite samples: {path}"))


def check_signal(mono: np.ndarray, samples: np.ndarray, sample_rate: int, min_samples: int, path: str,
                 source: Optional[str]) -> None:
    """Refuses the mono clip (at ``sample_rate``) of the decoded ``samples`` if it is too short to hold a sound or
    silent."""
    if len(mono) < min_samples:
        raise MediaError(located(source, f"audio file too short: {path} holds {len(mono)} samples at {sample_rate} "
                                         f"Hz ({1000 * len(mono) / sample_rate:.1f} ms), fewer than the "
                                         f"{min_samples} ({1000 * min_samples / sample_rate:.1f} ms) a clip needs"))
    peak = np.abs(mono).max()
    if peak < SILENCE_PEAK:
        if not samples.any():
            reason = "every sample is 0"
        else:
            reason = f"every sample is within one 16-bit step of 0, peak {peak:.1e}"
            if np.abs(samples).max() >= SILENCE_PEAK:  # the file holds a sound the mix or the resampling removes
                if np.abs(samples.mean(axis=1)).max() < SILENCE_PEAK:
                    reason += f", once its {samples.shape[1]} channels, which cancel, are mixed to mono"
                else:
                    reason += f", once resampled to {sample_rate} Hz"
        raise MediaError(located(source, f"silent audio file ({reason}): {path}"))


def resample(samples: np.ndarray, file_rate: int, sample_rate: int) -> np.ndarray:
    if file_rate == sample_rate:
        return samples
    return librosa.resample(samples, orig_sr=file_rate, target_sr=sample_rate, res_type=RESAMPLE_QUALITY)


def crop_or_repeat_pad(samples: np.ndarray, length: int, train: bool,
                       rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``samples`` cut to ``length``: cropped (random offset in training, the start otherwise) or repeated whole
    as often as it fits and then zero-padded."""
    if len(samples) > length:
        offset = (rng or np.random.default_rng()).integers(0, len(samples) - length + 1) if train else 0
        clip = samples[offset:offset + length]
    else:
        repeated = np.tile(samples, length // len(samples))
        clip = np.pad(repeated, (0, length - len(repeated)))
    return np.ascontiguousarray(clip, dtype=np.float32)
