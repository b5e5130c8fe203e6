"""Tests of video loading: frame sampling, decoding with decord and with PyAV, the errors of broken files,
and the clip transform."""
import subprocess
import sys
import types

import av
import numpy as np
import pytest
import torch

from unival.data_utils import video
from unival.data_utils.media import MediaError
from unival.data_utils.video import load_video, sample_frame_indices, video_transform

SOURCE = "videos.tsv:7"
NUM_TEST_FRAMES = 20
COLOUR_STEP = 11  # frame i is a flat colour whose red is 12 + 11 * i: far apart, within codec error of 4


def frame_colour(index):
    return (12 + COLOUR_STEP * index, 230 - COLOUR_STEP * index, 70 + 5 * index)


def write_video(path, num_frames=NUM_TEST_FRAMES, size=32, container_format="mp4", codec="libx264", options=None):
    with av.open(str(path), mode="w", format=container_format, options=options or {}) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        if codec == "libx264":
            stream.codec_context.options = {"preset": "veryfast", "crf": "12", "bframes": "0"}
        container.start_encoding()
        for index in range(num_frames):
            pixels = np.full((size, size, 3), frame_colour(index), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def frame_indices_of(frames):
    """The test-video frame each decoded frame shows, checking that its colour matches within codec error."""
    indices = []
    for frame in frames:
        mean = frame.reshape(-1, 3).mean(axis=0)
        index = int(round((mean[0] - 12) / COLOUR_STEP))
        assert np.abs(mean - frame_colour(index)).max() < 4, (mean, frame_colour(index))
        assert np.abs(frame.astype(int) - frame.reshape(-1, 3).mean(axis=0)).max() < 6  # still flat
        indices.append(index)
    return indices


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "colours.mp4")
    write_video(folder / "short.mp4", num_frames=3)
    return folder


@pytest.fixture(params=["decord", "pyav"])
def backend(request, monkeypatch):
    """Runs a test with decord (when installed) and again with PyAV alone, as when decord is missing."""
    if request.param == "decord":
        pytest.importorskip("decord")
    else:
        monkeypatch.setattr(video, "decord", None)
    return request.param


def test_evaluation_takes_the_middle_of_each_segment():
    assert sample_frame_indices(20, 4, train=False) == [2, 7, 12, 17]
    assert sample_frame_indices(10, 5, train=False) == [1, 3, 5, 7, 9]
    assert sample_frame_indices(16, 8, train=False) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_frame_indices(7, 1, train=False) == [3]


def test_training_takes_a_seeded_random_frame_inside_each_segment():
    draws = [sample_frame_indices(20, 4, train=True, rng=np.random.default_rng(seed)) for seed in range(40)]
    for indices in draws:
        assert [index // 5 for index in indices] == [0, 1, 2, 3]
    assert len({tuple(indices) for indices in draws}) > 10
    assert sample_frame_indices(20, 4, True, np.random.default_rng(3)) == draws[3]
    np.random.seed(5)
    global_draw = sample_frame_indices(20, 4, train=True)
    np.random.seed(5)
    assert sample_frame_indices(20, 4, train=True) == global_draw


def test_short_video_repeats_its_frames_in_order():
    assert sample_frame_indices(3, 6, train=False) == [0, 0, 1, 1, 2, 2]
    assert sample_frame_indices(3, 6, train=True, rng=np.random.default_rng(0)) == [0, 0, 1, 1, 2, 2]
    assert sample_frame_indices(2, 3, train=False) == [0, 1, 1]
    assert sample_frame_indices(1, 4, train=False) == [0, 0, 0, 0]


def test_a_video_without_frames_has_nothing_to_sample():
    with pytest.raises(ValueError, match="0 frames"):
        sample_frame_indices(0, 4, train=False)


def test_decodes_the_sampled_frames(video_dir, backend):
    frames = load_video("colours.mp4", str(video_dir), num_frames=4, train=False, source=SOURCE)
    assert frames.dtype == np.uint8 and frames.shape == (4, 32, 32, 3)
    assert frame_indices_of(frames) == [2, 7, 12, 17]


def test_decodes_seeded_training_samples(video_dir, backend):
    frames = load_video(str(video_dir / "colours.mp4"), num_frames=5, train=True, rng=np.random.default_rng(11))
    assert frame_indices_of(frames) == sample_frame_indices(20, 5, True, np.random.default_rng(11))


def test_decodes_a_short_video_repeating_frames(video_dir, backend):
    frames = load_video("short.mp4", str(video_dir), num_frames=6, train=False)
    assert frame_indices_of(frames) == [0, 0, 1, 1, 2, 2]


def test_pyav_is_used_when_decord_cannot_open_the_file(video_dir, monkeypatch):
    def refuse(path, num_threads):
        raise RuntimeError(f"Error reading {path}...")
    monkeypatch.setattr(video, "decord", types.SimpleNamespace(VideoReader=refuse))
    frames = load_video("colours.mp4", str(video_dir), num_frames=4, train=False)
    assert frame_indices_of(frames) == [2, 7, 12, 17]


def broken_file(folder, kind):
    """A file in ``folder`` that is not a loadable video, and the words its error must contain."""
    if kind == "missing":
        return folder / "absent.mp4", "video file not found"
    if kind == "zero_bytes":
        (folder / "zero.mp4").write_bytes(b"")
        return folder / "zero.mp4", "empty video file (0 bytes)"
    if kind == "not_a_video":
        (folder / "notes.mp4").write_text("these are notes, not a video\n" * 20)
        return folder / "notes.mp4", "not a readable video"
    if kind == "truncated":  # index at the end: cutting loses it
        data = write_video(folder / "full.mp4").read_bytes()
        (folder / "cut.mp4").write_bytes(data[:len(data) // 2])
        return folder / "cut.mp4", "not a readable video"
    if kind == "truncated_faststart":  # index first: the file opens, the frames it lists are gone
        data = write_video(folder / "full.mp4", options={"movflags": "faststart"}).read_bytes()
        (folder / "cut.mp4").write_bytes(data[:len(data) // 2])
        return folder / "cut.mp4", "not a readable video"
    if kind == "no_frames":
        write_video(folder / "empty.avi", num_frames=0, container_format="avi", codec="mpeg4")
        return folder / "empty.avi", "0 frames"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "zero_bytes", "not_a_video", "truncated", "truncated_faststart",
                                  "no_frames"])
def test_broken_files_raise_naming_row_and_path(tmp_path, kind, backend):
    path, reason = broken_file(tmp_path, kind)
    with pytest.raises(MediaError) as caught:
        load_video(path.name, str(tmp_path), num_frames=4, train=False, source=SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: ")
    assert str(path) in message and reason in message


def test_a_still_image_is_not_a_video(tmp_path):
    """Both decoders read a JPEG as a one-frame video: an image task's file given to a video task trained on
    copies of one frame."""
    from PIL import Image
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "photo.JPG")
    with pytest.raises(MediaError, match=f"^{SOURCE}: a still image, not a video: .*photo.JPG"):
        load_video("photo.JPG", str(tmp_path), num_frames=4, source=SOURCE)


def test_pyav_reports_frames_missing_from_a_truncated_avi(tmp_path, monkeypatch):
    # The AVI header declares 20 frames; the last tenth of the file, with the last frames, is cut away.
    # (decord indexes such a file by the frames present and samples among those.)
    monkeypatch.setattr(video, "decord", None)
    data = write_video(tmp_path / "full.avi", container_format="avi", codec="mpeg4").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:len(data) * 9 // 10])
    with pytest.raises(MediaError, match=f"^{SOURCE}: not a readable video: .*cut.avi .*of the 20 frames the file "
                                         "declares decode"):
        load_video("cut.avi", str(tmp_path), num_frames=4, train=False, source=SOURCE)


def test_empty_field_and_bad_frame_count_raise(video_dir):
    with pytest.raises(MediaError, match=f"^{SOURCE}: empty video field"):
        load_video("  ", num_frames=4, source=SOURCE)
    with pytest.raises(ValueError, match="cannot sample 0 frames") as caught:
        load_video("colours.mp4", str(video_dir), num_frames=0, source=SOURCE)
    assert not isinstance(caught.value, MediaError)


def flat_frames(colour, num_frames=3, height=40, width=60):
    return np.full((num_frames, height, width, 3), colour, dtype=np.uint8)


def test_eval_transform_is_deterministic_with_normalised_values():
    transform = video_transform(32, train=False)
    frames = np.random.default_rng(0).integers(0, 256, (4, 40, 60, 3), dtype=np.uint8)
    clip = transform(frames)
    assert clip.dtype == torch.float32 and clip.shape == (3, 4, 32, 32)
    assert clip.min() >= -1 and clip.max() <= 1
    assert torch.equal(clip, transform(frames))
    flat = transform(flat_frames((255, 0, 51)))
    torch.testing.assert_close(flat[:, 0, 5, 5], torch.tensor([1.0, -1.0, -0.6]))


def test_eval_transform_resizes_before_cropping():
    frames = flat_frames((0, 0, 0), height=64, width=96)
    frames[:, :8] = 255  # a band across the top eighth of the frame
    clip = video_transform(32, train=False)(frames)
    assert torch.allclose(clip[:, :, 0], torch.ones(1)) and torch.allclose(clip[:, :, -1], -torch.ones(1))
    assert 3 <= int((clip[0, 0, :, 16] > 0).sum()) <= 5  # 8 of 64 rows -> 4 of 32: the whole height is kept


def test_train_transform_crops_every_frame_alike_and_follows_the_torch_seed():
    frames = np.repeat(np.random.default_rng(1).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8), 3, axis=0)
    transform = video_transform(24, train=True)
    outputs = []
    for seed in (0, 1, 2, 0):
        torch.manual_seed(seed)
        outputs.append(transform(frames))
    clip = outputs[0]
    assert clip.shape == (3, 3, 24, 24) and clip.min() >= -1 and clip.max() <= 1
    assert torch.equal(clip[:, 0], clip[:, 1]) and torch.equal(clip[:, 0], clip[:, 2])
    assert torch.equal(outputs[0], outputs[3])
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])


def test_train_transform_flips_only_when_asked():
    frames = flat_frames((255, 0, 0), height=32, width=32)
    frames[:, :, 16:] = (0, 0, 255)  # red left half, blue right half

    def red_on_left(flip):
        clip = video_transform(16, train=True, flip=flip)(frames)
        return bool(clip[0, 0, 8, 0] > clip[2, 0, 8, 0])
    torch.manual_seed(0)
    assert all(red_on_left(flip=False) for _ in range(10))
    sides = {red_on_left(flip=True) for _ in range(20)}
    assert sides == {True, False}


def test_importing_unival_leaves_the_video_decoders_unloaded():
    # decord and PyAV are imported at the first video read (30 MB resident that image-only processes never need)
    code = "import sys, unival, unival.tasks; print(sorted({'av', 'decord'} & set(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip().splitlines()[-1] == "[]"
