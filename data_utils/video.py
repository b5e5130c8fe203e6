"""Video clips for the video tasks: frames sampled one per equal segment, decoded with decord (PyAV as the
fallback) with errors that name the row and the file, and the clip transform."""
import importlib
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from unival.data_utils.media import MediaError, located, resolve_media_path
from unival.data_utils.transforms import HALF_MEAN_STD

# decord and PyAV (each with its own FFmpeg, 30 MB resident together) are imported at the first video read, so
# that processes that read no video (training on images, generation, `unival --help`) do not load them.
NOT_LOADED = object()
decord = NOT_LOADED  # the decord module, None when it is not installed (PyAV then reads every file)
av = NOT_LOADED
# Side of the training crop as a fraction of the frame's shorter side: light, so objects stay in view.
TRAIN_CROP_SCALE = (0.8, 1.0)
MAX_REASON = 200  # decord's errors carry a C++ backtrace; the first line says what went wrong


def sample_frame_indices(num_video_frames: int, num_frames: int, train: bool,
                         rng: Optional[np.random.Generator] = None) -> List[int]:
    """Indices of ``num_frames`` frames, one per equal segment of the video, in order.

    Training takes a random frame of each segment, drawn from ``rng`` or, without one, from numpy's global
    generator (which fairseq's ``numpy_seed`` sets per sample); evaluation takes each segment's middle frame.
    A video shorter than ``num_frames`` repeats its frames in order, each about ``num_frames /
    num_video_frames`` times (the original repeated the last frame instead, freezing the end of the clip).
    """
    if num_video_frames < 1:
        raise ValueError(f"the video has {num_video_frames} frames: nothing to sample")
    if num_frames < 1:
        raise ValueError(f"cannot sample {num_frames} frames: expected at least 1")
    edges = np.linspace(0, num_video_frames, num_frames + 1)
    if train:
        positions = (np.random if rng is None else rng).uniform(edges[:-1], edges[1:])
    else:
        positions = (edges[:-1] + edges[1:]) / 2
    return [min(int(position), num_video_frames - 1) for position in positions]


# Files the video decoders open as one-frame videos (animated GIFs are left to them)
STILL_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_video(field: str, data_dir: Optional[str] = None, num_frames: int = 8, train: bool = False,
               rng: Optional[np.random.Generator] = None, source: Optional[str] = None) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 frames, chosen by :func:`sample_frame_indices`, of the video file a TSV
    field names (relative to ``data_dir`` unless absolute).

    decord reads only the chosen frames; PyAV, used when decord is not installed or cannot read the file,
    decodes from the start up to the last one. A missing, empty, truncated or undecodable file, or one with no
    frames, raises :class:`MediaError` starting with ``source`` (``"train.tsv:12"``) and naming the path.
    """
    if num_frames < 1:  # an option, not the file: checked before the file is blamed
        raise ValueError(f"cannot sample {num_frames} frames: expected at least 1")
    field = field.strip()
    if not field:
        raise MediaError(located(source, "empty video field"))
    path = os.path.abspath(resolve_media_path(field, data_dir))
    if not os.path.isfile(path):
        raise MediaError(located(source, f"video file not found: {path} (field {field!r})"))
    if os.path.getsize(path) == 0:
        raise MediaError(located(source, f"empty video file (0 bytes): {path}"))
    if path.lower().endswith(STILL_IMAGE_SUFFIXES):  # the decoders read it as a video of one frame, repeated
        raise MediaError(located(source, f"a still image, not a video: {path} (an image task's file given to a "
                                         f"video task?)"))
    reasons = []
    if decord_module() is not None:
        try:
            return decord_frames(path, num_frames, train, rng)
        except decord_errors() as err:
            reasons.append(f"decord: {first_line(err)}")
    try:
        return pyav_frames(path, num_frames, train, rng)
    except (pyav_module().FFmpegError, ValueError) as err:
        reasons.append(f"PyAV: {first_line(err)}")
    raise MediaError(located(source, f"not a readable video: {path} ({'; '.join(reasons)})"))


def decord_module():
    """decord, imported on first use; None where it is not installed."""
    global decord
    if decord is NOT_LOADED:
        try:
            decord = importlib.import_module("decord")
        except ImportError:  # PyAV reads the same files, only decoding from the start instead of seeking
            decord = None
    return decord


def decord_errors() -> Tuple[type, ...]:
    module = decord_module()
    specific = getattr(module, "DECORDError", None)
    return (RuntimeError, ValueError) + ((specific,) if isinstance(specific, type) else ())


def pyav_module():
    global av
    if av is NOT_LOADED:
        av = importlib.import_module("av")
    return av


def first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."


def decord_frames(path: str, num_frames: int, train: bool, rng: Optional[np.random.Generator]) -> np.ndarray:
    # One thread: data-loader workers already decode several videos at once.
    reader = decord_module().VideoReader(path, num_threads=1)
    indices = sample_frame_indices(len(reader), num_frames, train, rng)
    return reader.get_batch(indices).asnumpy()


def pyav_frames(path: str, num_frames: int, train: bool, rng: Optional[np.random.Generator]) -> np.ndarray:
    count = pyav_frame_count(path)
    indices = sample_frame_indices(count, num_frames, train, rng)
    wanted, kept, decoded = set(indices), {}, 0
    with pyav_module().open(path) as container:
        for frame in container.decode(video=0):
            if decoded in wanted:
                kept[decoded] = frame.to_ndarray(format="rgb24")
            decoded += 1
            if decoded > indices[-1]:
                break
    if decoded <= indices[-1]:
        raise ValueError(f"only {decoded} of the {count} frames the file declares decode (truncated file?)")
    return np.stack([kept[index] for index in indices])


def pyav_frame_count(path: str) -> int:
    """Frames of the first video stream: as the container declares them, else counted from its packets."""
    with pyav_module().open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        return sum(1 for packet in container.demux(stream) if packet.size)


def video_transform(size: int, train: bool, mean: Sequence[float] = HALF_MEAN_STD[0],
                    std: Sequence[float] = HALF_MEAN_STD[1], flip: bool = False) -> Callable[[np.ndarray], Tensor]:
    """(T, H, W, 3) uint8 frames -> FloatTensor (3, T, size, size), normalised.

    Evaluation resizes the shorter side to ``size`` (bilinear, antialiased), then takes the centre square:
    deterministic, and the whole frame's height (the original cropped without resizing, keeping only the
    middle of larger frames). Training takes a square of 80-100% of the shorter side at a random place, the
    same for every frame, resized to ``size`` (torch's global generator). ``flip`` adds a horizontal flip of
    the clip with probability 0.5; it is off by default because it falsifies captions that name a direction,
    as the demo corpus's "moves to the left" does.
    """
    def transform(frames: np.ndarray) -> Tensor:
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        video = random_square(video, size, flip) if train else center_square(video, size)
        video = F.normalize(video.float().div_(255.0), mean, std)
        return video.permute(1, 0, 2, 3).contiguous()
    return transform


def center_square(video: Tensor, size: int) -> Tensor:
    """(T, 3, H, W) frames with the shorter side resized to ``size``, cropped to the centre size x size."""
    video = F.resize(video, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(video, [size, size])


def random_square(video: Tensor, size: int, flip: bool) -> Tensor:
    """(T, 3, H, W) frames cropped to one random square (see :data:`TRAIN_CROP_SCALE`), resized to ``size``."""
    height, width = video.shape[-2:]
    fraction = torch.empty(()).uniform_(*TRAIN_CROP_SCALE).item()
    side = max(1, round(min(height, width) * fraction))
    top = int(torch.randint(0, height - side + 1, ()))
    left = int(torch.randint(0, width - side + 1, ()))
    video = F.resized_crop(video, top, left, side, side, [size, size],
                           interpolation=InterpolationMode.BILINEAR, antialias=True)
    if flip and torch.rand(()) < 0.5:
        video = video.flip(-1)
    return video
