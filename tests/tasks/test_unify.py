"""Pretraining (task ``unify``): the samples each row type gives, negatives, grounding bins, mixed-modality batches
and the task-balanced loss, bad rows."""
import re

import pytest
import torch
from fairseq import metrics
from task_files import build_tiny_model

from unival.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
from unival.data_utils.demo_corpus import write_demo_corpus
from unival.data_utils.prepare.pretrain import UNIFY_COLUMNS, UNIFY_TYPES, prepare_pretraining
from unival.data_utils.transforms import box_to_bins, resize_box
from unival.data_utils.vocab import first_bin_index
from unival.tasks.unify import COLUMNS, TYPES, UnifyConfig, UnifyTask

STREAM_INPUTS = {
    "image": [("caption", "caption"), ("vqa", "vqa"), ("grounding", "refcoco")],
    "video": [("video-caption", "video_caption"), ("video-qa", "video_vqa")],
    "audio": [("audio-caption", "audio_caption")],
}


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """Demo corpus files converted into image, video and audio streams (train and valid); returns (data, media)."""
    media = tmp_path_factory.mktemp("unify") / "corpus"
    write_demo_corpus(media, seed=6, num_images=(4, 2, 2), num_videos=(2, 1, 1), num_audios=(2, 1, 1))
    data = media.parent / "streams"
    for split in ("train", "valid"):
        for stream, inputs in STREAM_INPUTS.items():
            files = [(kind, media / f"{prefix}_{split}.tsv") for kind, prefix in inputs]
            prepare_pretraining(data, stream, split, files)
    return data, media


def unify_task(folders, **overrides):
    data, media = folders
    values = dict(data=str(data), media_dir=str(media), streams="image,video,audio", patch_image_size=32,
                  train_subset="train", valid_subset="valid", seed=1, num_frames=2, patch_frame_size=32,
                  audio_clip_seconds=1.0, audio_sample_rate=16000, matching_ratio=1.0)
    values.update(overrides)
    return UnifyTask.setup_task(UnifyConfig(**values))


def stream_rows(task, split, stream):
    dataset = task.dataset(split).datasets[stream]
    return dataset, [dataset.reader.row(index) for index in range(len(dataset))]


def samples_of(dataset, index):
    return dataset[index]["samples"]


def test_the_converter_and_the_task_agree_on_the_format():
    assert COLUMNS == UNIFY_COLUMNS and tuple(TYPES) == UNIFY_TYPES


def test_caption_rows_give_captioning_and_a_matching_pair(streams):
    task = unify_task(streams, object_swap_ratio=0.0)
    task.load_dataset("train")
    dataset, rows = stream_rows(task, "train", "image")
    index = next(i for i, row in enumerate(rows) if row[7] == "caption")
    caption, matching_yes, matching_no = samples_of(dataset, index)
    first_caption = rows[index][2]  # training rows hold one caption each
    assert task.decode(caption["source"]) == "what does the image describe?"
    assert task.decode(caption["target"]) == first_caption
    assert task.decode(matching_yes["source"]) == f'does the image describe " {first_caption} "?'
    assert task.decode(matching_yes["target"]) == "yes" and task.decode(matching_no["target"]) == "no"
    wrong = re.fullmatch(r'does the image describe " (.*) "\?', task.decode(matching_no["source"])).group(1)
    assert wrong not in rows[index][2].split("&&")
    assert wrong in [text for row in rows if row[7] == "caption" for text in row[2].split("&&")]
    assert caption["patch_image"].shape == (3, 32, 32) and caption["patch_type"] == 0
    assert [sample["objective"] for sample in (caption, matching_yes, matching_no)] == [
        "caption", "caption_matching", "caption_matching"]


def test_a_wrong_caption_can_swap_an_object_of_the_row(streams):
    task = unify_task(streams, object_swap_ratio=1.0)
    task.load_dataset("train")
    dataset, rows = stream_rows(task, "train", "image")
    all_objects = {name for row in rows for name in row[5].split("&&")}
    swapped = 0
    for index, row in enumerate(rows):
        if row[7] != "caption":
            continue
        objects = row[5].split("&&")
        _, yes, no = samples_of(dataset, index)
        right = re.fullmatch(r'does the image describe " (.*) "\?', task.decode(yes["source"])).group(1)
        wrong = re.fullmatch(r'does the image describe " (.*) "\?', task.decode(no["source"])).group(1)
        named = [name for name in objects if re.search(rf"\b{name}\b", right)]
        assert named  # the demo's captions name their objects
        # the same caption with the first named object replaced by another row's object
        before, after = right.split(named[0], 1)
        other = re.fullmatch(re.escape(before) + "(.+)" + re.escape(after), wrong)
        if other is not None:
            assert other.group(1) not in objects and other.group(1) in all_objects
            swapped += 1
    assert swapped >= 3


def test_question_rows_give_the_best_answer_weighted_and_an_answer_matching_pair(streams):
    task = unify_task(streams)
    task.load_dataset("train")
    dataset, rows = stream_rows(task, "train", "video")
    index = next(i for i, row in enumerate(rows) if row[7] == "video_qa")
    answers = dict((answer, float(conf)) for conf, answer in
                   (item.split("|!+") for item in rows[index][4].split("&&")))
    best = max(answers, key=answers.get)
    qa, yes, no = samples_of(dataset, index)
    question = rows[index][3].lower().rstrip("?")
    assert task.decode(qa["source"]) == question + "?"
    assert task.decode(qa["target"]) == best and qa["conf"] == answers[best]
    assert task.decode(yes["source"]) == f'what is the answer to question " {question} ". is " {best} "?'
    wrong = re.fullmatch(r'.* is " (.*) "\?', task.decode(no["source"])).group(1)
    assert wrong not in answers and task.decode(no["target"]) == "no"
    assert qa["patch_video"].shape == (3, 2, 32, 32) and qa["patch_type"] == 1


def test_grounding_rows_give_the_boxs_bins_and_a_region_caption(streams):
    task = unify_task(streams, patch_image_size=32, num_bins=1000)
    task.load_dataset("train")
    dataset, rows = stream_rows(task, "train", "image")
    index = next(i for i, row in enumerate(rows) if row[7] == "visual_grounding")
    grounding, region_caption = samples_of(dataset, index)
    box = [float(c) for c in rows[index][4].split(",")]
    bins = box_to_bins(resize_box(box, 128, 32), 32, 1000)  # demo images are 128 px squares
    first_bin = first_bin_index(task.dictionary)
    assert (grounding["target"][:4] - first_bin).tolist() == bins and grounding["target"][4] == task.dictionary.eos()
    expression = rows[index][2]
    assert task.decode(grounding["source"]) == f'which region does the text " {expression} " describe?'
    source = region_caption["source"].tolist()
    assert [token - first_bin for token in source[-5:-1]] == bins
    assert task.decode(region_caption["target"]) == expression


def test_audio_rows_read_the_audio_at_the_tasks_rate(streams):
    task = unify_task(streams, matching_ratio=0.0)
    task.load_dataset("train")
    dataset, rows = stream_rows(task, "train", "audio")
    (caption,) = samples_of(dataset, 0)
    assert task.decode(caption["source"]) == "what does the audio describe?"
    assert caption["patch_audio"].shape == (16000,) and caption["patch_type"] == 2


def test_a_mixed_batch_runs_once_and_each_stream_loss_is_normalised_on_its_own(streams):
    task = unify_task(streams)
    task.load_dataset("train")
    mixture = task.dataset("train")
    batch_indices = mixture.batch_by_size(mixture.ordered_indices(), max_sentences=6)[0]
    assert [mixture.locate(index)[0] for index in batch_indices] == [0, 0, 1, 1, 2, 2]
    items = [mixture[index] for index in batch_indices]
    batch = mixture.collater(items)
    net_input = batch["net_input"]
    counts = [sum(len(item["samples"]) for stream, item in items if stream == number) for number in range(3)]
    assert batch["stream_ids"].tolist() == [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
    # media tensors hold only their own modality's samples, no placeholders
    assert net_input["patch_images"].size(0) == counts[0] and net_input["patch_videos"].size(0) == counts[1]
    assert net_input["patch_audios"].size(0) == counts[2] and batch["streams"] == ["image", "video", "audio"]

    model = build_tiny_model(task.dictionary, video_encoder="r3d_18", audio_encoder="cnn6", audio_sample_rate=16000,
                             audio_hop_size=160, audio_window_size=512, audio_fmax=8000.0)
    task.adopt_model(model)
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1).eval()
    with torch.no_grad():
        loss, sample_size, logging_output = criterion(model, batch)
        expected = {}
        for number, name in enumerate(batch["streams"]):
            alone = mixture.datasets[name].collater([item for stream, item in items if stream == number])
            stream_loss, stream_size, _ = criterion(model, alone)
            expected[name] = float(stream_loss / stream_size)
    assert sample_size == 1
    for name, value in expected.items():
        assert float(logging_output[f"_stream_{name}_loss"]) == pytest.approx(value, rel=1e-4)
    assert float(loss) == pytest.approx(sum(expected.values()), rel=1e-4)
    # not the loss over all tokens together
    assert float(loss) != pytest.approx(float(logging_output["nll_loss"]) / logging_output["loss_tokens"], rel=0.1)
    # a batch of one stream (as validation's are) logs every stream's keys, the absent ones with count 0: ranks
    # sum their logs in one buffer, so the keys must not depend on which stream a rank's batch is from
    image_only = mixture.collater([(stream, item) for stream, item in items if stream == 0])
    with torch.no_grad():
        _, _, alone_logged = criterion(model, image_only)
    assert {key for key in alone_logged if key.startswith("_stream_")} == \
        {key for key in logging_output if key.startswith("_stream_")}
    assert [alone_logged[f"_stream_{name}_count"] for name in ("image", "video", "audio")] == [1, 0, 0]
    assert float(alone_logged["_stream_video_loss"]) == 0.0
    with metrics.aggregate() as aggregated:
        criterion.reduce_metrics([alone_logged])
    assert "loss_image" in aggregated.get_smoothed_values() and "loss_video" not in aggregated.get_smoothed_values()


def test_bad_rows_name_file_and_line_or_are_skipped_and_counted(streams, tmp_path):
    data, media = streams
    rows = (data / "image_train.tsv").read_text().splitlines()
    broken = rows[:3] + [rows[3].rsplit("\t", 1)[0] + "\tdetection"] + rows[4:]
    grounding = next(i for i, row in enumerate(broken) if row.endswith("\tvisual_grounding"))
    fields = broken[grounding].split("\t")
    fields[4] = "0,0,500,40"  # outside the 128 px image
    broken[grounding] = "\t".join(fields)
    (tmp_path / "image_train.tsv").write_text("\n".join(broken) + "\n")
    task = unify_task((tmp_path, media), streams="image")
    task.load_dataset("train")
    dataset = task.dataset("train").datasets["image"]
    with pytest.raises(ValueError, match=r"image_train.tsv:4: unknown type 'detection'"):
        dataset[3]
    with pytest.raises(ValueError, match=rf"image_train.tsv:{grounding + 1}: box .* lies outside the 128x128 image"):
        dataset[grounding]
    skipping = unify_task((tmp_path, media), streams="image", skip_bad_rows=True)
    skipping.load_dataset("train")
    mixture = skipping.dataset("train")
    batch = mixture.collater([mixture[index] for index in (2, 3, grounding)])
    assert batch["num_skipped"] == 2 and batch["stream_ids"].tolist() == [0] * len(batch["target"])


def test_streams_and_options_are_checked(streams):
    with pytest.raises(FileNotFoundError, match="stream 'speech', split 'train': .*speech_train.tsv not found"):
        unify_task(streams, streams="image,speech").load_dataset("valid")
    task = unify_task(streams, valid_subset="test")
    with pytest.raises(FileNotFoundError, match="image_test.tsv not found .*pass --disable-validation"):
        task.load_dataset("test")
    with pytest.raises(ValueError, match="a stream is named twice"):
        unify_task(streams, streams="image,image")
    with pytest.raises(ValueError, match="--matching-ratio must be in"):
        unify_task(streams, matching_ratio=1.5)
    with pytest.raises(ValueError, match="2 weights for 3 streams"):
        unify_task(streams, stream_weights="1,2")
