"""Tests of the demo corpus generator: determinism, the TSV layouts, and media that match their text."""
import base64
import io
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from unival import cli
from unival.data_utils import demo_corpus as dc

TINY = dict(num_images=(6, 3, 3), num_videos=(6, 2, 2), num_audios=(8, 3, 3), image_size=64, video_size=32,
            video_frames=8)
COLUMNS = {"caption": 5, "vqa": 6, "refcoco": 5, "snli_ve": 6, "video_caption": 5, "video_vqa": 6,
           "audio_caption": 5}
WORDS = re.compile(r"^[a-z]+( [a-z]+)*$")


def read_rows(path: Path):
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [line.split("\t") for line in text[:-1].split("\n")] if text[:-1] else []


def all_files(folder: Path):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def decode_image(field: str, root: Path, image_format: str) -> np.ndarray:
    data = (root / field).read_bytes() if image_format == "path" else base64.b64decode(field, validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def shape_mask(image: np.ndarray, colour: str) -> np.ndarray:
    return np.all(image == np.array(dc.COLOURS[colour]), axis=-1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    manifest = dc.write_demo_corpus(out, seed=3, **TINY)
    return out, manifest


# ---------------------------------------------------------------------------------------------------------------
# Pure functions


@pytest.mark.parametrize("index", range(60))
def test_box_is_the_tight_box_of_the_rendered_shape(index):
    scene = dc.sample_scene(np.random.default_rng(index), image_size=128 if index % 2 else 48)
    image = np.asarray(dc.render_scene(scene))
    assert image.shape == (scene.image_size, scene.image_size, 3)
    for shape in scene.shapes:
        x0, y0, x1, y1 = dc.box_of(shape)
        assert 0 <= x0 < x1 <= scene.image_size and 0 <= y0 < y1 <= scene.image_size
        rows, cols = np.nonzero(shape_mask(image, shape.colour))
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)
        assert tuple(image[(y0 + y1) // 2, (x0 + x1) // 2]) == dc.COLOURS[shape.colour]
    # Nothing but the background and the shapes' colours.
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert colours == {dc.BACKGROUND} | {dc.COLOURS[s.colour] for s in scene.shapes}


def test_scene_shapes_differ_in_kind_colour_and_cell():
    for index in range(200):
        shapes = dc.sample_scene(np.random.default_rng(index)).shapes
        assert 1 <= len(shapes) <= 2
        for field in ("kind", "colour", "position"):
            assert len({getattr(s, field) for s in shapes}) == len(shapes)


def test_captions_name_every_shape_and_nothing_else():
    for index in range(100):
        scene = dc.sample_scene(np.random.default_rng(index))
        captions = dc.captions_for_scene(scene)
        assert len(captions) == len(set(captions)) == 5
        named = {s.colour for s in scene.shapes} | {s.kind for s in scene.shapes}
        for caption in captions:
            assert WORDS.match(caption), caption
            words = set(caption.split())
            assert named <= words
            assert not (words & (set(dc.COLOURS) | set(dc.SHAPES))) - named


def test_caption_positions_follow_the_grid():
    shape = dc.Shape("circle", "red", "large", "left", cx=21, cy=64, radius=16)
    captions = dc.captions_for_scene(dc.Scene(128, (shape,)))
    assert captions[0] == "a red circle on the left"
    assert captions[1] == "a large red circle on the left of the image"
    assert dc.position_phrase("center") == "in the center"
    assert dc.position_phrase("top right") == "at the top right"


def test_questions_answer_from_the_scene():
    red = dc.Shape("circle", "red", "small", "left", cx=21, cy=64, radius=8)
    blue = dc.Shape("square", "blue", "large", "top right", cx=106, cy=21, radius=16)
    pairs = dict((q, a) for q, a in dc.questions_for_scene(dc.Scene(128, (blue, red)), np.random.default_rng(0)))
    assert pairs["what colour is the circle?"] == [(1.0, "red")]
    assert pairs["what shape is at the top right?"] == [(1.0, "square")]
    assert pairs["where is the red circle?"] == [(1.0, "left")]
    assert pairs["is the square small or large?"] == [(1.0, "large")]
    assert pairs["is there a blue square?"] == [(1.0, "yes")]
    assert pairs["how many shapes are there?"] == [(1.0, "two"), (0.6, "2")]
    absent = [q for q, a in pairs.items() if a == [(1.0, "no")]]
    assert len(absent) == 2
    assert not {"is there a blue square?", "is there a red circle?"} & set(absent)


def test_hypotheses_have_one_of_each_label_and_are_true_or_false_as_labelled():
    for index in range(100):
        rng = np.random.default_rng(index)
        scene = dc.sample_scene(rng)
        hypotheses = dc.hypotheses_for_scene(scene, rng)
        assert [label for _, label in hypotheses] == ["yes", "no", "maybe"]
        colour_of = {s.kind: s.colour for s in scene.shapes}
        for text, label in hypotheses:
            match = re.fullmatch(r"the (circle|square|triangle) is (\w+)", text)
            if match and match.group(2) in dc.COLOURS:
                assert (colour_of[match.group(1)] == match.group(2)) == (label == "yes"), text
            match = re.fullmatch(r"there is a (circle|square|triangle)", text)
            if match:
                assert label == "no" and match.group(1) not in colour_of


def test_answers_round_trip():
    candidates = [(1.0, "two"), (0.6, "2")]
    assert dc.format_answers(candidates) == "1.0|!+two&&0.6|!+2"
    assert dc.parse_answers(dc.format_answers(candidates)) == candidates
    with pytest.raises(ValueError, match="CONFIDENCE"):
        dc.parse_answers("red")


@pytest.mark.parametrize("motion", dc.MOTIONS)
def test_clip_moves_as_its_motion_says(motion):
    rng = np.random.default_rng(0)
    clip = next(c for c in (dc.sample_clip(rng, 64, 8) for _ in range(200)) if c.motion == motion)
    frames = dc.render_clip(clip)
    assert len(frames) == 8 and frames[0].shape == (64, 64, 3)
    masks = [shape_mask(frame, clip.colour) for frame in frames]
    areas = [int(m.sum()) for m in masks]
    centres = [np.argwhere(m).mean(axis=0) for m in masks]  # (row, col)
    delta_row, delta_col = centres[-1] - centres[0]
    expected = {"right": delta_col > 20, "left": delta_col < -20, "down": delta_row > 20, "up": delta_row < -20,
                "grow": areas[-1] > 4 * areas[0], "shrink": areas[0] > 4 * areas[-1]}
    assert expected[motion], (motion, delta_row, delta_col, areas)
    assert dc.questions_for_clip(clip)[0][1] == [(1.0, motion)]


def dominant_hz(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.argmax(spectrum) * sample_rate / len(wave))


def test_sounds_match_their_category():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(120):
        sound = dc.sample_sound(rng)
        wave = dc.synthesize_sound(sound, 16000)
        seen.add(sound.category)
        assert 1.0 <= len(wave) / 16000 <= 2.0 and np.abs(wave).max() <= 1.0
        quarter = len(wave) // 4
        if sound.category == "high_tone":
            assert 1200 <= dominant_hz(wave, 16000) <= 2000
        elif sound.category == "low_tone":
            assert 150 <= dominant_hz(wave, 16000) <= 300
        elif sound.category.endswith("chirp"):
            first, last = dominant_hz(wave[:quarter], 16000), dominant_hz(wave[-quarter:], 16000)
            assert (last > 2 * first) == (sound.category == "rising_chirp")
        elif sound.category in dc.BEEP_COUNTS:
            loud = np.abs(wave) > 0.05
            # Beeps are separated by silent gaps: count the runs of loud windows of 5 ms.
            windows = loud[: len(loud) // 80 * 80].reshape(-1, 80).any(axis=1)
            onsets = int(np.sum(windows[1:] & ~windows[:-1]) + windows[0])
            assert onsets == dc.BEEP_COUNTS[sound.category]
            assert dc.captions_for_sound(sound)[0].split()[0] == dc.NUMBER_WORDS[onsets]
    assert seen == set(dc.SOUND_CATEGORIES)


# ---------------------------------------------------------------------------------------------------------------
# The written corpus


def test_same_seed_same_bytes_other_seed_other_bytes(corpus, tmp_path):
    first, _ = corpus
    dc.write_demo_corpus(tmp_path / "again", seed=3, **TINY)
    dc.write_demo_corpus(tmp_path / "other", seed=4, **TINY)
    reference, again, other = all_files(first), all_files(tmp_path / "again"), all_files(tmp_path / "other")
    assert again == reference
    assert any(name.endswith(".mp4") for name in reference) and any(name.endswith(".wav") for name in reference)
    assert set(other) == set(reference)
    for name in ("caption_train.tsv", "vqa_train.tsv", "images/000000.png", "audios/000000.wav"):
        assert other[name] != reference[name], name


def test_every_file_has_its_columns_and_clean_fields(corpus):
    out, manifest = corpus
    for task, width in COLUMNS.items():
        for split in dc.SPLITS:
            rows = read_rows(out / f"{task}_{split}.tsv")
            assert len(rows) == manifest["counts"][f"{task}_{split}.tsv"] > 0
            assert [row[0] for row in rows] == [str(i) for i in range(len(rows))]
            for row in rows:
                assert len(row) == width and all("\r" not in field for field in row), (task, row[:4])
    assert set(manifest["counts"]) == set(dc.corpus_file_names()) - {dc.MANIFEST}
    assert json.loads((out / dc.MANIFEST).read_text()) == manifest
    assert manifest["complete"] and manifest["seed"] == 3 and manifest["sample_rate"] == 16000


def test_caption_rows_per_split(corpus):
    out, _ = corpus
    train = read_rows(out / "caption_train.tsv")
    assert len(train) == 5 * TINY["num_images"][0]
    for split in ("valid", "test"):
        rows = read_rows(out / f"caption_{split}.tsv")
        assert len(rows) == len({row[1] for row in rows}) == TINY["num_images"][dc.SPLITS.index(split)]
        assert all(len(row[2].split("&&")) == 5 for row in rows)
    for row in train + read_rows(out / "video_caption_train.tsv") + read_rows(out / "audio_caption_train.tsv"):
        assert WORDS.match(row[2]), row[2]


def test_image_columns_decode_to_images_with_the_named_objects(corpus):
    out, _ = corpus
    for row in read_rows(out / "caption_valid.tsv") + read_rows(out / "caption_train.tsv"):
        image = decode_image(row[4], out, "base64")
        assert image.shape == (64, 64, 3)
        assert (out / f"images/{int(row[1]):06d}.png").read_bytes() == base64.b64decode(row[4])
        colours = {tuple(c) for c in image.reshape(-1, 3)} - {dc.BACKGROUND}
        assert colours == {dc.COLOURS[name.split()[0]] for name in row[3].split("&&")}
        for name in row[3].split("&&"):
            assert set(name.split()) <= set(row[2].split("&&")[0].split())


def test_refcoco_boxes_cover_the_described_shape(corpus):
    out, _ = corpus
    rows = read_rows(out / "refcoco_test.tsv")
    for row in rows:
        x0, y0, x1, y1 = (float(v) for v in row[3].split(","))
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        image = decode_image(row[4], out, "base64")
        words = row[2].split()
        colour = next((w for w in words if w in dc.COLOURS), None)
        if colour:
            mask = shape_mask(image, colour)
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        centre = tuple(image[int((y0 + y1) // 2), int((x0 + x1) // 2)])
        assert centre in set(dc.COLOURS.values())


def test_vqa_answers_agree_with_the_pixels(corpus):
    out, _ = corpus
    for row in read_rows(out / "vqa_train.tsv"):
        answers = dc.parse_answers(row[3])
        best = max(answers)[1]
        image = decode_image(row[5], out, "base64")
        present = {tuple(c) for c in image.reshape(-1, 3)} - {dc.BACKGROUND}
        match = re.fullmatch(r"what colour is the (\w+)\?", row[2])
        if match:
            assert dc.COLOURS[best] in present and f"{best} {match.group(1)}" in row[4].split("&&")
        if row[2] == "how many shapes are there?":
            assert best == dc.NUMBER_WORDS[len(present)]
        match = re.fullmatch(r"is there a (\w+) (\w+)\?", row[2])
        if match:
            assert best == ("yes" if " ".join(match.groups()) in row[4].split("&&") else "no")


def test_snli_ve_labels_and_premises(corpus):
    out, _ = corpus
    references = {}
    for row in read_rows(out / "caption_train.tsv"):
        references.setdefault(row[1], set()).add(row[2])
    rows = read_rows(out / "snli_ve_train.tsv")
    assert len(rows) == 3 * TINY["num_images"][0]
    for row in rows:
        assert row[5] in ("yes", "no", "maybe")
        assert row[4] in references[row[1]]
        assert decode_image(row[2], out, "base64").shape == (64, 64, 3)
    assert [row[5] for row in rows[:3]] == ["yes", "no", "maybe"]


def test_videos_decode_to_the_frames_their_questions_describe(corpus):
    out, manifest = corpus
    rows = read_rows(out / "video_vqa_train.tsv") + read_rows(out / "video_vqa_valid.tsv")
    assert {row[5] for row in rows} == {f"videos/{i:06d}.mp4" for i in range(8)}
    for row in rows:
        if not row[2].startswith("what colour"):
            continue
        with av.open(str(out / row[5])) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
            assert float(container.streams.video[0].average_rate) == manifest["fps"] == 8
        assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
        # Lossy (and chroma is subsampled): the mean colour of the pixels far from the background must be
        # nearer to the answer's colour than to any other colour of the palette.
        answer = dc.parse_answers(row[3])[0][1]
        for frame in frames:
            pixels = frame.reshape(-1, 3).astype(float)
            shape = pixels[np.abs(pixels - dc.BACKGROUND).sum(axis=-1) > 90]
            assert len(shape) >= 8
            mean = shape.mean(axis=0)
            nearest = min(dc.COLOURS, key=lambda name: np.abs(mean - dc.COLOURS[name]).sum())
            assert nearest == answer, (row[5], mean)


def test_audio_files_are_pcm16_at_the_rate_and_not_silent(corpus):
    out, _ = corpus
    rows = read_rows(out / "audio_caption_valid.tsv")
    assert len(rows) == 3
    for row in rows:
        info = soundfile.info(str(out / row[4]))
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        wave, rate = soundfile.read(str(out / row[4]), dtype="float32")
        assert 1.0 <= len(wave) / rate <= 2.0 and np.abs(wave).max() > 0.2
        assert len(row[2].split("&&")) == 3


def test_answers_txt_lists_every_answer_once(corpus):
    out, manifest = corpus
    listed = (out / dc.ANSWERS).read_text().splitlines()
    assert listed == sorted(set(listed)) and len(listed) == manifest["counts"][dc.ANSWERS]
    seen = {answer for split in dc.SPLITS for task, column in (("vqa", 3), ("video_vqa", 3))
            for row in read_rows(out / f"{task}_{split}.tsv") for _, answer in dc.parse_answers(row[column])}
    assert seen == set(listed)
    assert {"yes", "no", "red", "circle", "left", "grow", "two"} <= seen


def test_path_format_writes_relative_paths(tmp_path):
    dc.write_demo_corpus(tmp_path, image_format="path", num_images=(2, 1, 1), modalities=("image",), image_size=32)
    for task, column in (("caption", 4), ("vqa", 5), ("refcoco", 4), ("snli_ve", 2)):
        for row in read_rows(tmp_path / f"{task}_valid.tsv"):
            assert re.fullmatch(r"images/\d{6}\.png", row[column])
            assert decode_image(row[column], tmp_path, "path").shape == (32, 32, 3)
    assert not (tmp_path / "videos").exists() and not (tmp_path / "video_caption_train.tsv").exists()


def test_refuses_a_foreign_folder_and_replaces_an_old_corpus(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=str(tmp_path / "foreign")):
        dc.write_demo_corpus(tmp_path / "foreign", num_images=(1, 1, 1), modalities=("image",))
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["notes.txt"]

    old = tmp_path / "old"
    dc.write_demo_corpus(old, num_images=(2, 1, 1), num_audios=(2, 1, 1), modalities=("image", "audio"))
    (old / "notes.txt").write_text("mine")
    manifest = dc.write_demo_corpus(old, seed=1, num_videos=(1, 1, 1), modalities=("video",))
    assert not (old / "audios").exists() and not (old / "images").exists()
    assert not (old / "caption_train.tsv").exists() and not (old / "audio_caption_train.tsv").exists()
    assert (old / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (old / "videos").iterdir()) == ["000000.mp4", "000001.mp4", "000002.mp4"]
    assert manifest["modalities"] == ["video"]


def test_bad_settings_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        dc.write_demo_corpus(tmp_path / "a", image_format="jpeg")
    with pytest.raises(ValueError, match="num_videos"):
        dc.write_demo_corpus(tmp_path / "b", num_videos=(1, 2))
    with pytest.raises(ValueError, match="video_size"):
        dc.write_demo_corpus(tmp_path / "c", video_size=33)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_command_line_writes_and_summarises(tmp_path, capsys):
    out = tmp_path / "cli"
    status = cli.main(["make-demo-data", "--out", str(out), "--seed", "2", "--image-size", "32",
                       "--image-format", "path", "--num-images", "2", "1", "1", "--num-videos", "1", "1", "1",
                       "--num-audios", "2", "1", "1"])
    assert status == 0
    manifest = json.loads((out / dc.MANIFEST).read_text())
    assert manifest["seed"] == 2 and manifest["image_format"] == "path" and manifest["image_size"] == 32
    printed = capsys.readouterr().out
    assert re.search(r"caption_train\.tsv\s+10\b", printed)
    assert re.search(r"audio_caption_train\.tsv\s+6\b", printed)
    # A second run into a foreign folder fails with a message, not a traceback.
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("")
    assert cli.main(["make-demo-data", "--out", str(tmp_path / "foreign")]) == 2
    assert str(tmp_path / "foreign") in capsys.readouterr().err
