"""Tests of the video and audio benchmark converters of `unival prepare` (MSR-VTT captions, MSRVTT-QA, MSVD-QA,
AudioCaps, Clotho) on tiny files in the real formats."""
import json

import pytest

from unival.cli import main
from unival.data_utils.prepare.audio_caption import prepare_audiocaps, prepare_clotho
from unival.data_utils.prepare.common import MediaOptions, MissingMediaError, PrepareError
from unival.data_utils.prepare.msrvtt import prepare_msrvtt_caption
from unival.data_utils.prepare.video_qa import prepare_video_qa
from unival.data_utils.tsv import TSVReader


def read_rows(path):
    reader = TSVReader(str(path), cache_index=False)
    return [reader.row(index) for index in range(len(reader))]


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# MSR-VTT captions


def msrvtt_file(path, videos, sentences):
    return write_json(path, {
        "info": {"year": 2016}, "videos": [{"video_id": v, "split": s, "id": int(v[5:]), "category": 0,
                                            "url": "", "start time": 0, "end time": 1} for v, s in videos],
        "sentences": [{"video_id": v, "caption": c, "sen_id": k} for k, (v, c) in enumerate(sentences)]})


@pytest.fixture
def msrvtt_files(tmp_path):
    train_val = msrvtt_file(tmp_path / "train_val_videodatainfo.json",
                            [("video0", "train"), ("video1", "validate")],
                            [("video0", "a man sings"), ("video1", "cars race"), ("video0", "someone\tsinging"),
                             ("video1", "a race")])
    test = msrvtt_file(tmp_path / "test_videodatainfo.json", [("video7010", "test")], [("video7010", "a dog")])
    return train_val, test


def test_msrvtt_caption_rows(msrvtt_files, tmp_path):
    written = prepare_msrvtt_caption(msrvtt_files, tmp_path / "out")
    assert [(w.path.name, w.rows) for w in written] == [
        ("video_caption_train.tsv", 2), ("video_caption_valid.tsv", 1), ("video_caption_test.tsv", 1)]
    assert read_rows(tmp_path / "out" / "video_caption_train.tsv") == [
        ["0", "video0", "a man sings", "-", "videos/video0.mp4"],
        ["1", "video0", "someone singing", "-", "videos/video0.mp4"]]
    assert read_rows(tmp_path / "out" / "video_caption_valid.tsv") == [
        ["0", "video1", "cars race&&a race", "-", "videos/video1.mp4"]]
    assert read_rows(tmp_path / "out" / "video_caption_test.tsv") == [
        ["0", "video7010", "a dog", "-", "videos/video7010.mp4"]]


def test_msrvtt_caption_folder_and_extension_options(msrvtt_files, tmp_path):
    prepare_msrvtt_caption(msrvtt_files[1:], tmp_path, video_folder="TestVideo", extension=".webm")
    assert read_rows(tmp_path / "video_caption_test.tsv")[0][4] == "TestVideo/video7010.webm"
    assert not (tmp_path / "video_caption_train.tsv").exists()


def test_msrvtt_caption_errors(msrvtt_files, tmp_path):
    train_val, test = msrvtt_files
    msrvtt_file(test, [("video7010", "test")], [("video9", "a cat")])
    with pytest.raises(PrepareError, match=r"test_videodatainfo\.json: sentence 0 of video video9: the video is not"):
        prepare_msrvtt_caption([train_val, test], tmp_path)
    msrvtt_file(test, [("video0", "test")], [])
    with pytest.raises(PrepareError, match=r"test_videodatainfo\.json: video video0: listed twice"):
        prepare_msrvtt_caption([train_val, test], tmp_path)
    msrvtt_file(test, [("video5", "test")], [])
    with pytest.raises(PrepareError, match=r"test_videodatainfo\.json: video video5: no caption"):
        prepare_msrvtt_caption([train_val, test], tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.json not found \(--annotations\)"):
        prepare_msrvtt_caption([train_val, tmp_path / "nope.json"], tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# MSRVTT-QA and MSVD-QA


def qa_file(path, items):
    return write_json(path, [{"question": q, "answer": a, "video_id": v, "id": k, "category_id": 0}
                             for k, v, q, a in items])


@pytest.fixture
def msrvtt_qa_files(tmp_path):
    train = qa_file(tmp_path / "train_qa.json", [(0, 0, "what is a man doing?", "singing"),
                                                 (1, 0, "who sings?", "Man"),
                                                 (2, 1, "what is sung?", "singing")])
    test = qa_file(tmp_path / "test_qa.json", [(5, 7010, "what drives?", "car")])
    return train, test


def test_msrvtt_qa_rows_and_answer_list(msrvtt_qa_files, tmp_path):
    train, test = msrvtt_qa_files
    written = prepare_video_qa("msrvtt", tmp_path, train=train, test=test)
    assert (tmp_path / "answers.txt").read_text() == "singing\nman\n"
    assert read_rows(tmp_path / "video_vqa_train.tsv") == [
        ["0", "video0", "what is a man doing?", "1.0|!+singing", "-", "videos/video0.mp4"],
        ["1", "video0", "who sings?", "1.0|!+man", "-", "videos/video0.mp4"],
        ["2", "video1", "what is sung?", "1.0|!+singing", "-", "videos/video1.mp4"]]
    # test questions are all kept, even with answers never seen in training
    assert read_rows(tmp_path / "video_vqa_test.tsv") == [
        ["5", "video7010", "what drives?", "1.0|!+car", "-", "videos/video7010.mp4"]]
    assert [(w.path.name, w.rows) for w in written] == [
        ("answers.txt", 2), ("video_vqa_train.tsv", 3), ("video_vqa_test.tsv", 1)]


def test_video_qa_answer_list_cut_drops_training_questions(msrvtt_qa_files, tmp_path):
    written = prepare_video_qa("msrvtt", tmp_path, train=msrvtt_qa_files[0], num_answers=1)
    assert (tmp_path / "answers.txt").read_text() == "singing\n"
    assert (written[1].rows, written[1].notes) == (2, ["1 question dropped: answer not in answers.txt"])


@pytest.mark.parametrize("cut", [None, 1])
def test_video_qa_answer_list_comes_from_the_training_rows_written(tmp_path, cut):
    train = qa_file(tmp_path / "train_qa.json", [(0, 0, "what is sung?", "opera"), (1, 1, "who sings?", "man"),
                                                 (2, 1, "what is sung?", "song"), (3, 2, "what is it?", "song"),
                                                 (4, 0, "who?", "woman")])
    media = tmp_path / "msrvtt"
    (media / "videos").mkdir(parents=True)
    for video in (1, 2):
        (media / "videos" / f"video{video}.mp4").write_bytes(b"mp4")
    written = prepare_video_qa("msrvtt", tmp_path, train=train, num_answers=cut,
                               media=MediaOptions(media_dir=str(media), skip_missing=True))
    # video0's questions (opera, woman) are left out, so their answers are not in the list
    assert (tmp_path / "answers.txt").read_text() == ("song\nman\n" if cut is None else "song\n")
    assert [row[0] for row in read_rows(tmp_path / "video_vqa_train.tsv")] == (["1", "2", "3"] if cut is None
                                                                              else ["2", "3"])
    dropped = [] if cut is None else ["1 question dropped: answer not in answers.txt"]
    assert [(w.path.name, w.rows, w.notes) for w in written] == [
        ("answers.txt", 2 if cut is None else 1, ["from the 3 training questions with a video file"]),
        ("video_vqa_train.tsv", 3 if cut is None else 2, dropped + ["2 rows skipped: 1 media file missing"])]


def test_video_qa_without_any_training_video_warns_of_the_empty_files(tmp_path, capsys):
    train = qa_file(tmp_path / "train_qa.json", [(0, 0, "what is sung?", "opera")])
    (tmp_path / "msrvtt").mkdir()
    assert main(["prepare", "msrvtt-qa", "--train", str(train), "--out", str(tmp_path / "out"), "--media-dir",
                 str(tmp_path / "msrvtt"), "--skip-missing-media"]) == 0
    answers, rows = tmp_path / "out" / "answers.txt", tmp_path / "out" / "video_vqa_train.tsv"
    assert capsys.readouterr().err.splitlines() == [
        f"unival prepare msrvtt-qa: warning: {answers} holds no answers: from the 0 training questions with a "
        "video file",
        f"unival prepare msrvtt-qa: warning: {rows} holds no rows: 1 row skipped: 1 media file missing"]
    assert answers.read_text() == rows.read_text() == ""


def test_inputs_without_records_are_errors_naming_them(tmp_path):
    empty = write_json(tmp_path / "test_qa.json", [])
    with pytest.raises(PrepareError, match=r"test_qa\.json: no questions in the file: nothing to convert"):
        prepare_video_qa("msrvtt", tmp_path, train=qa_file(tmp_path / "train_qa.json", [(0, 0, "q?", "a")]),
                         test=empty)
    msrvtt = msrvtt_file(tmp_path / "test_videodatainfo.json", [], [])
    with pytest.raises(PrepareError, match=r"test_videodatainfo\.json: no videos in the file"):
        prepare_msrvtt_caption([msrvtt], tmp_path)
    header_only = tmp_path / "val.csv"
    header_only.write_text(AUDIOCAPS_HEADER)
    with pytest.raises(PrepareError, match=r"val\.csv: no captions in the file"):
        prepare_audiocaps(tmp_path, val=header_only)
    header_only.write_text(CLOTHO_HEADER + "\n")
    with pytest.raises(PrepareError, match=r"val\.csv: no captions in the file"):
        prepare_clotho(tmp_path, validation=header_only)
    assert not list(tmp_path.glob("*.tsv")) and not (tmp_path / "answers.txt").exists()


def test_msvd_qa_maps_video_ids_through_youtube_mapping(tmp_path):
    mapping = tmp_path / "youtube_mapping.txt"
    mapping.write_text("-4wsuPCjDBc_5_15 vid1\nabc_1_2 vid2\n")
    train = qa_file(tmp_path / "train_qa.json", [(0, 1, "what runs?", "dog"), (1, 2, "who cooks?", "woman")])
    prepare_video_qa("msvd", tmp_path, train=train, youtube_mapping=mapping)
    assert read_rows(tmp_path / "video_vqa_train.tsv") == [
        ["0", "-4wsuPCjDBc_5_15", "what runs?", "1.0|!+dog", "-", "YouTubeClips/-4wsuPCjDBc_5_15.avi"],
        ["1", "abc_1_2", "who cooks?", "1.0|!+woman", "-", "YouTubeClips/abc_1_2.avi"]]


def test_msvd_qa_errors(tmp_path):
    mapping = tmp_path / "youtube_mapping.txt"
    mapping.write_text("a_1_2 vid1\n")
    train = qa_file(tmp_path / "train_qa.json", [(0, 1, "what runs?", "dog"), (7, 3, "who?", "man")])
    with pytest.raises(PrepareError, match=r"train_qa\.json: question 7: video 3 \(vid3\) is not in .*mapping"):
        prepare_video_qa("msvd", tmp_path, train=train, youtube_mapping=mapping)
    mapping.write_text("a_1_2 vid1\nbroken line here\n")
    with pytest.raises(PrepareError, match=r"youtube_mapping\.txt:2: expected '<youtube clip name> vid<number>'"):
        prepare_video_qa("msvd", tmp_path, train=train, youtube_mapping=mapping)
    with pytest.raises(FileNotFoundError, match="MSVD-QA needs --youtube-mapping"):
        prepare_video_qa("msvd", tmp_path, train=train)
    write_json(train, [{"question": "what?", "answer": "x", "video_id": "1", "id": 4}])
    with pytest.raises(PrepareError, match=r"train_qa\.json: question 4: 'video_id' has the wrong type"):
        prepare_video_qa("msrvtt", tmp_path, train=train)


# ---------------------------------------------------------------------------------------------------------------
# AudioCaps


AUDIOCAPS_HEADER = "audiocap_id,youtube_id,start_time,caption\n"


@pytest.fixture
def audiocaps_files(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text(AUDIOCAPS_HEADER + '91139,r1nicOVtvkQ,130,"A woman talks, then a goat bleats"\n'
                     '58146,UDGBjjwyaqE,20,Wind blows\n')
    val = tmp_path / "val.csv"
    val.write_text(AUDIOCAPS_HEADER + "97151,rqfQRErjfk8,170,A crowd cheers\n97152,rqfQRErjfk8,170,People clap\n"
                   "97200,zzz,30,Birds chirp\n")
    return train, val


def test_audiocaps_rows(audiocaps_files, tmp_path):
    train, val = audiocaps_files
    written = prepare_audiocaps(tmp_path / "out", train=train, val=val)
    assert [(w.path.name, w.rows) for w in written] == [("audio_caption_train.tsv", 2), ("audio_caption_valid.tsv", 2)]
    assert read_rows(tmp_path / "out" / "audio_caption_train.tsv") == [
        ["0", "r1nicOVtvkQ_130", "A woman talks, then a goat bleats", "-", "r1nicOVtvkQ_130.wav"],
        ["1", "UDGBjjwyaqE_20", "Wind blows", "-", "UDGBjjwyaqE_20.wav"]]
    assert read_rows(tmp_path / "out" / "audio_caption_valid.tsv") == [
        ["0", "rqfQRErjfk8_170", "A crowd cheers&&People clap", "-", "rqfQRErjfk8_170.wav"],
        ["1", "zzz_30", "Birds chirp", "-", "zzz_30.wav"]]


def test_audiocaps_audio_pattern(audiocaps_files, tmp_path):
    prepare_audiocaps(tmp_path, val=audiocaps_files[1], audio_pattern="{split}/Y{youtube_id}.{audiocap_id}.wav")
    assert [row[4] for row in read_rows(tmp_path / "audio_caption_valid.tsv")] == [
        "val/YrqfQRErjfk8.97151.wav", "val/Yzzz.97200.wav"]
    with pytest.raises(ValueError, match=r"--audio-pattern '\{name\}.wav': bad pattern"):
        prepare_audiocaps(tmp_path, val=audiocaps_files[1], audio_pattern="{name}.wav")


def test_audiocaps_malformed_line_is_named(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text(AUDIOCAPS_HEADER + '1,a,0,"two\nlines"\n2,b,10\n')
    with pytest.raises(PrepareError, match=r"test\.csv:4: expected 4 fields"):
        prepare_audiocaps(tmp_path, test=path)
    path.write_text(AUDIOCAPS_HEADER + "1,a,0,fine\n2,,10,no youtube id\n")
    with pytest.raises(PrepareError, match=r"test\.csv:3: empty youtube_id"):
        prepare_audiocaps(tmp_path, test=path)


def test_audiocaps_missing_audio_is_reported(audiocaps_files, tmp_path):
    media = tmp_path / "audio"
    media.mkdir()
    (media / "r1nicOVtvkQ_130.wav").write_bytes(b"RIFF")
    with pytest.raises(MissingMediaError, match=r"audio_caption_train\.tsv: 1 media file not found .* "
                                                r"e\.g\. UDGBjjwyaqE_20\.wav"):
        prepare_audiocaps(tmp_path, train=audiocaps_files[0], media=MediaOptions(media_dir=str(media), check=True))


# ---------------------------------------------------------------------------------------------------------------
# Clotho


CLOTHO_HEADER = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"


def test_clotho_rows(tmp_path):
    development = tmp_path / "clotho_captions_development.csv"
    development.write_text(CLOTHO_HEADER + '"Santa Motor.wav",c1,"c2, with comma",c3,c4,c5\n', encoding="utf-8")
    evaluation = tmp_path / "clotho_captions_evaluation.csv"
    evaluation.write_text(CLOTHO_HEADER + "a.wav,e1,e2,e3,e4,e5\nb.wav,f1,f2,f3,f4,f5\n", encoding="utf-8")
    written = prepare_clotho(tmp_path / "out", development=development, evaluation=evaluation)
    assert [(w.path.name, w.rows) for w in written] == [("audio_caption_train.tsv", 5), ("audio_caption_test.tsv", 2)]
    assert read_rows(tmp_path / "out" / "audio_caption_train.tsv") == [
        [str(k), "Santa Motor.wav", caption, "-", "development/Santa Motor.wav"]
        for k, caption in enumerate(["c1", "c2, with comma", "c3", "c4", "c5"])]
    assert read_rows(tmp_path / "out" / "audio_caption_test.tsv") == [
        ["0", "a.wav", "e1&&e2&&e3&&e4&&e5", "-", "evaluation/a.wav"],
        ["1", "b.wav", "f1&&f2&&f3&&f4&&f5", "-", "evaluation/b.wav"]]
    prepare_clotho(tmp_path / "out", evaluation=evaluation, audio_folders={"evaluation": "eval_audio"})
    assert read_rows(tmp_path / "out" / "audio_caption_test.tsv")[0][4] == "eval_audio/a.wav"


def test_clotho_errors(tmp_path):
    path = tmp_path / "clotho_captions_validation.csv"
    path.write_text(CLOTHO_HEADER + "a.wav,v1,v2,v3,v4,v5\nb.wav,w1,,w3,w4,w5\n")
    with pytest.raises(PrepareError, match=r"clotho_captions_validation\.csv:3: empty or non-text caption_2"):
        prepare_clotho(tmp_path, validation=path)
    path.write_text("file_name,caption_1,caption_2\n")
    with pytest.raises(PrepareError, match=r"validation\.csv:1: header .* lacks the columns \['caption_3'"):
        prepare_clotho(tmp_path, validation=path)
    with pytest.raises(FileNotFoundError, match=r"nope\.csv not found \(--evaluation\)"):
        prepare_clotho(tmp_path, validation=path, evaluation=tmp_path / "nope.csv")
