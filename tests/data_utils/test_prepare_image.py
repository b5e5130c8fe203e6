"""Tests of the image benchmark converters of `unival prepare` (COCO captions, VQAv2, RefCOCO, SNLI-VE) on tiny
files in the real formats."""
import base64
import json
import pickle

import pytest

from unival.cli import main
from unival.data_utils.prepare.coco_caption import prepare_coco_caption
from unival.data_utils.prepare.common import MediaOptions, MissingMediaError, PrepareError
from unival.data_utils.prepare.refcoco import corner_box, prepare_refcoco
from unival.data_utils.prepare.snli_ve import prepare_snli_ve
from unival.data_utils.prepare.vqa import (most_frequent_answers, normalize_answer, prepare_vqav2,
                                           scored_candidates, vqa_score)
from unival.data_utils.tsv import TSVReader


def read_rows(path):
    reader = TSVReader(str(path), cache_index=False)
    return [reader.row(index) for index in range(len(reader))]


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# COCO captions


def karpathy_image(cocoid, split, folder, captions):
    return {"filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "cocoid": cocoid, "split": split,
            "sentences": [{"raw": text, "tokens": text.split()} for text in captions]}


@pytest.fixture
def karpathy_json(tmp_path):
    return write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        karpathy_image(9, "train", "train2014", ["A dog\tplays.", "Two dogs.\n"]),
        karpathy_image(42, "restval", "val2014", ["A cat."]),
        karpathy_image(391895, "val", "val2014", ["A man rides.", "Someone on a bike."]),
        karpathy_image(73, "test", "val2014", ["A bus."]),
    ]})


def test_coco_caption_rows(karpathy_json, tmp_path):
    written = prepare_coco_caption(karpathy_json, tmp_path / "out")
    assert [(w.path.name, w.rows) for w in written] == [
        ("caption_train.tsv", 3), ("caption_valid.tsv", 1), ("caption_test.tsv", 1)]
    assert read_rows(tmp_path / "out" / "caption_train.tsv") == [
        ["0", "9", "A dog plays.", "", "train2014/COCO_train2014_000000000009.jpg"],
        ["1", "9", "Two dogs.", "", "train2014/COCO_train2014_000000000009.jpg"],
        ["2", "42", "A cat.", "", "val2014/COCO_val2014_000000000042.jpg"],
    ]
    assert read_rows(tmp_path / "out" / "caption_valid.tsv") == [
        ["0", "391895", "A man rides.&&Someone on a bike.", "", "val2014/COCO_val2014_000000391895.jpg"]]
    assert (tmp_path / "out" / "caption_test.tsv").read_text() == \
        "0\t73\tA bus.\t\tval2014/COCO_val2014_000000000073.jpg\n"


def test_coco_caption_without_restval(karpathy_json, tmp_path):
    prepare_coco_caption(karpathy_json, tmp_path, include_restval=False)
    assert [row[1] for row in read_rows(tmp_path / "caption_train.tsv")] == ["9", "9"]


def test_coco_caption_embeds_images(karpathy_json, tmp_path):
    media = tmp_path / "coco"
    for name in ("train2014/COCO_train2014_000000000009.jpg", "val2014/COCO_val2014_000000000042.jpg",
                 "val2014/COCO_val2014_000000391895.jpg", "val2014/COCO_val2014_000000000073.jpg"):
        (media / name).parent.mkdir(parents=True, exist_ok=True)
        (media / name).write_bytes(name.encode())
    prepare_coco_caption(karpathy_json, tmp_path / "out", MediaOptions(media_dir=str(media), embed=True))
    rows = read_rows(tmp_path / "out" / "caption_train.tsv")
    assert base64.b64decode(rows[0][4]) == b"train2014/COCO_train2014_000000000009.jpg"
    assert base64.b64decode(rows[2][4]) == b"val2014/COCO_val2014_000000000042.jpg"


def test_an_empty_image_file_is_never_embedded_as_an_empty_field(karpathy_json, tmp_path, capsys):
    media = tmp_path / "coco"
    for name in ("train2014/COCO_train2014_000000000009.jpg", "val2014/COCO_val2014_000000000042.jpg",
                 "val2014/COCO_val2014_000000391895.jpg", "val2014/COCO_val2014_000000000073.jpg"):
        (media / name).parent.mkdir(parents=True, exist_ok=True)
        (media / name).write_bytes(name.encode())
    (media / "val2014/COCO_val2014_000000000073.jpg").write_bytes(b"")  # the audit's `: > X.jpg`
    command = ["prepare", "coco-caption", "--karpathy-json", str(karpathy_json), "--media-dir", str(media),
               "--out", str(tmp_path / "out"), "--embed-images"]
    assert main(command) == 2
    assert capsys.readouterr().err == (
        f"unival prepare coco-caption: error: {tmp_path / 'out' / 'caption_test.tsv'}: 1 media file empty under "
        f"{media} (1 row), e.g. val2014/COCO_val2014_000000000073.jpg (pass --skip-missing-media to leave their "
        "rows out)\n")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert main(command + ["--skip-missing-media"]) == 0
    output, warnings = capsys.readouterr()
    test_file = tmp_path / "out" / "caption_test.tsv"
    assert output.splitlines()[-1] == f"wrote {test_file}: 0 rows (1 row skipped: 1 media file empty)"
    assert warnings == (f"unival prepare coco-caption: warning: {test_file} holds no rows: 1 row skipped: 1 media "
                        "file empty\n")
    assert test_file.read_text() == ""
    assert all(row[4] for row in read_rows(tmp_path / "out" / "caption_train.tsv"))


def test_an_input_without_records_is_an_error_naming_it(tmp_path, capsys):
    empty = write_json(tmp_path / "k.json", {"images": []})
    assert main(["prepare", "coco-caption", "--karpathy-json", str(empty), "--out", str(tmp_path / "z")]) == 2
    assert capsys.readouterr() == ("", f"unival prepare coco-caption: error: {empty}: no images in the file: "
                                       "nothing to convert\n")
    assert not (tmp_path / "z").exists()
    (tmp_path / "snli_ve_test.jsonl").write_text("\n")
    with pytest.raises(PrepareError, match=r"snli_ve_test\.jsonl: no pairs in the file"):
        prepare_snli_ve(tmp_path, test=tmp_path / "snli_ve_test.jsonl")
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps([]))
    with pytest.raises(PrepareError, match=r"refs\(unc\)\.p: no refs in the file"):
        prepare_refcoco(refs, write_json(tmp_path / "instances.json", {"images": [], "annotations": []}), tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "instances.json", "k.json", "refs(unc).p", "snli_ve_test.jsonl"]


def test_coco_caption_errors_name_the_image(tmp_path):
    path = write_json(tmp_path / "dataset_coco.json", {"images": [karpathy_image(5, "holdout", "val2014", ["x"])]})
    with pytest.raises(PrepareError, match=r"dataset_coco\.json: image 5: unknown split 'holdout'"):
        prepare_coco_caption(path, tmp_path)
    path = write_json(tmp_path / "dataset_coco.json", {"images": [karpathy_image(6, "val", "val2014", ["  "])]})
    with pytest.raises(PrepareError, match=r"image 6: empty or non-text caption \(sentence 0\)"):
        prepare_coco_caption(path, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.json not found \(--karpathy-json\)"):
        prepare_coco_caption(tmp_path / "missing.json", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# VQAv2


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("4.", "4"), ("the zebra", "zebra"), ("1,000.", "1000"), ("2.5", "2.5"), ("t-shirt", "t shirt"),
    ("Yes!", "yes"), ("an apple", "apple"), ("none", "0"), ("  Red   Car ", "red car"), ("dont", "dont"),
    ("black/white", "black white"), ("(yes)", "yes"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_vqa_score_is_the_official_accuracy_over_leave_one_out_subsets():
    assert [vqa_score(count) for count in (1, 2, 3, 4, 10)] == [0.3, 0.6, 0.9, 1.0, 1.0]
    # one of three annotators: two of the three subsets keep one match (1/3 each), one keeps none
    assert vqa_score(1, annotators=3) == pytest.approx(2 / 9, abs=1e-6)
    with pytest.raises(ValueError):
        vqa_score(0)


def test_scored_candidates_best_first_and_restricted_to_the_list():
    counts = {"2": 4, "3": 3, "red": 2, "4": 1}
    assert scored_candidates(counts, 10, None) == [(1.0, "2"), (0.9, "3"), (0.6, "red"), (0.3, "4")]
    assert scored_candidates(counts, 10, {"red", "4"}) == [(0.6, "red"), (0.3, "4")]


def test_answer_list_ranks_consensus_answers_then_alphabetically():
    annotations = [{"question_id": k, "multiple_choice_answer": answer}
                   for k, answer in enumerate(["Yes", "red", "2", "yes", "two", "blue"])]
    assert most_frequent_answers(annotations, 3, "a.json") == ["2", "yes", "blue"]


def vqa_question(qid, image_id, text):
    return {"image_id": image_id, "question": text, "question_id": qid}


def vqa_annotation(qid, image_id, answers, consensus=None):
    consensus = consensus or max(answers, key=answers.count)
    answers = [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k, answer in enumerate(answers)]
    return {"question_id": qid, "image_id": image_id, "answers": answers, "multiple_choice_answer": consensus,
            "question_type": "what", "answer_type": "other"}


@pytest.fixture
def vqa_files(tmp_path):
    def questions(name, subtype, items):
        return write_json(tmp_path / name, {"data_subtype": subtype, "task_type": "Open-Ended", "questions": items})

    def annotations(name, subtype, items):
        return write_json(tmp_path / name, {"data_subtype": subtype, "annotations": items})
    train_q = questions("train_q.json", "train2014", [
        vqa_question(11, 9, "Is there a dog?"), vqa_question(12, 9, "How many\tdogs?"),
        vqa_question(13, 25, "Is it sunny?"), vqa_question(14, 25, "What animal is it?"),
        vqa_question(15, 30, "What colour?"), vqa_question(16, 30, "How many cars?")])
    train_a = annotations("train_a.json", "train2014", [
        vqa_annotation(11, 9, ["yes"] * 10),
        vqa_annotation(12, 9, ["Two", "Two", "2", "2", "three", "three", "three", "4.", "red", "red"], "2"),
        vqa_annotation(13, 25, ["Yes"] * 10), vqa_annotation(14, 25, ["the zebra"] * 10),
        vqa_annotation(15, 30, ["red"] * 10), vqa_annotation(16, 30, ["three"] * 10)])
    val_q = questions("val_q.json", "val2014", [vqa_question(21, 42, "Is it a cat?"),
                                                 vqa_question(22, 42, "Is it night?")])
    val_a = annotations("val_a.json", "val2014", [vqa_annotation(21, 42, ["yes"] * 3 + ["no"] * 7),
                                                   vqa_annotation(22, 42, ["no"] * 10)])
    test_q = questions("test_q.json", "test-dev2015", [vqa_question(31, 1, "What is this?")])
    return train_q, train_a, val_q, val_a, test_q


def test_vqav2_rows_and_answer_list(vqa_files, tmp_path):
    out = tmp_path / "out"
    written = prepare_vqav2(out, *vqa_files, num_answers=4)
    # consensus answers: yes x2, then 2, 3, red, zebra once each; the 4 most frequent leave zebra out
    assert (out / "answers.txt").read_text() == "yes\n2\n3\nred\n"
    assert read_rows(out / "vqa_train.tsv") == [
        ["11", "9", "Is there a dog?", "1.0|!+yes", "", "train2014/COCO_train2014_000000000009.jpg"],
        ["12", "9", "How many dogs?", "1.0|!+2&&0.9|!+3&&0.6|!+red", "", "train2014/COCO_train2014_000000000009.jpg"],
        ["13", "25", "Is it sunny?", "1.0|!+yes", "", "train2014/COCO_train2014_000000000025.jpg"],
        ["15", "30", "What colour?", "1.0|!+red", "", "train2014/COCO_train2014_000000000030.jpg"],
        ["16", "30", "How many cars?", "1.0|!+3", "", "train2014/COCO_train2014_000000000030.jpg"],
    ]
    assert read_rows(out / "vqa_valid.tsv") == [
        ["21", "42", "Is it a cat?", "0.9|!+yes", "", "val2014/COCO_val2014_000000000042.jpg"]]
    # test-dev questions are about test2015 images; no answers
    assert read_rows(out / "vqa_test.tsv") == [
        ["31", "1", "What is this?", "", "", "test2015/COCO_test2015_000000000001.jpg"]]
    assert [(w.path.name, w.rows, w.notes) for w in written] == [
        ("answers.txt", 4, []),
        ("vqa_train.tsv", 5, ["1 question dropped: no answer in answers.txt"]),
        ("vqa_valid.tsv", 1, ["1 question dropped: no answer in answers.txt"]),
        ("vqa_test.tsv", 1, []),
    ]


def test_vqav2_errors(vqa_files, tmp_path):
    train_q, train_a, val_q, val_a, test_q = vqa_files
    with pytest.raises(PrepareError, match=r"val_q\.json: question 21: no annotation in .*train_a\.json"):
        prepare_vqav2(tmp_path, val_q, train_a)
    with pytest.raises(ValueError, match="give both --val-questions and --val-annotations"):
        prepare_vqav2(tmp_path, train_q, train_a, val_questions=val_q)
    with pytest.raises(FileNotFoundError, match=r"nope\.json not found \(--test-questions\)"):
        prepare_vqav2(tmp_path, train_q, train_a, test_questions=tmp_path / "nope.json")
    assert not (tmp_path / "answers.txt").exists()  # inputs are checked before anything is written
    write_json(val_a, {"annotations": [vqa_annotation(21, 43, ["yes"] * 10), vqa_annotation(22, 42, ["no"] * 10)]})
    with pytest.raises(PrepareError, match=r"val_a\.json: question 21: image 43 but the question is about image 42"):
        prepare_vqav2(tmp_path, train_q, train_a, val_q, val_a)
    write_json(test_q, {"data_subtype": "test2015", "questions": []})
    with pytest.raises(PrepareError, match=r"test_q\.json: no questions in the file: nothing to convert"):
        prepare_vqav2(tmp_path, train_q, train_a, test_questions=test_q)
    assert not (tmp_path / "answers.txt").exists()


def test_vqav2_split_left_without_questions_is_written_with_a_warning(vqa_files, tmp_path, capsys):
    train_q, train_a, val_q, val_a, _ = vqa_files
    write_json(val_a, {"annotations": [vqa_annotation(21, 42, ["maybe"] * 10), vqa_annotation(22, 42, ["no"] * 10)]})
    assert main(["prepare", "vqav2", "--out", str(tmp_path / "out"), "--train-questions", str(train_q),
                 "--train-annotations", str(train_a), "--val-questions", str(val_q), "--val-annotations",
                 str(val_a)]) == 0
    output, warnings = capsys.readouterr()
    valid = tmp_path / "out" / "vqa_valid.tsv"
    assert output.splitlines()[-1] == f"wrote {valid}: 0 rows (2 questions dropped: no answer in answers.txt)"
    assert warnings == (f"unival prepare vqav2: warning: {valid} holds no rows: 2 questions dropped: no answer in "
                        "answers.txt\n")


# ---------------------------------------------------------------------------------------------------------------
# RefCOCO


@pytest.fixture
def refcoco_files(tmp_path):
    def ref(ref_id, ann_id, image_id, split, sentences):
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
                "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "sent_ids": list(range(len(sentences))),
                "sentences": [{"sent": text, "raw": text, "tokens": text.split(), "sent_id": k}
                              for k, text in enumerate(sentences)]}
    refs = [ref(0, 100, 9, "train", ["man on left", "guy\tin red"]), ref(1, 101, 9, "testA", ["woman"]),
            ref(2, 102, 25, "val", ["zebra right"]), ref(3, 103, 25, "testB", ["tree"])]
    refs_path = tmp_path / "refs(unc).p"
    with open(refs_path, "wb") as file:
        pickle.dump(refs, file)
    instances = {"images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480},
                            {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "width": 100, "height": 50}],
                 "annotations": [{"id": 100, "image_id": 9, "bbox": [10, 20.5, 100, 200.257], "category_id": 1},
                                 {"id": 101, "image_id": 9, "bbox": [0, 0, 640, 480], "category_id": 1},
                                 {"id": 102, "image_id": 25, "bbox": [50.123, 10, 49.877, 40], "category_id": 1},
                                 {"id": 103, "image_id": 25, "bbox": [1, 2, 3, 4], "category_id": 1}],
                 "categories": [{"id": 1, "name": "person"}]}
    return refs_path, write_json(tmp_path / "instances.json", instances)


def test_refcoco_rows(refcoco_files, tmp_path):
    written = prepare_refcoco(*refcoco_files, tmp_path / "out")
    assert [(w.path.name, w.rows) for w in written] == [
        ("refcoco_train.tsv", 2), ("refcoco_valid.tsv", 1), ("refcoco_testA.tsv", 1), ("refcoco_testB.tsv", 1)]
    image_9, image_25 = "train2014/COCO_train2014_000000000009.jpg", "train2014/COCO_train2014_000000000025.jpg"
    assert read_rows(tmp_path / "out" / "refcoco_train.tsv") == [
        ["0", "9", "man on left", "10.00,20.50,110.00,220.76", image_9],
        ["1", "9", "guy in red", "10.00,20.50,110.00,220.76", image_9]]
    assert read_rows(tmp_path / "out" / "refcoco_valid.tsv") == [
        ["0", "25", "zebra right", "50.12,10.00,100.00,50.00", image_25]]
    assert read_rows(tmp_path / "out" / "refcoco_testA.tsv") == [
        ["0", "9", "woman", "0.00,0.00,640.00,480.00", image_9]]
    assert read_rows(tmp_path / "out" / "refcoco_testB.tsv") == [["0", "25", "tree", "1.00,2.00,4.00,6.00", image_25]]


def test_refcocog_umd_test_split_and_prefix(tmp_path):
    refs_path = tmp_path / "refs(umd).p"
    with open(refs_path, "wb") as file:
        pickle.dump([{"ref_id": 7, "ann_id": 1, "image_id": 2, "split": "test", "sentences": [{"sent": "a cup"}]}],
                    file)
    instances = write_json(tmp_path / "instances.json", {
        "images": [{"id": 2, "file_name": "b.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 2, "bbox": [1, 1, 2, 2]}]})
    written = prepare_refcoco(refs_path, instances, tmp_path, prefix="refcocog", image_folder="")
    assert [w.path.name for w in written] == ["refcocog_test.tsv"]
    assert read_rows(tmp_path / "refcocog_test.tsv") == [["0", "2", "a cup", "1.00,1.00,3.00,3.00", "b.jpg"]]


def test_box_outside_the_image_is_an_error_naming_the_ref_or_is_clipped(refcoco_files, tmp_path):
    refs_path, instances_path = refcoco_files
    instances = json.loads(instances_path.read_text())
    instances["annotations"][2]["bbox"] = [90, -2, 20, 10]
    write_json(instances_path, instances)
    with pytest.raises(PrepareError, match=r"refs\(unc\)\.p: ref 2 \(annotation 102 of .*\): box "
                                           r"90\.00,-2\.00,110\.00,8\.00 .* is outside the 100x50 image"):
        prepare_refcoco(refs_path, instances_path, tmp_path)
    written = prepare_refcoco(refs_path, instances_path, tmp_path, clip_boxes=True)
    assert read_rows(tmp_path / "refcoco_valid.tsv")[0][3] == "90.00,0.00,100.00,8.00"
    # counted in the summary of the split whose ref it is
    assert [(w.path.name, w.notes) for w in written] == [
        ("refcoco_train.tsv", []), ("refcoco_valid.tsv", ["1 box clipped to the image (more than 1 pixel outside; "
                                                          "--clip-boxes)"]),
        ("refcoco_testA.tsv", []), ("refcoco_testB.tsv", [])]


def test_corner_box_rejects_bad_and_empty_boxes():
    with pytest.raises(PrepareError, match="ref 5: bbox must be 4 numbers"):
        corner_box([1, 2, 3], 10, 10, False, "ref 5")
    for bbox in ([1, 2, 0, 3], [10, 5, -30, 40]):
        for clip in (False, True):  # no --clip-boxes hint: clipping cannot mend it
            with pytest.raises(PrepareError, match=r"ref 5: bbox \[.*\] has a width or height of zero or less "
                                                   r"\(COCO boxes are \[x, y, width, height\]\)$"):
                corner_box(bbox, 100, 80, clip, "ref 5")
    with pytest.raises(PrepareError, match="ref 5: empty box 10.00,0.00,10.00,5.00"):  # wholly outside, clipped
        corner_box([12, -10, 3, 15], 10, 10, True, "ref 5")
    # up to a pixel outside is annotation rounding: clipped without an error, and not counted as --clip-boxes's
    assert corner_box([-0.8, 0, 10.8, 10.004], 10, 10, False, "ref 5") == ((0.0, 0.0, 10.0, 10.0), False)
    assert corner_box([-3, 0, 5, 5], 10, 10, True, "ref 5") == ((0.0, 0.0, 2.0, 5.0), True)


def test_refcoco_missing_annotation_names_the_ref(refcoco_files, tmp_path):
    refs_path, instances_path = refcoco_files
    instances = json.loads(instances_path.read_text())
    del instances["annotations"][3]
    write_json(instances_path, instances)
    with pytest.raises(PrepareError, match=r"ref 3: annotation 103 is not in .*instances\.json"):
        prepare_refcoco(refs_path, instances_path, tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# SNLI-VE


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def snli_record(image_key, image, premise, hypothesis, label):
    return {image_key: image, "sentence1": premise, "sentence2": hypothesis, "gold_label": label,
            "pairID": f"{image}#0r1e", "annotator_labels": [label]}


def test_snli_ve_rows(tmp_path):
    train = write_jsonl(tmp_path / "snli_ve_train.jsonl", [
        snli_record("Flikr30kID", "3416050480.jpg", "A man sleeps.", "A person rests.", "entailment"),
        snli_record("Flickr30K_ID", "123", "Two dogs run.", "Cats\tsleep.", "contradiction")])
    dev = write_jsonl(tmp_path / "snli_ve_dev.jsonl",
                      [snli_record("Flickr30K_ID", "77", "A boy.", "He is 5.", "neutral")])
    written = prepare_snli_ve(tmp_path / "out", train=train, dev=dev)
    assert [(w.path.name, w.rows) for w in written] == [("snli_ve_train.tsv", 2), ("snli_ve_valid.tsv", 1)]
    assert read_rows(tmp_path / "out" / "snli_ve_train.tsv") == [
        ["0", "3416050480", "flickr30k_images/3416050480.jpg", "A person rests.", "A man sleeps.", "yes"],
        ["1", "123", "flickr30k_images/123.jpg", "Cats sleep.", "Two dogs run.", "no"]]
    assert read_rows(tmp_path / "out" / "snli_ve_valid.tsv") == [
        ["0", "77", "flickr30k_images/77.jpg", "He is 5.", "A boy.", "maybe"]]


def test_snli_ve_errors_name_file_and_line(tmp_path):
    good = json.dumps(snli_record("Flickr30K_ID", "1", "p", "h", "entailment"))
    path = tmp_path / "snli_ve_dev.jsonl"
    path.write_text(good + "\n{\"Flickr30K_ID\": \n")
    with pytest.raises(PrepareError, match=r"snli_ve_dev\.jsonl:2: invalid JSON"):
        prepare_snli_ve(tmp_path, dev=path)
    write_jsonl(path, [snli_record("Flickr30K_ID", "1", "p", "h", "entailment"),
                       snli_record("Flickr30K_ID", "1", "p", "h", "-")])
    with pytest.raises(PrepareError, match=r"snli_ve_dev\.jsonl:2: gold_label '-' is not one of"):
        prepare_snli_ve(tmp_path, dev=path)
    write_jsonl(path, [{"sentence1": "p", "sentence2": "h", "gold_label": "neutral"}])
    with pytest.raises(PrepareError, match=r"snli_ve_dev\.jsonl:1: no Flickr30k image id"):
        prepare_snli_ve(tmp_path, dev=path)
    with pytest.raises(ValueError, match="give at least one of --train, --dev and --test"):
        prepare_snli_ve(tmp_path)


def test_snli_ve_missing_images_are_reported_or_skipped(tmp_path):
    media = tmp_path / "flickr"
    (media / "flickr30k_images").mkdir(parents=True)
    (media / "flickr30k_images" / "1.jpg").write_bytes(b"jpg")
    path = write_jsonl(tmp_path / "snli_ve_test.jsonl", [snli_record("Flickr30K_ID", str(k), "p", "h", "neutral")
                                                         for k in (1, 2, 1)])
    with pytest.raises(MissingMediaError, match=r"1 media file not found under .*flickr \(1 row\), e\.g\. "
                                                r"flickr30k_images/2\.jpg"):
        prepare_snli_ve(tmp_path, test=path, media=MediaOptions(media_dir=str(media), check=True))
    (written,) = prepare_snli_ve(tmp_path, test=path, media=MediaOptions(media_dir=str(media), skip_missing=True))
    assert (written.rows, written.notes) == (2, ["1 row skipped: 1 media file missing"])
    assert [row[0] for row in read_rows(tmp_path / "snli_ve_test.tsv")] == ["0", "2"]
