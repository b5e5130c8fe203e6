"""Loading the audio clip a TSV field names: decode, mix to mono, resample and cut to a fixed length,
with errors that name the row and the file."""
import os
import warnings
from typing import Optional, Tuple

import librosa
import numpy as np
import soundfile

from unival.data_utils.media import MediaError, located, resolve_media_path

# librosa's default: soxr's high-quality resampler (about -100 dB aliasing, flat passband to ~0.91 Nyquist),
# many times faster than the "best" settings and far better than the audio codecs' own errors.
RESAMPLE_QUALITY = "soxr_hq"
UNSET_WAV_SIZES = (0, 0xFFFFFFFF)  # data sizes streaming writers leave in the header


def load_audio(field: str, data_dir: Optional[str], sample_rate: int, clip_seconds: float, train: bool,
               rng: Optional[np.random.Generator] = None, source: Optional[str] = None,
               allow_silent: bool = False) -> np.ndarray:
    """The (samples,) float32 clip of the audio file a TSV field names, at ``sample_rate``.

    The file (relative to ``data_dir`` unless absolute) is mixed to mono and resampled, then cut to
    ``clip_seconds``: a longer file is cropped (training: at a random offset drawn from ``rng``; evaluation: from
    the start, so evaluation is deterministic), a shorter one is repeated whole as often as it fits and the rest
    filled with zeros (the original's "repeatpad"). Missing, empty, truncated and undecodable files raise
    :class:`MediaError` starting with ``source`` (``"train.tsv:12"``) and naming the file. So does a file whose
    samples are all exactly 0 (a broken export or decode far more often than a real recording), unless
    ``allow_silent``.
    """
    length = clip_samples(sample_rate, clip_seconds)
    path = existing_audio_path(field, data_dir, source)
    samples, file_rate = decode_audio(path, source)
    check_samples(samples, path, source, allow_silent)
    mono = resample(samples.mean(axis=1), file_rate, sample_rate)
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
    """(frames, channels) float32 samples and the sample rate: soundfile, or librosa for what it cannot read."""
    if os.path.getsize(path) == 0:
        raise MediaError(located(source, f"empty audio file (0 bytes): {path}"))
    missing = missing_wav_bytes(path)
    if missing:
        raise MediaError(located(source, f"truncated WAV file: {path} ends {missing} bytes before the end of "
                                         "the audio data its header declares"))
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, ValueError) as err:
        samples, rate = decode_with_librosa(path, source, err)
    return samples, int(rate)


def decode_with_librosa(path: str, source: Optional[str], soundfile_error: Exception) -> Tuple[np.ndarray, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns that soundfile failed, which we know
            samples, rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    except Exception as err:  # audioread backends raise assorted errors (EOFError, NoBackendError...)
        raise MediaError(located(source, f"not a readable audio file: {path} ({soundfile_error})")) from err
    return np.atleast_2d(samples).T, rate


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


def check_samples(samples: np.ndarray, path: str, source: Optional[str], allow_silent: bool) -> None:
    if samples.shape[0] == 0:
        raise MediaError(located(source, f"audio file has no samples (0 frames): {path}"))
    if not np.isfinite(samples).all():
        raise MediaError(located(source, f"audio file has NaN or infinite samples: {path}"))
    if not allow_silent and not samples.any():
        raise MediaError(located(source, f"silent audio file (every sample is 0): {path}"))


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
