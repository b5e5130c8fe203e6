"""Tests of the shared machinery of `unival prepare`: readers that name file and line, safe pickles, media
checking and embedding, atomic TSV writing."""
import base64
import collections
import os
import pickle

import pytest

from unival.data_utils.prepare.common import (MediaFilter, MediaOptions, MissingMediaError, PrepareError, Written,
                                              answers_field, atomic_write_lines, counted, csv_records, json_lines,
                                              load_json, load_plain_pickle, require_file, require_records,
                                              write_split, write_tsv)
from unival.data_utils.tsv import TSVReader


def test_require_file_names_the_path_and_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json not found \(--refs\)"):
        require_file(tmp_path / "nope.json", "--refs")
    with pytest.raises(FileNotFoundError, match="no file given for --train"):
        require_file(None, "--train")


def test_invalid_json_error_has_file_and_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"images": [\n  1,\n  oops\n]}\n')
    with pytest.raises(PrepareError, match=r"a\.json:3: invalid JSON"):
        load_json(path, "--karpathy-json")


def test_json_lines_skip_blank_lines_and_name_the_bad_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(json_lines(path, "--train")) == [(1, {"a": 1}), (3, {"a": 2})]
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(PrepareError, match=r"a\.jsonl:2: invalid JSON"):
        list(json_lines(path, "--train"))
    path.write_text('[1, 2]\n')
    with pytest.raises(PrepareError, match=r"a\.jsonl:1: expected a JSON object"):
        list(json_lines(path, "--train"))


def test_csv_records_give_the_first_line_of_each_record(tmp_path):
    path = tmp_path / "a.csv"
    # a byte-order mark, a quoted field over two lines, a blank line
    path.write_bytes('\ufeffname,text\nx,"one\ntwo"\n\ny,three\n'.encode("utf-8"))
    assert list(csv_records(path, "--train", ["name", "text"])) == [
        (2, {"name": "x", "text": "one\ntwo"}), (5, {"name": "y", "text": "three"})]


def test_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('name,text\nx,"one\ntwo"\ny,three,extra\n')
    with pytest.raises(PrepareError, match=r"a\.csv:4: expected 2 fields \(name, text\), got 3"):
        list(csv_records(path, "--train", ["name", "text"]))
    with pytest.raises(PrepareError, match=r"a\.csv:1: header \['name', 'text'\] lacks the columns \['caption'\]"):
        list(csv_records(path, "--train", ["name", "caption"]))
    path.write_text("")
    with pytest.raises(PrepareError, match=r"a\.csv: empty file"):
        list(csv_records(path, "--train", ["name"]))


def test_plain_pickles_load_and_pickles_naming_classes_are_refused(tmp_path):
    path = tmp_path / "refs.p"
    with open(path, "wb") as file:
        pickle.dump([{"ref_id": 1, "sentences": [{"sent": "a"}], "box": (1.5, 2)}], file)
    assert load_plain_pickle(path, "--refs") == [{"ref_id": 1, "sentences": [{"sent": "a"}], "box": (1.5, 2)}]
    with open(path, "wb") as file:
        pickle.dump(collections.OrderedDict(a=1), file)
    with pytest.raises(PrepareError, match=r"refs\.p: .*refusing to load collections\.OrderedDict"):
        load_plain_pickle(path, "--refs")
    path.write_bytes(b"not a pickle")
    with pytest.raises(PrepareError, match=r"refs\.p: not a readable pickle"):
        load_plain_pickle(path, "--refs")


def test_write_tsv_replaces_tabs_and_newlines_and_reads_back(tmp_path):
    path = tmp_path / "out" / "a.tsv"
    assert write_tsv(path, [(0, "a\tb", "c\nd\re"), (1, "", "x")]) == 2
    assert path.read_text() == "0\ta b\tc d e\n1\t\tx\n"
    reader = TSVReader(str(path), cache_index=False)
    assert [reader.row(i) for i in range(len(reader))] == [["0", "a b", "c d e"], ["1", "", "x"]]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("old\n")

    def rows():
        yield ("new",)
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        atomic_write_lines(path, ("\t".join(row) for row in rows()))
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["a.tsv"]


@pytest.fixture
def media_dir(tmp_path):
    folder = tmp_path / "media"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.jpg").write_bytes(b"\xff\xd8jpeg-a")
    return folder


def rows_with_media(names):
    return [(index, f"img/{name}") for index, name in enumerate(names)]


def test_media_are_not_touched_without_checking(tmp_path):
    written = write_split(tmp_path / "a.tsv", rows_with_media(["a.jpg", "b.jpg"]), 1, MediaOptions())
    assert (written.rows, written.notes) == (2, [])


def test_missing_media_is_an_error_listing_the_first_few(tmp_path, media_dir):
    names = ["a.jpg"] + [f"m{k}.jpg" for k in range(7)]
    options = MediaOptions(media_dir=str(media_dir), check=True)
    with pytest.raises(MissingMediaError) as error:
        write_split(tmp_path / "a.tsv", rows_with_media(names), 1, options)
    message = str(error.value)
    assert "7 media files not found under" in message
    assert "img/m0.jpg, img/m1.jpg, img/m2.jpg, img/m3.jpg, img/m4.jpg and 2 more" in message
    assert "--skip-missing-media" in message
    assert not (tmp_path / "a.tsv").exists()


def test_skipping_missing_media_counts_the_rows(tmp_path, media_dir):
    options = MediaOptions(media_dir=str(media_dir), skip_missing=True)
    written = write_split(tmp_path / "a.tsv", rows_with_media(["a.jpg", "b.jpg", "b.jpg", "a.jpg"]), 1, options)
    assert (written.rows, written.notes) == (2, ["2 rows skipped: 1 media file missing"])
    assert (tmp_path / "a.tsv").read_text() == "0\timg/a.jpg\n3\timg/a.jpg\n"
    assert written.summary() == f"wrote {tmp_path / 'a.tsv'}: 2 rows (2 rows skipped: 1 media file missing)"


def test_embedding_stores_the_base64_of_the_file(media_dir):
    check = MediaFilter(MediaOptions(media_dir=str(media_dir), embed=True), 1, "a.tsv")
    encoded = base64.b64encode(b"\xff\xd8jpeg-a").decode("ascii")
    assert list(check(rows_with_media(["a.jpg", "a.jpg"]))) == [[0, encoded], [1, encoded]]


def test_media_options_need_an_existing_media_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="need --media-dir"):
        MediaOptions(check=True).validate()
    with pytest.raises(FileNotFoundError, match=r"media folder .*nowhere not found \(--media-dir\)"):
        MediaOptions(media_dir=str(tmp_path / "nowhere"), embed=True).validate()
    MediaOptions(media_dir=str(tmp_path / "nowhere")).validate()  # not read: not needed


def test_answers_field_formats_candidates_and_refuses_separators():
    assert answers_field([(1.0, "two"), (0.6, "2")], "q 1") == "1.0|!+two&&0.6|!+2"
    with pytest.raises(PrepareError, match=r"q 1: the answer 'r&&b' contains a separator"):
        answers_field([(1.0, "r&&b")], "q 1")


def test_text_that_is_not_utf8_or_a_quote_left_open_is_an_error_naming_the_line(tmp_path):
    latin = tmp_path / "captions.csv"
    latin.write_bytes("file_name,caption\na.wav,a dog barks\nb.wav,un café\n".encode("latin-1"))
    with pytest.raises(PrepareError, match=r"captions\.csv:3: not UTF-8 text \(byte 0xe9 at column 13\)"):
        list(csv_records(latin, "--development", ["file_name", "caption"]))
    lines = tmp_path / "train.jsonl"
    lines.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(PrepareError, match=r"train\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 11\)"):
        list(json_lines(lines, "--train"))
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('file_name,caption\na.wav,"a dog\nb.wav,a cat\n')
    with pytest.raises(PrepareError, match=r"quoted\.csv:2: malformed CSV record \(unexpected end of data; a quote "
                                           r"left open\?\)"):
        list(csv_records(quoted, "--development", ["file_name", "caption"]))


@pytest.mark.parametrize("options", [dict(check=True), dict(embed=True)])
def test_an_empty_media_file_is_an_error_naming_it_never_an_empty_field(tmp_path, media_dir, options):
    (media_dir / "img" / "empty.jpg").write_bytes(b"")
    rows = rows_with_media(["a.jpg", "empty.jpg", "gone.jpg"])
    with pytest.raises(MissingMediaError) as error:
        write_split(tmp_path / "a.tsv", rows, 1, MediaOptions(media_dir=str(media_dir), **options))
    assert str(error.value).startswith(f"{tmp_path / 'a.tsv'}: 2 media files not found or empty under {media_dir} "
                                       "(2 rows), e.g. img/empty.jpg (empty), img/gone.jpg (pass")
    with pytest.raises(MissingMediaError, match=r"a\.tsv: 1 media file empty under .* \(1 row\), e\.g\. "
                                                r"img/empty\.jpg \(pass"):
        write_split(tmp_path / "a.tsv", rows[:2], 1, MediaOptions(media_dir=str(media_dir), **options))
    assert not (tmp_path / "a.tsv").exists()


@pytest.mark.parametrize("embed", [False, True])
def test_skipping_counts_an_empty_media_file_with_the_missing_ones(tmp_path, media_dir, embed):
    (media_dir / "img" / "empty.jpg").write_bytes(b"")
    options = MediaOptions(media_dir=str(media_dir), skip_missing=True, embed=embed)
    written = write_split(tmp_path / "a.tsv", rows_with_media(["empty.jpg", "a.jpg", "empty.jpg"]), 1, options)
    assert (written.rows, written.notes) == (1, ["2 rows skipped: 1 media file empty"])
    a_field = base64.b64encode(b"\xff\xd8jpeg-a").decode("ascii") if embed else "img/a.jpg"
    assert (tmp_path / "a.tsv").read_text() == f"1\t{a_field}\n"
    written = write_split(tmp_path / "a.tsv", rows_with_media(["empty.jpg", "gone.jpg"]), 1, options)
    assert written.notes == ["2 rows skipped: 2 media files missing or empty"]


def test_counted_says_one_row_and_two_rows():
    assert [counted(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]
    assert [counted(n, "box", "boxes") for n in (1, 3)] == ["1 box", "3 boxes"]


def test_an_empty_output_has_a_warning_naming_it_and_why(tmp_path):
    assert Written(tmp_path / "a.tsv", 2).warning() is None
    assert Written(tmp_path / "a.tsv", 0, ["3 rows skipped: 1 media file missing"]).warning() == \
        f"warning: {tmp_path / 'a.tsv'} holds no rows: 3 rows skipped: 1 media file missing"
    assert Written(tmp_path / "answers.txt", 0, unit="answers").warning() == \
        f"warning: {tmp_path / 'answers.txt'} holds no answers: no input record made one"


def test_require_records_names_the_file_when_there_are_none(tmp_path):
    assert require_records([{"a": 1}], tmp_path / "k.json", "images") == [{"a": 1}]
    with pytest.raises(PrepareError, match=r"k\.json: no images in the file: nothing to convert"):
        require_records([], tmp_path / "k.json", "images")
