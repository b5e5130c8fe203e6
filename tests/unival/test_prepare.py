"""Tests of the `unival prepare` command line: a dataset per sub-command, a summary per file written, errors as
messages naming the file with exit status 2."""
import json
import os

import pytest

from unival.cli import main
from unival.data_utils.tsv import TSVReader
from unival.prepare import DATASETS


def read_rows(path):
    reader = TSVReader(str(path), cache_index=False)
    return [reader.row(index) for index in range(len(reader))]


@pytest.fixture
def karpathy_json(tmp_path):
    images = [{"filepath": "val2014", "filename": f"COCO_val2014_{k:012d}.jpg", "cocoid": k, "split": split,
               "sentences": [{"raw": f"caption {k} {n}"} for n in range(2)]}
              for k, split in ((1, "train"), (2, "restval"), (3, "val"), (4, "test"))]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images}))
    return path


def test_coco_caption_through_the_cli(karpathy_json, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["prepare", "coco-caption", "--karpathy-json", str(karpathy_json), "--out", str(out),
                 "--exclude-restval"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {out / 'caption_train.tsv'}: 2 rows", f"wrote {out / 'caption_valid.tsv'}: 1 row",
        f"wrote {out / 'caption_test.tsv'}: 1 row"]
    assert read_rows(out / "caption_train.tsv") == [
        ["0", "1", "caption 1 0", "", "val2014/COCO_val2014_000000000001.jpg"],
        ["1", "1", "caption 1 1", "", "val2014/COCO_val2014_000000000001.jpg"]]
    assert read_rows(out / "caption_valid.tsv") == [
        ["0", "3", "caption 3 0&&caption 3 1", "", "val2014/COCO_val2014_000000000003.jpg"]]


def test_missing_media_through_the_cli(karpathy_json, tmp_path, capsys):
    media = tmp_path / "coco" / "val2014"
    media.mkdir(parents=True)
    for k in (1, 3, 4):
        (media / f"COCO_val2014_{k:012d}.jpg").write_bytes(b"jpg")
    arguments = ["prepare", "coco-caption", "--karpathy-json", str(karpathy_json), "--out", str(tmp_path / "data"),
                 "--media-dir", str(tmp_path / "coco")]
    assert main(arguments + ["--check-media"]) == 2
    error = capsys.readouterr().err
    assert "unival prepare coco-caption: error:" in error
    assert "1 media file not found under" in error and "val2014/COCO_val2014_000000000002.jpg" in error
    assert not (tmp_path / "data" / "caption_train.tsv").exists()
    assert main(arguments + ["--skip-missing-media"]) == 0
    assert f"wrote {tmp_path / 'data' / 'caption_train.tsv'}: 2 rows (2 rows skipped: 1 media file missing)" in \
        capsys.readouterr().out.splitlines()


def test_a_failure_in_the_last_split_leaves_the_output_folder_as_it_was(karpathy_json, tmp_path, capsys):
    media = tmp_path / "coco" / "val2014"
    media.mkdir(parents=True)
    for k in (1, 2, 3):  # the test split's image (4) is missing
        (media / f"COCO_val2014_{k:012d}.jpg").write_bytes(b"jpg")
    out = tmp_path / "data"
    out.mkdir()
    (out / "caption_train.tsv").write_text("an earlier run's file\n")
    assert main(["prepare", "coco-caption", "--karpathy-json", str(karpathy_json), "--out", str(out),
                 "--media-dir", str(tmp_path / "coco"), "--check-media"]) == 2
    assert "caption_test.tsv: 1 media file not found under" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["caption_train.tsv"]  # no temporary file left either
    assert (out / "caption_train.tsv").read_text() == "an earlier run's file\n"
    assert main(["prepare", "coco-caption", "--karpathy-json", str(karpathy_json), "--out",
                 str(out / "caption_train.tsv")]) == 2
    assert "--out " + str(out / "caption_train.tsv") + " is a file: it names the folder" in capsys.readouterr().err


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_prepared_files_and_their_indexes_are_readable_by_everyone_the_umask_allows(karpathy_json, tmp_path,
                                                                                   umask_022):
    """tempfile.mkstemp creates files only their owner can read: a shared data folder would lock others out."""
    from unival.data_utils.vocab import save_dictionary
    from fairseq.data import Dictionary

    out = tmp_path / "data"
    assert main(["prepare", "coco-caption", "--karpathy-json", str(karpathy_json), "--out", str(out)]) == 0
    TSVReader(str(out / "caption_train.tsv")).close()  # writes its row index beside the file
    save_dictionary(Dictionary(), str(out / "dict.txt"))
    written = sorted(out.iterdir())
    assert {path.name for path in written} >= {"caption_train.tsv", "caption_train.tsv.index.npy", "dict.txt"}
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == {
        path.name: "0o644" for path in written}


def test_bad_input_is_an_error_naming_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "snli_ve_train.jsonl"
    path.write_text('{"Flickr30K_ID": "1", "sentence1": "p", "sentence2": "h", "gold_label": "neutral"}\nnot json\n')
    assert main(["prepare", "snli-ve", "--train", str(path), "--out", str(tmp_path)]) == 2
    assert f"{path}:2: invalid JSON" in capsys.readouterr().err
    assert main(["prepare", "refcoco", "--refs", str(tmp_path / "refs(unc).p"), "--instances", str(path),
                 "--out", str(tmp_path)]) == 2
    assert f"{tmp_path / 'refs(unc).p'} not found (--refs)" in capsys.readouterr().err


def test_msvd_qa_through_the_cli(tmp_path, capsys):
    (tmp_path / "youtube_mapping.txt").write_text("clip_a vid1\n")
    (tmp_path / "train_qa.json").write_text(json.dumps([{"question": "who?", "answer": "man", "video_id": 1, "id": 0}]))
    assert main(["prepare", "msvd-qa", "--train", str(tmp_path / "train_qa.json"), "--youtube-mapping",
                 str(tmp_path / "youtube_mapping.txt"), "--out", str(tmp_path / "out"),
                 "--video-extension", "mp4"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'out' / 'answers.txt'}: 1 answer",
                                                    f"wrote {tmp_path / 'out' / 'video_vqa_train.tsv'}: 1 row"]
    assert read_rows(tmp_path / "out" / "video_vqa_train.tsv") == [
        ["0", "clip_a", "who?", "1.0|!+man", "-", "YouTubeClips/clip_a.mp4"]]


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_dataset_has_help(dataset, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", dataset, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--out" in text and "--check-media" in text and "--skip-missing-media" in text
    assert ("--embed-images" in text) == DATASETS[dataset].images
