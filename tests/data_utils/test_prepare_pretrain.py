"""Tests of `unival prepare pretrain`: the per-task TSV files of the demo corpus turned into the unify task's
pretraining streams, row by row, with errors naming the file and line."""
import base64
import re
from collections import Counter

import pytest

from unival.cli import main
from unival.data_utils.demo_corpus import write_demo_corpus
from unival.data_utils.prepare.common import MediaOptions, MissingMediaError, PrepareError
from unival.data_utils.prepare.pretrain import UNIFY_COLUMNS, UNIFY_TYPES, prepare_pretraining
from unival.data_utils.tsv import TSVReader


def read_rows(path):
    reader = TSVReader(str(path), cache_index=False)
    return [reader.row(index) for index in range(len(reader))]


def input_rows(path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_demo_corpus(folder, seed=5, num_images=(4, 2, 2), num_videos=(2, 1, 1), num_audios=(2, 1, 1))
    return folder


def caption_rows(path, name):
    return [[f"{name}-{row_id}", media, text, "", "", objects, name, "caption"]
            for row_id, _, text, objects, media in input_rows(path)]


def test_the_constants_name_the_columns_and_types():
    assert UNIFY_COLUMNS == ("uniq_id", "media", "caption", "question", "refs", "gt_objects", "dataset_name", "type")
    assert UNIFY_TYPES == ("caption", "qa", "visual_grounding", "video_caption", "video_qa", "audio_caption")


def test_image_stream_rows(corpus, tmp_path):
    inputs = [("caption", corpus / "caption_train.tsv"), ("caption", corpus / "caption_valid.tsv"),
              ("vqa", corpus / "vqa_train.tsv"), ("grounding", corpus / "refcoco_train.tsv")]
    written = prepare_pretraining(tmp_path / "out", "image", "train", inputs)
    rows = read_rows(tmp_path / "out" / "image_train.tsv")
    questions = [[f"vqa_train-{qid}", media, "", question, answers, objects, "vqa_train", "qa"]
                 for qid, _, question, answers, objects, media in input_rows(corpus / "vqa_train.tsv")]
    regions = [[f"refcoco_train-{row_id}", media, text, "", box, "", "refcoco_train", "visual_grounding"]
               for row_id, _, text, box, media in input_rows(corpus / "refcoco_train.tsv")]
    captions = caption_rows(corpus / "caption_train.tsv", "caption_train")
    references = caption_rows(corpus / "caption_valid.tsv", "caption_valid")
    assert rows == captions + references + questions + regions
    # the demo files hold what the test means to cover: objects, captions joined by &&, base64 images
    assert len(captions) == 20 and len(references) == 2 and len(regions) >= 16 and len(questions) >= 28
    assert "&&" in references[0][2] and captions[0][5] and captions[0][1].startswith("iVBOR")
    assert len({row[0] for row in rows}) == len(rows)
    assert Counter(row[7] for row in rows) == {"caption": 22, "qa": len(questions),
                                               "visual_grounding": len(regions)}
    assert [(w.path, w.rows, w.notes) for w in written] == [
        (tmp_path / "out" / "image_train.tsv", len(rows),
         [f"22 caption, {len(questions)} qa, {len(regions)} visual_grounding"])]


def test_video_and_audio_stream_rows(corpus, tmp_path):
    inputs = [("video-caption", corpus / "video_caption_train.tsv"), ("video-qa", corpus / "video_vqa_train.tsv"),
              ("audio-caption", corpus / "audio_caption_train.tsv"), ("caption", corpus / "caption_test.tsv")]
    written = prepare_pretraining(tmp_path, "video_audio", "valid", inputs)
    rows = read_rows(tmp_path / "video_audio_valid.tsv")
    videos = [[f"video_caption_train-{row_id}", media, text, "", "", "", "video_caption_train", "video_caption"]
              for row_id, _, text, _, media in input_rows(corpus / "video_caption_train.tsv")]
    questions = [[f"video_vqa_train-{qid}", media, "", question, answers, "", "video_vqa_train", "video_qa"]
                 for qid, _, question, answers, _, media in input_rows(corpus / "video_vqa_train.tsv")]
    sounds = [[f"audio_caption_train-{row_id}", media, text, "", "", "", "audio_caption_train", "audio_caption"]
              for row_id, _, text, _, media in input_rows(corpus / "audio_caption_train.tsv")]
    images = caption_rows(corpus / "caption_test.tsv", "caption_test")
    assert rows == videos + questions + sounds + images
    assert videos[0][1] == "videos/000000.mp4" and sounds[0][1] == "audios/000000.wav"
    assert len({row[0] for row in rows}) == len(rows)
    assert written[0].notes == [f"{len(images)} caption, {len(videos)} video_caption, {len(questions)} video_qa, "
                                f"{len(sounds)} audio_caption"]


def test_questions_without_answers_are_left_out_and_counted(corpus, tmp_path):
    lines = []
    for number, fields in enumerate(input_rows(corpus / "vqa_test.tsv")):
        if number % 3 == 0:
            fields[3] = ""
        lines.append("\t".join(fields))
    test_file = write_lines(tmp_path / "vqa_test.tsv", lines)
    written = prepare_pretraining(tmp_path, "image", "train", [("vqa", test_file)])
    rows = read_rows(tmp_path / "image_train.tsv")
    answered = [fields for fields in input_rows(test_file) if fields[3]]
    left_out = len(lines) - len(answered)
    assert left_out >= 5 and [row[0] for row in rows] == [f"vqa_test-{fields[0]}" for fields in answered]
    assert all(row[4] for row in rows)
    assert written[0].rows == len(answered)
    assert written[0].notes == [f"{len(answered)} qa", f"{left_out} questions without answers left out"]


def test_a_stream_left_without_rows_is_written_with_a_warning_and_an_empty_input_is_an_error(tmp_path, capsys):
    unanswered = write_lines(tmp_path / "vqa_test.tsv", ["7\t1\tis it red?\t\t\timages/1.png"])
    out = tmp_path / "out"
    assert main(["prepare", "pretrain", "--stream", "image", "--split", "test", "--out", str(out),
                 "--vqa", str(unanswered)]) == 0
    output, warnings = capsys.readouterr()
    assert output == f"wrote {out / 'image_test.tsv'}: 0 rows (1 question without answers left out)\n"
    assert warnings == (f"unival prepare pretrain: warning: {out / 'image_test.tsv'} holds no rows: 1 question "
                        "without answers left out\n")
    empty = write_lines(tmp_path / "caption_train.tsv", ["", "  "])
    assert main(["prepare", "pretrain", "--stream", "image", "--out", str(out), "--caption", str(empty)]) == 2
    assert capsys.readouterr().err == (f"unival prepare pretrain: error: {empty}: no rows in the file: nothing to "
                                       "convert\n")
    assert not (out / "image_train.tsv").exists()


GOOD_ROWS = {"caption": "0\t7\ta dog\t\timages/7.png", "vqa": "0\t7\tis it red?\t1.0|!+yes\t\timages/7.png",
             "grounding": "0\t7\tthe dog\t1,2,30,40\timages/7.png", "video-caption": "0\t3\ta man\t-\tvideos/3.mp4"}


@pytest.mark.parametrize("kind, line, message", [
    ("grounding", "1\t7\tthe cat\t1,2,30\timages/7.png", "box '1,2,30': expected four comma-separated numbers"),
    ("grounding", "1\t7\tthe cat\t30,2,1,40\timages/7.png", "box '30,2,1,40': expected finite corners"),
    ("grounding", "1\t7\t \t1,2,30,40\timages/7.png", "empty text"),
    ("caption", "1\t7\ta cat\timages/7.png", "expected the 5 columns id, image-id, caption, objects, image, got 4"),
    ("caption", "1\t7\t&&\t\timages/7.png", "empty caption '&&'"),
    ("caption", "1\t7\ta cat\t\t", "empty image field"),
    ("vqa", "1\t7\t\t1.0|!+no\t\timages/7.png", "empty question"),
    ("vqa", "1\t7\tis it red?\tno\t\timages/7.png", "bad answer candidate 'no'"),
    ("video-caption", "0\t3\ta woman\t-\tvideos/4.mp4", "id '0' repeats"),
])
def test_a_bad_row_is_an_error_naming_file_and_line_and_nothing_is_written(kind, line, message, corpus, tmp_path):
    bad = write_lines(tmp_path / f"{kind}_bad.tsv", [GOOD_ROWS[kind], line])
    inputs = [("caption", corpus / "caption_train.tsv"), (kind, bad)]
    with pytest.raises(PrepareError, match=re.escape(f"{bad}:2: {message}")):
        prepare_pretraining(tmp_path / "out", "image", "train", inputs)
    assert not (tmp_path / "out" / "image_train.tsv").exists()


def test_a_missing_input_is_an_error_before_anything_is_written(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'vqa_train.tsv'} not found (--vqa)")):
        prepare_pretraining(tmp_path / "out", "image", "train",
                            [("caption", corpus / "caption_train.tsv"), ("vqa", tmp_path / "vqa_train.tsv")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stream, split, inputs, message", [
    ("image-1", "train", [("caption", "caption_train.tsv")], "--stream must be letters, digits and underscores"),
    ("image", "", [("caption", "caption_train.tsv")], "--split must be letters, digits and underscores"),
    ("image", "train", [], "no input files: give one or more of --caption, --vqa"),
    ("image", "train", [("captions", "caption_train.tsv")], "unknown input kind 'captions'"),
    ("image", "train", [("caption", "caption_train.tsv"), ("caption", "images/../caption_train.tsv")],
     "have the same name 'caption_train'"),
])
def test_bad_options_are_errors(stream, split, inputs, message, corpus, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_pretraining(tmp_path, stream, split, [(kind, corpus / path) for kind, path in inputs])
    assert list(tmp_path.iterdir()) == []


def test_two_inputs_of_one_name_are_refused_with_a_way_out(corpus, tmp_path):
    audiocaps, clotho = (tmp_path / dataset / "audio_caption_train.tsv" for dataset in ("audiocaps", "clotho"))
    for path in (audiocaps, clotho):
        path.parent.mkdir()
        path.write_bytes((corpus / "audio_caption_train.tsv").read_bytes())
    with pytest.raises(ValueError) as error:
        prepare_pretraining(tmp_path / "out", "audio", "train",
                            [("audio-caption", audiocaps), ("audio-caption", clotho)])
    link = tmp_path / "clotho" / "clotho_audio_caption_train.tsv"
    assert str(error.value) == (
        f"{audiocaps} and {clotho} have the same name 'audio_caption_train': it is the dataset name and id prefix of "
        f"their rows, so it must differ. Give one of them a name of its own by linking (or copying) it, e.g. "
        f"ln -s audio_caption_train.tsv {link}, and pass the new name")
    link.symlink_to("audio_caption_train.tsv")  # what the message says to do
    prepare_pretraining(tmp_path / "out", "audio", "train", [("audio-caption", audiocaps), ("audio-caption", link)])
    names = Counter(row[6] for row in read_rows(tmp_path / "out" / "audio_train.tsv"))
    clips = len(input_rows(audiocaps))
    assert clips and names == {"audio_caption_train": clips, "clotho_audio_caption_train": clips}


# ---------------------------------------------------------------------------------------------------------------
# Media


def test_media_prefix_puts_each_inputs_paths_under_one_media_folder(corpus, tmp_path):
    root = tmp_path / "datasets"
    (root / "msrvtt" / "videos").mkdir(parents=True)
    (root / "msrvtt" / "videos" / "000000.mp4").write_bytes(b"mp4")
    (root / "clotho" / "development").mkdir(parents=True)
    (root / "clotho" / "development" / "a.wav").write_bytes(b"RIFF")
    (root / "clotho" / "development" / "b.wav").write_bytes(b"")
    encoded = input_rows(corpus / "caption_train.tsv")[0][4]
    images = write_lines(tmp_path / "images.tsv", ["0\t0\ta shape\t\t/abs/images/1.png",
                                                   f"1\t0\tthe same as base64\t\t{encoded}"])
    clips = write_lines(tmp_path / "clips.tsv", ["0\t0\ta clip\t-\tvideos/000000.mp4"])
    sounds = write_lines(tmp_path / "sounds.tsv", ["0\ta.wav\ta bird\t-\tdevelopment/a.wav",
                                                   "1\tb.wav\train\t-\tdevelopment/b.wav"])
    inputs = [("caption", images, "coco"), ("video-caption", clips, "msrvtt/"), ("audio-caption", sounds, "clotho")]
    written = prepare_pretraining(tmp_path, "mixed", "train", inputs)
    assert [row[1] for row in read_rows(tmp_path / "mixed_train.tsv")] == [
        "/abs/images/1.png", encoded, "msrvtt/videos/000000.mp4", "clotho/development/a.wav",
        "clotho/development/b.wav"]
    # checked under the one folder that holds the prefixes; b.wav is empty
    written = prepare_pretraining(tmp_path, "mixed", "train", inputs[1:],
                                  MediaOptions(str(root), skip_missing=True))
    assert [row[1] for row in read_rows(tmp_path / "mixed_train.tsv")] == [
        "msrvtt/videos/000000.mp4", "clotho/development/a.wav"]
    assert written[0].notes == ["1 video_caption, 1 audio_caption", "1 row skipped: 1 media file empty"]


def test_media_prefix_on_the_command_line_applies_to_the_inputs_after_it(corpus, tmp_path, capsys):
    clips = write_lines(tmp_path / "clips.tsv", ["0\t0\ta clip\t-\tvideos/000000.mp4"])
    sounds = write_lines(tmp_path / "sounds.tsv", ["0\t0\ta bird\t-\ta.wav"])
    more = write_lines(tmp_path / "more.tsv", ["0\t0\train\t-\tb.wav"])
    last = write_lines(tmp_path / "last.tsv", ["0\t0\twind\t-\tc.wav"])
    command = ["prepare", "pretrain", "--stream", "mixed", "--out", str(tmp_path / "out"),
               "--video-caption", str(clips), "--media-prefix", "audiocaps", "--audio-caption", str(sounds),
               str(more), "--media-prefix", "", "--audio-caption", str(last)]
    assert main(command) == 0
    assert [row[1] for row in read_rows(tmp_path / "out" / "mixed_train.tsv")] == [
        "videos/000000.mp4", "audiocaps/a.wav", "audiocaps/b.wav", "c.wav"]
    capsys.readouterr()
    assert main(command + ["--media-prefix", "clotho"]) == 2
    assert capsys.readouterr().err == ("unival prepare pretrain: error: --media-prefix 'clotho' comes after the last "
                                       "input: it applies to the inputs named after it\n")
    assert main(command[:6] + ["--media-prefix", "a", "--media-prefix", "b", "--video-caption", str(clips)]) == 2
    assert "--media-prefix 'a' is followed by another --media-prefix before any input" in capsys.readouterr().err


def test_check_media_passes_base64_images_and_checks_paths(corpus, tmp_path):
    missing_video = write_lines(tmp_path / "clips.tsv", ["0\t0\ta clip\t-\tvideos/000000.mp4",
                                                         "1\t9\tanother clip\t-\tvideos/000009.mp4"])
    inputs = [("caption", corpus / "caption_valid.tsv"), ("video-caption", missing_video)]
    with pytest.raises(MissingMediaError, match=re.escape(f"{missing_video}: 1 media file not found under "
                                                          f"{corpus} (1 row), e.g. videos/000009.mp4")):
        prepare_pretraining(tmp_path / "out", "mixed", "train", inputs, MediaOptions(str(corpus), check=True))
    assert not (tmp_path / "out" / "mixed_train.tsv").exists()
    written = prepare_pretraining(tmp_path / "out", "mixed", "train", inputs,
                                  MediaOptions(str(corpus), skip_missing=True))
    rows = read_rows(tmp_path / "out" / "mixed_train.tsv")
    assert rows == caption_rows(corpus / "caption_valid.tsv", "caption_valid") + [
        ["clips-0", "videos/000000.mp4", "a clip", "", "", "", "clips", "video_caption"]]
    assert written[0].notes == ["2 caption, 1 video_caption", "1 row skipped: 1 media file missing"]


def test_embed_images_embeds_image_paths_only(corpus, tmp_path):
    encoded = input_rows(corpus / "caption_train.tsv")[0][4]
    images = write_lines(tmp_path / "images.tsv", ["0\t0\ta shape\t\timages/000001.png",
                                                   f"1\t0\tthe same as base64\t\t{encoded}"])
    clips = write_lines(tmp_path / "clips.tsv", ["0\t0\ta clip\t-\tvideos/000000.mp4"])
    prepare_pretraining(tmp_path, "mixed", "train", [("caption", images), ("video-caption", clips)],
                        MediaOptions(str(corpus), embed=True))
    rows = read_rows(tmp_path / "mixed_train.tsv")
    png = base64.b64encode((corpus / "images" / "000001.png").read_bytes()).decode("ascii")
    assert [row[1] for row in rows] == [png, encoded, "videos/000000.mp4"]


# ---------------------------------------------------------------------------------------------------------------
# Command line


def test_pretrain_through_the_cli_keeps_the_order_of_the_command_line(corpus, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["prepare", "pretrain", "--out", str(out), "--stream", "image",
                 "--caption", str(corpus / "caption_train.tsv"), "--vqa", str(corpus / "vqa_valid.tsv"),
                 "--caption", str(corpus / "caption_valid.tsv"), "--media-dir", str(corpus), "--check-media"]) == 0
    questions = input_rows(corpus / "vqa_valid.tsv")
    rows = read_rows(out / "image_train.tsv")
    assert [row[0] for row in rows] == ([f"caption_train-{k}" for k in range(20)]
                                        + [f"vqa_valid-{fields[0]}" for fields in questions]
                                        + ["caption_valid-0", "caption_valid-1"])
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {out / 'image_train.tsv'}: {len(rows)} rows (22 caption, {len(questions)} qa)"]


def test_cli_errors_name_the_file_and_line(tmp_path, capsys):
    # a blank line is skipped, and still counted in the line numbers
    bad = write_lines(tmp_path / "refcoco_train.tsv", [GOOD_ROWS["grounding"], "", "1\t7\tthe cat\tbox\timages/7.png"])
    assert main(["prepare", "pretrain", "--out", str(tmp_path / "out"), "--stream", "image",
                 "--grounding", str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"unival prepare pretrain: error: {bad}:3: box 'box'")
    assert not (tmp_path / "out" / "image_train.tsv").exists()
    assert main(["prepare", "pretrain", "--out", str(tmp_path / "out"), "--stream", "image"]) == 2
    assert "no input files" in capsys.readouterr().err


def test_an_input_of_another_kind_is_named_as_such(corpus, tmp_path):
    """A VQA file given as --caption failed on "empty image field"; an image caption file given as
    --video-caption became a stream of one-frame videos."""
    with pytest.raises(PrepareError, match=r"vqa_train.tsv:1: 6 columns where a file of this kind has 5 \(id, "
                                           r"image-id, caption, objects, image\), and column 6 holds the media: is it "
                                           r"a file of --vqa\?"):
        prepare_pretraining(tmp_path / "out", "image", "train", [("caption", corpus / "vqa_train.tsv")])
    no_objects = write_lines(tmp_path / "vqa_bare.tsv", ["1\t0\twhat colour?\t1.0|!+red\t\t"])
    with pytest.raises(PrepareError, match=r"vqa_bare.tsv:1: empty image field \(is it a file of another kind\? "
                                           r"--vqa or --video-qa read 6 columns\)"):
        prepare_pretraining(tmp_path / "out", "image", "train", [("caption", no_objects)])
    images = write_lines(tmp_path / "captions.tsv", ["0\t0\ta red circle\t-\timages/1.jpg"])
    with pytest.raises(PrepareError, match=r"captions.tsv:1: the video field names a file of image \(images/1.jpg\): "
                                           r"is it a file of --caption or --vqa or --grounding\?"):
        prepare_pretraining(tmp_path / "out", "video", "train", [("video-caption", images)])
    videos = write_lines(tmp_path / "videos.tsv", ["0\t0\ta dog runs\t-\tclips/dog.MP4"])
    with pytest.raises(PrepareError, match=r"the image field names a file of video \(clips/dog.MP4\): is it a file "
                                           r"of --video-caption or --video-qa\?"):
        prepare_pretraining(tmp_path / "out", "image", "train", [("caption", videos)])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # what the loaders read is accepted: a GIF video (TGIF-QA), sound in an mp4, an extra column after the media
    accepted = [("video-qa", "0\t0\twhat moves?\t1.0|!+dog\t-\ttgif/1.gif"),
                ("audio-caption", "0\t0\ta dog barks\t-\taudioset/x.mp4"),
                ("caption", "0\t0\ta red circle\t-\timages/1.jpg\tsource=web")]
    for number, (kind, line) in enumerate(accepted):
        path = write_lines(tmp_path / f"accepted{number}.tsv", [line])
        stream = {"video-qa": "video", "audio-caption": "audio", "caption": "image"}[kind]
        prepare_pretraining(tmp_path / f"out{number}", stream, "train", [(kind, path)])
