"""Deterministic generator of a small, learnable demo corpus (shape scenes, moving shapes, synthetic sounds)
written in the TSV formats of the caption, VQA, grounding, entailment, video and audio tasks."""
import base64
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from unival.data_utils.answers import format_answers, parse_answers  # noqa: F401 (re-exported)

GENERATOR = "unival-demo-corpus"
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
ANSWERS = "answers.txt"
SPLITS = ("train", "valid", "test")
MODALITIES = ("image", "video", "audio")
IMAGE_FORMATS = ("base64", "path")
MEDIA_DIRS = {"image": "images", "video": "videos", "audio": "audios"}
TASK_FILES = {
    "image": ("caption", "vqa", "refcoco", "snli_ve"),
    "video": ("video_caption", "video_vqa"),
    "audio": ("audio_caption",),
}
DEFAULT_NUM_IMAGES = (480, 48, 48)
DEFAULT_NUM_VIDEOS = (240, 24, 24)
DEFAULT_NUM_AUDIOS = (240, 24, 24)
DEFAULT_IMAGE_SIZE = 128
DEFAULT_VIDEO_SIZE = 64
DEFAULT_VIDEO_FRAMES = 16
DEFAULT_FPS = 8
DEFAULT_SAMPLE_RATE = 16000

# Five colours far apart in RGB and from the background, so a pixel's colour names its shape unambiguously.
BACKGROUND = (96, 96, 96)
BACKGROUND_WORD = "gray"
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
SIZE_WORDS = ("small", "large")
# Width of a shape as a fraction of its grid cell: shapes never leave their cell, so they never overlap.
SIZE_FRACTIONS = {"small": 0.4, "large": 0.76}
GRID = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
MATERIALS = ("wood", "metal", "paper", "glass", "plastic")

MOTIONS = ("right", "left", "up", "down", "grow", "shrink")
# motion -> (verb phrase, participle phrase) used by the video captions.
MOTION_PHRASES = {
    "right": ("moves to the right", "moving from left to right"),
    "left": ("moves to the left", "moving from right to left"),
    "up": ("moves up", "moving from bottom to top"),
    "down": ("moves down", "moving from top to bottom"),
    "grow": ("grows", "getting bigger"),
    "shrink": ("shrinks", "getting smaller"),
}

SOUND_CATEGORIES = ("high_tone", "low_tone", "rising_chirp", "falling_chirp", "noise_burst",
                    "two_beeps", "three_beeps", "four_beeps")
BEEP_COUNTS = {"two_beeps": 2, "three_beeps": 3, "four_beeps": 4}
SOUND_CAPTIONS = {
    "high_tone": ("a high pitched tone", "a steady high tone", "a constant high pitched sound"),
    "low_tone": ("a low pitched tone", "a steady low tone", "a constant low pitched sound"),
    "rising_chirp": ("a rising chirp", "a tone rising in pitch", "a sound that goes up in pitch"),
    "falling_chirp": ("a falling chirp", "a tone falling in pitch", "a sound that goes down in pitch"),
    "noise_burst": ("a burst of noise", "a short burst of white noise", "a hissing noise"),
}
BEEP_SECONDS = 0.1
BEEP_GAP_SECONDS = 0.15
FADE_SECONDS = 0.01


@dataclass(frozen=True)
class Shape:
    """One shape of a scene: ``radius`` is half the side of its square bounding box, in pixels."""
    kind: str
    colour: str
    size: str
    position: str
    cx: int
    cy: int
    radius: int


@dataclass(frozen=True)
class Scene:
    image_size: int
    shapes: Tuple[Shape, ...]


@dataclass(frozen=True)
class Clip:
    """One shape moving or changing size; ``start``/``end`` are (cx, cy, radius) of the first and last frame."""
    kind: str
    colour: str
    motion: str
    frame_size: int
    num_frames: int
    start: Tuple[int, int, int]
    end: Tuple[int, int, int]


@dataclass(frozen=True)
class Sound:
    """A synthetic sound; the noise of ``noise_burst`` is drawn from ``noise_seed`` so rendering stays pure."""
    category: str
    duration: float
    start_hz: float
    end_hz: float
    amplitude: float
    onset: float
    burst_seconds: float
    noise_seed: int


# ---------------------------------------------------------------------------------------------------------------
# Randomness


def item_rng(seed: int, modality: str, split: str, index: int) -> np.random.Generator:
    """The generator of one item: items depend only on (seed, modality, split, index), so changing the size
    of one split leaves every item of the others unchanged."""
    return np.random.default_rng([seed, MODALITIES.index(modality), SPLITS.index(split), index])


def pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------------------------------------------------------
# Image scenes


def position_phrase(position: str) -> str:
    """'center' -> 'in the center', 'left' -> 'on the left', 'top left' -> 'at the top left'."""
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def sample_scene(rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE) -> Scene:
    """One or two shapes of different kinds and colours, each in its own cell of a 3x3 grid (reading order)."""
    count = int(rng.integers(1, 3))
    cells = sorted(int(c) for c in rng.choice(9, size=count, replace=False))
    kinds = rng.choice(len(SHAPES), size=count, replace=False)
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    cell_width = image_size / 3
    shapes = []
    for cell, kind, colour in zip(cells, kinds, colours):
        row, col = divmod(cell, 3)
        size = pick(rng, SIZE_WORDS)
        radius = max(2, round(cell_width * SIZE_FRACTIONS[size] / 2))
        # Half the free room of the cell, so the jittered box stays inside the cell.
        jitter = max(0, int(cell_width / 2 - radius) - 1) // 2
        dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        shapes.append(Shape(kind=SHAPES[kind], colour=list(COLOURS)[colour], size=size, position=GRID[row][col],
                            cx=int(cell_width * (col + 0.5)) + dx, cy=int(cell_width * (row + 0.5)) + dy,
                            radius=radius))
    return Scene(image_size=image_size, shapes=tuple(shapes))


def box_of(shape: Shape) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in pixels, x1 and y1 excluded: the shape covers columns x0..x1-1 and rows y0..y1-1."""
    return (shape.cx - shape.radius, shape.cy - shape.radius, shape.cx + shape.radius, shape.cy + shape.radius)


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, rgb: Tuple[int, int, int], box: Sequence[int]) -> None:
    x0, y0, x1, y1 = box
    # PIL includes the end coordinates it is given; our boxes exclude them.
    right, bottom = x1 - 1, y1 - 1
    if kind == "circle":
        draw.ellipse((x0, y0, right, bottom), fill=rgb)
    elif kind == "square":
        draw.rectangle((x0, y0, right, bottom), fill=rgb)
    elif kind == "triangle":
        draw.polygon([((x0 + right) / 2, y0), (x0, bottom), (right, bottom)], fill=rgb, outline=rgb)
    else:
        raise ValueError(f"unknown shape kind {kind!r} (expected one of {SHAPES})")


def render_scene(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        draw_shape(draw, shape.kind, COLOURS[shape.colour], box_of(shape))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Fixed settings and no metadata: the same image always gives the same bytes.
    image.save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def object_names(scene: Scene) -> List[str]:
    return [f"{shape.colour} {shape.kind}" for shape in scene.shapes]


def captions_for_scene(scene: Scene) -> List[str]:
    """Reference captions; every one names the colour and kind of every shape."""
    if len(scene.shapes) == 1:
        (shape,) = scene.shapes
        plain = f"a {shape.colour} {shape.kind}"
        sized = f"a {shape.size} {shape.colour} {shape.kind}"
        where = position_phrase(shape.position)
        return [f"{plain} {where}", f"{sized} {where} of the image", f"there is {sized}",
                f"{sized} on a {BACKGROUND_WORD} background", f"a picture of {plain}"]
    first, second = scene.shapes
    plain = [f"a {s.colour} {s.kind}" for s in scene.shapes]
    sized = [f"a {s.size} {s.colour} {s.kind}" for s in scene.shapes]
    where = [position_phrase(s.position) for s in scene.shapes]
    return [f"{plain[0]} {where[0]} and {plain[1]} {where[1]}", f"{sized[0]} and {sized[1]}",
            f"two shapes {plain[0]} and {plain[1]}", f"{plain[1]} {where[1]} and {plain[0]} {where[0]}",
            f"there are two shapes {sized[0]} {where[0]} and {sized[1]} {where[1]}"]


def absent_objects(scene: Scene, rng: np.random.Generator, count: int) -> List[Tuple[str, str]]:
    """``count`` distinct (colour, kind) pairs that are not in the scene."""
    present = {(shape.colour, shape.kind) for shape in scene.shapes}
    candidates = [(colour, kind) for colour in COLOURS for kind in SHAPES if (colour, kind) not in present]
    chosen = rng.choice(len(candidates), size=count, replace=False)
    return [candidates[int(i)] for i in chosen]


def questions_for_scene(scene: Scene, rng: np.random.Generator) -> List[Tuple[str, List[Tuple[float, str]]]]:
    """(question, [(confidence, answer), ...]) pairs; as many "no" as "yes" existence questions."""
    pairs = []
    for shape in scene.shapes:
        pairs.append((f"what colour is the {shape.kind}?", [(1.0, shape.colour)]))
        pairs.append((f"what shape is {position_phrase(shape.position)}?", [(1.0, shape.kind)]))
        pairs.append((f"is the {shape.kind} small or large?", [(1.0, shape.size)]))
        pairs.append((f"where is the {shape.colour} {shape.kind}?", [(1.0, shape.position)]))
        pairs.append((f"is there a {shape.colour} {shape.kind}?", [(1.0, "yes")]))
    for colour, kind in absent_objects(scene, rng, len(scene.shapes)):
        pairs.append((f"is there a {colour} {kind}?", [(1.0, "no")]))
    count = len(scene.shapes)
    # The digit is a second, less preferred candidate, as in VQA where annotators disagree on the form.
    pairs.append(("how many shapes are there?", [(1.0, NUMBER_WORDS[count]), (0.6, str(count))]))
    return pairs


def referring_expressions(shape: Shape) -> List[str]:
    """Expressions that single the shape out: kinds and colours differ within a scene."""
    return [f"the {shape.colour} {shape.kind}", f"the {shape.size} {shape.colour} {shape.kind}",
            f"the {shape.kind} {position_phrase(shape.position)}", f"the {shape.colour} shape"]


def count_statement(count: int) -> str:
    return "there is only one shape" if count == 1 else f"there are {NUMBER_WORDS[count]} shapes"


def hypotheses_for_scene(scene: Scene, rng: np.random.Generator) -> List[Tuple[str, str]]:
    """One (hypothesis, label) per label: "yes" is true of the image, "no" contradicts it, "maybe" is about
    something an image cannot show (material, weight)."""
    shape = pick(rng, scene.shapes)
    count = len(scene.shapes)
    other_colour = pick(rng, [c for c in COLOURS if c != shape.colour])
    absent_kind = pick(rng, [k for k in SHAPES if k not in {s.kind for s in scene.shapes}])
    row, col = next((r, c) for r in range(3) for c in range(3) if GRID[r][c] == shape.position)
    # A cell in another row and another column, so "on the left" is never half true of "top left".
    other_position = pick(rng, [GRID[r][c] for r in range(3) for c in range(3) if r != row and c != col])
    other_size = SIZE_WORDS[1 - SIZE_WORDS.index(shape.size)]
    true = [f"there is a {shape.colour} {shape.kind}", f"the {shape.kind} is {shape.colour}",
            f"the {shape.colour} {shape.kind} is {position_phrase(shape.position)}",
            f"the {shape.kind} is {shape.size}", count_statement(count)]
    false = [f"the {shape.kind} is {other_colour}", f"there is a {absent_kind}",
             f"the {shape.colour} {shape.kind} is {position_phrase(other_position)}",
             f"the {shape.kind} is {other_size}", count_statement(3 - count)]
    unknown = [f"the {shape.kind} is made of {pick(rng, MATERIALS)}", f"the {shape.colour} {shape.kind} is heavy",
               f"the {shape.kind} is soft"]
    return [(pick(rng, true), "yes"), (pick(rng, false), "no"), (pick(rng, unknown), "maybe")]


# ---------------------------------------------------------------------------------------------------------------
# Video clips


def sample_clip(rng: np.random.Generator, frame_size: int = DEFAULT_VIDEO_SIZE,
                num_frames: int = DEFAULT_VIDEO_FRAMES) -> Clip:
    kind, colour, motion = pick(rng, SHAPES), pick(rng, list(COLOURS)), pick(rng, MOTIONS)
    if motion in ("grow", "shrink"):
        small, large = max(2, round(frame_size * 0.08)), round(frame_size * 0.3)
        jitter = frame_size // 2 - large - 2
        cx, cy = (frame_size // 2 + int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        start, end = (cx, cy, small), (cx, cy, large)
        if motion == "shrink":
            start, end = end, start
        return Clip(kind, colour, motion, frame_size, num_frames, start, end)
    radius = int(rng.integers(max(2, round(frame_size * 0.1)), max(3, round(frame_size * 0.16)) + 1))
    low, high = radius + 1, frame_size - radius - 1
    travel = (low + int(rng.integers(0, 3)), high - int(rng.integers(0, 3)))
    across = int(rng.integers(low, high + 1))
    forward = motion in ("right", "down")
    first, last = travel if forward else travel[::-1]
    if motion in ("right", "left"):
        return Clip(kind, colour, motion, frame_size, num_frames, (first, across, radius), (last, across, radius))
    return Clip(kind, colour, motion, frame_size, num_frames, (across, first, radius), (across, last, radius))


def clip_boxes(clip: Clip) -> List[Tuple[int, int, int, int]]:
    """The shape's box in each frame, interpolated linearly from the first to the last frame."""
    boxes = []
    for index in range(clip.num_frames):
        weight = index / max(1, clip.num_frames - 1)
        cx, cy, radius = (round(a + weight * (b - a)) for a, b in zip(clip.start, clip.end))
        boxes.append((cx - radius, cy - radius, cx + radius, cy + radius))
    return boxes


def render_clip(clip: Clip) -> List[np.ndarray]:
    """Frames as (H, W, 3) uint8 RGB arrays."""
    frames = []
    for box in clip_boxes(clip):
        image = Image.new("RGB", (clip.frame_size, clip.frame_size), BACKGROUND)
        draw_shape(ImageDraw.Draw(image), clip.kind, COLOURS[clip.colour], box)
        frames.append(np.asarray(image))
    return frames


def write_mp4(frames: Sequence[np.ndarray], path: Union[str, Path], fps: int = DEFAULT_FPS) -> None:
    """H.264 in yuv420p with one encoder thread, x264's C code and bit-exact muxing, so equal frames give equal
    bytes. With its assembly (AVX-512 on the development machine) x264 wrote different bytes for the same frames
    in about one corpus in ten, depending on what the process had done before (uninitialised memory, presumably);
    its C code did not in any of 600 trials, at no noticeable cost for clips this small."""
    import av  # here: image-only corpora (the GPU checks) need no PyAV

    height, width = frames[0].shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: yuv420p needs even frame sizes, got {width}x{height}")
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.options = {"preset": "veryfast", "crf": "18", "bframes": "0", "x264-params": "asm=0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def captions_for_clip(clip: Clip) -> List[str]:
    verb, participle = MOTION_PHRASES[clip.motion]
    return [f"a {clip.colour} {clip.kind} {verb}", f"a {clip.colour} {clip.kind} {participle}",
            f"the {clip.kind} {verb}", f"a video of a {clip.colour} {clip.kind} {participle}"]


def questions_for_clip(clip: Clip) -> List[Tuple[str, List[Tuple[float, str]]]]:
    if clip.motion in ("grow", "shrink"):
        change = (f"does the {clip.kind} grow or shrink?", [(1.0, clip.motion)])
    else:
        change = (f"which direction does the {clip.kind} move?", [(1.0, clip.motion)])
    return [change, ("what colour is the shape?", [(1.0, clip.colour)]),
            ("what shape is in the video?", [(1.0, clip.kind)])]


# ---------------------------------------------------------------------------------------------------------------
# Sounds


def sample_sound(rng: np.random.Generator) -> Sound:
    category = pick(rng, SOUND_CATEGORIES)
    duration = float(pick(rng, (1.0, 1.25, 1.5, 1.75, 2.0)))
    amplitude = float(rng.uniform(0.3, 0.6))
    start_hz = end_hz = float(rng.uniform(700, 1000))
    onset, burst = 0.0, duration
    if category == "high_tone":
        start_hz = end_hz = float(rng.uniform(1200, 2000))
    elif category == "low_tone":
        start_hz = end_hz = float(rng.uniform(150, 300))
    elif category in ("rising_chirp", "falling_chirp"):
        start_hz, end_hz = float(rng.uniform(200, 400)), float(rng.uniform(1500, 3000))
        if category == "falling_chirp":
            start_hz, end_hz = end_hz, start_hz
    elif category == "noise_burst":
        burst = float(rng.uniform(0.3, 0.7))
        onset = float(rng.uniform(0.1, duration - burst - 0.1))
    else:
        beeps = BEEP_COUNTS[category]
        burst = beeps * BEEP_SECONDS + (beeps - 1) * BEEP_GAP_SECONDS
        onset = float(rng.uniform(0.05, duration - burst - 0.05))
    return Sound(category, duration, start_hz, end_hz, amplitude, onset, burst, int(rng.integers(2 ** 31)))


def gate(times: np.ndarray, onset: float, length: float) -> np.ndarray:
    """1 inside [onset, onset + length] with short linear fades, 0 elsewhere: no clicks at the edges."""
    rise = (times - onset) / FADE_SECONDS
    fall = (onset + length - times) / FADE_SECONDS
    return np.clip(np.minimum(rise, fall), 0.0, 1.0)


def synthesize_sound(sound: Sound, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform in [-1, 1]."""
    times = np.arange(round(sound.duration * sample_rate)) / sample_rate
    if sound.category == "noise_burst":
        noise = np.random.default_rng(sound.noise_seed).uniform(-1.0, 1.0, size=times.shape)
        wave = noise * gate(times, sound.onset, sound.burst_seconds)
    elif sound.category in BEEP_COUNTS:
        tone = np.sin(2 * np.pi * sound.start_hz * times)
        step = BEEP_SECONDS + BEEP_GAP_SECONDS
        envelope = sum(gate(times, sound.onset + i * step, BEEP_SECONDS) for i in range(BEEP_COUNTS[sound.category]))
        wave = tone * envelope
    else:
        # Exponential sweep (constant for a tone): pitch moves evenly on a musical scale.
        if sound.start_hz == sound.end_hz:
            phase = 2 * np.pi * sound.start_hz * times
        else:
            rate = np.log(sound.end_hz / sound.start_hz) / sound.duration
            phase = 2 * np.pi * sound.start_hz * np.expm1(rate * times) / rate
        wave = np.sin(phase) * gate(times, 0.0, sound.duration)
    return (sound.amplitude * wave).astype(np.float32)


def write_wav(wave: np.ndarray, path: Union[str, Path], sample_rate: int = DEFAULT_SAMPLE_RATE) -> None:
    soundfile.write(str(path), wave, sample_rate, subtype="PCM_16", format="WAV")


def captions_for_sound(sound: Sound) -> List[str]:
    if sound.category in BEEP_COUNTS:
        word = NUMBER_WORDS[BEEP_COUNTS[sound.category]]
        return [f"{word} short beeps", f"a tone beeping {word} times", f"{word} beeps in a row"]
    return list(SOUND_CAPTIONS[sound.category])


# ---------------------------------------------------------------------------------------------------------------
# TSV fields and files


def format_box(box: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in box)


def caption_fields(captions: Sequence[str], split: str) -> List[str]:
    """Training files hold one row per caption; evaluation files one row per item with every reference."""
    return list(captions) if split == "train" else ["&&".join(captions)]


def write_tsv(path: Path, rows: Sequence[Sequence]) -> int:
    """Writes rows behind a running id column; returns the row count."""
    lines = []
    for row_id, row in enumerate(rows):
        fields = [str(row_id)] + [str(field) for field in row]
        for field in fields:
            if any(char in field for char in "\t\n\r"):
                raise ValueError(f"{path}: row {row_id} has a tab or newline inside the field {field!r}")
        lines.append("\t".join(fields) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def image_split_rows(out: Path, split: str, first_id: int, count: int, seed: int, image_size: int,
                     image_format: str) -> Dict[str, List[tuple]]:
    """Writes the split's PNG files; returns the rows (without row ids) of each image task."""
    rows = {task: [] for task in TASK_FILES["image"]}
    for index in range(count):
        rng = item_rng(seed, "image", split, index)
        scene = sample_scene(rng, image_size)
        image_id = first_id + index
        relative = f"{MEDIA_DIRS['image']}/{image_id:06d}.png"
        data = png_bytes(render_scene(scene))
        (out / relative).write_bytes(data)
        image = relative if image_format == "path" else base64.b64encode(data).decode("ascii")
        objects = "&&".join(object_names(scene))
        captions = captions_for_scene(scene)
        rows["caption"] += [(image_id, text, objects, image) for text in caption_fields(captions, split)]
        rows["vqa"] += [(image_id, question, format_answers(answers), objects, image)
                        for question, answers in questions_for_scene(scene, rng)]
        rows["refcoco"] += [(image_id, text, format_box(box_of(shape)), image)
                            for shape in scene.shapes for text in referring_expressions(shape)]
        premise = pick(rng, captions)
        rows["snli_ve"] += [(image_id, image, hypothesis, premise, label)
                            for hypothesis, label in hypotheses_for_scene(scene, rng)]
    return rows


def video_split_rows(out: Path, split: str, first_id: int, count: int, seed: int, frame_size: int,
                     num_frames: int, fps: int) -> Dict[str, List[tuple]]:
    rows = {task: [] for task in TASK_FILES["video"]}
    for index in range(count):
        clip = sample_clip(item_rng(seed, "video", split, index), frame_size, num_frames)
        video_id = first_id + index
        relative = f"{MEDIA_DIRS['video']}/{video_id:06d}.mp4"
        write_mp4(render_clip(clip), out / relative, fps)
        rows["video_caption"] += [(video_id, text, "-", relative)
                                  for text in caption_fields(captions_for_clip(clip), split)]
        rows["video_vqa"] += [(video_id, question, format_answers(answers), "-", relative)
                              for question, answers in questions_for_clip(clip)]
    return rows


def audio_split_rows(out: Path, split: str, first_id: int, count: int, seed: int,
                     sample_rate: int) -> Dict[str, List[tuple]]:
    rows = {task: [] for task in TASK_FILES["audio"]}
    for index in range(count):
        sound = sample_sound(item_rng(seed, "audio", split, index))
        audio_id = first_id + index
        relative = f"{MEDIA_DIRS['audio']}/{audio_id:06d}.wav"
        write_wav(synthesize_sound(sound, sample_rate), out / relative, sample_rate)
        rows["audio_caption"] += [(audio_id, text, "-", relative)
                                  for text in caption_fields(captions_for_sound(sound), split)]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The output folder


def corpus_file_names() -> List[str]:
    """Every top-level file a corpus may hold, whatever its modalities."""
    names = [f"{task}_{split}.tsv" for tasks in TASK_FILES.values() for task in tasks for split in SPLITS]
    return names + [ANSWERS, MANIFEST]


def is_demo_corpus(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR


def prepare_output_dir(out_dir: Union[str, Path]) -> Path:
    """An empty folder, or a previous demo corpus with its files removed; anything else is refused."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not is_demo_corpus(out):
            raise FileExistsError(f"{out} is not empty and is not a demo corpus (no {MANIFEST} from {GENERATOR}); "
                                  "refusing to write into it")
        # Only what a corpus writes is removed: anything else the user put there stays.
        for media in MEDIA_DIRS.values():
            if (out / media).is_dir():
                shutil.rmtree(out / media)
        for name in corpus_file_names():
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def checked_counts(name: str, counts: Sequence[int]) -> Tuple[int, int, int]:
    values = tuple(counts)
    if len(values) != len(SPLITS) or any(int(v) != v or v < 0 for v in values):
        raise ValueError(f"{name} must be three non-negative integers (train, valid, test), got {counts!r}")
    return tuple(int(v) for v in values)


def check_settings(seed, image_size, image_format, sample_rate, modalities, video_size, video_frames, fps) -> None:
    """Raises ValueError naming the first bad setting."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    # The highest synthetic pitch is 3 kHz; below 8 kHz it would alias.
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown} (expected some of {MODALITIES})")
    if video_size < 16 or video_size % 2:
        raise ValueError(f"video_size must be even and at least 16 (yuv420p), got {video_size}")
    if video_frames < 2 or fps <= 0:
        raise ValueError(f"video_frames must be at least 2 and fps positive, got {video_frames} and {fps}")


def write_demo_corpus(out_dir: Union[str, Path], seed: int = 0,
                      num_images: Sequence[int] = DEFAULT_NUM_IMAGES,
                      num_videos: Sequence[int] = DEFAULT_NUM_VIDEOS,
                      num_audios: Sequence[int] = DEFAULT_NUM_AUDIOS,
                      image_size: int = DEFAULT_IMAGE_SIZE, image_format: str = "base64",
                      sample_rate: int = DEFAULT_SAMPLE_RATE, modalities: Sequence[str] = MODALITIES,
                      progress: Optional[Callable[[str], None]] = None,
                      video_size: int = DEFAULT_VIDEO_SIZE, video_frames: int = DEFAULT_VIDEO_FRAMES,
                      fps: int = DEFAULT_FPS) -> dict:
    """Writes the corpus into ``out_dir`` (empty, new, or a previous demo corpus) and returns its manifest.

    The same arguments give byte-identical files. Media paths in the TSVs are relative to ``out_dir``.
    ``progress``, when given, is called with a short message after each split of each modality.
    """
    check_settings(seed, image_size, image_format, sample_rate, modalities, video_size, video_frames, fps)
    sizes = {"image": checked_counts("num_images", num_images), "video": checked_counts("num_videos", num_videos),
             "audio": checked_counts("num_audios", num_audios)}
    modalities = [m for m in MODALITIES if m in modalities]
    out = prepare_output_dir(out_dir)
    manifest = {"generator": GENERATOR, "version": GENERATOR_VERSION, "complete": False, "seed": int(seed),
                "modalities": modalities, "image_size": image_size, "image_format": image_format,
                "video_size": video_size, "video_frames": video_frames, "fps": fps, "sample_rate": sample_rate,
                "items": {m: dict(zip(SPLITS, sizes[m])) for m in modalities}, "counts": {}}
    # Written first so that an interrupted run still leaves a folder the next run may overwrite.
    write_manifest(out, manifest)
    answers = set()
    for modality in modalities:
        (out / MEDIA_DIRS[modality]).mkdir()
        first_id = 0
        for split, count in zip(SPLITS, sizes[modality]):
            rows = modality_split_rows(out, modality, split, first_id, count, seed, image_size, image_format,
                                       sample_rate, video_size, video_frames, fps)
            first_id += count
            for task, task_rows in rows.items():
                manifest["counts"][f"{task}_{split}.tsv"] = write_tsv(out / f"{task}_{split}.tsv", task_rows)
                if task in ("vqa", "video_vqa"):
                    answers.update(answer for row in task_rows for _, answer in parse_answers(row[2]))
            if progress is not None:
                progress(f"{modality} {split}: {count} items")
    (out / ANSWERS).write_text("".join(f"{answer}\n" for answer in sorted(answers)), encoding="utf-8")
    manifest["counts"][ANSWERS] = len(answers)
    manifest["complete"] = True
    write_manifest(out, manifest)
    return manifest


def modality_split_rows(out, modality, split, first_id, count, seed, image_size, image_format, sample_rate,
                        video_size, video_frames, fps) -> Dict[str, List[tuple]]:
    if modality == "image":
        return image_split_rows(out, split, first_id, count, seed, image_size, image_format)
    if modality == "video":
        return video_split_rows(out, split, first_id, count, seed, video_size, video_frames, fps)
    return audio_split_rows(out, split, first_id, count, seed, sample_rate)


def write_manifest(out: Path, manifest: dict) -> None:
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
