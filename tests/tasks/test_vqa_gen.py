"""vqa_gen and video_vqa_gen: samples, the answer trie in training and decoding, all-candidate scoring, VQA
accuracy, bad rows."""
from functools import partial

import pytest
import torch
from fairseq import metrics

from unival.constrained import score_candidates
from unival.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
from unival.data_utils.answers import answer_confidences
from unival.data_utils.demo_corpus import write_demo_corpus
from unival.tasks.video_vqa_gen import VideoVqaGenConfig, VideoVqaGenTask
from unival.tasks.vqa_gen import VqaGenConfig, VqaGenTask, vqa_score

from task_files import build_tiny_model, first_rows_batch, setup_task


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqa") / "data"
    write_demo_corpus(folder, seed=3, num_images=(4, 2, 2), num_videos=(2, 1, 1), modalities=("image", "video"))
    return folder


vqa_task = partial(setup_task, VqaGenTask, VqaGenConfig, prefix="vqa")
batch_of = first_rows_batch


def task_model(task, **overrides):
    return build_tiny_model(task.dictionary, **overrides)


def test_sample_holds_question_most_confident_answer_and_its_weight(corpus):
    task = vqa_task(corpus)
    task.load_dataset("train")
    dataset = task.dataset("train")
    rows = [dataset.reader.row(i) for i in range(len(dataset))]
    index = next(i for i, row in enumerate(rows) if row[2] == "how many shapes are there?")
    sample = dataset[index]
    assert task.decode(sample["source"]) == "how many shapes are there?"
    best, second = sorted(answer_confidences(rows[index][3]).items(), key=lambda item: -item[1])
    assert task.decode(sample["target"]) == best[0] and sample["conf"] == best[1] == 1.0
    assert sample["references"] == {best[0]: 1.0, second[0]: 0.6}
    # the loss may only spread over the answer trie: at the first position, the first tokens of the answers
    mask = sample["constraint_mask"]
    assert mask.shape == (len(sample["target"]), len(task.dictionary))
    first_tokens = {int(candidate[0]) for candidate in task.candidates}
    assert set(mask[0].nonzero().flatten().tolist()) == first_tokens
    assert mask[-1].nonzero().flatten().tolist() == [task.dictionary.eos()]


def test_constrained_loss_is_finite_and_smaller_than_over_the_whole_vocabulary(corpus):
    task = vqa_task(corpus)
    model = task_model(task)
    batch = batch_of(task, "train", 4)
    assert batch["constraint_masks"].shape[:2] == batch["target"].shape
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.0)
    constrained, _, _ = criterion(model, batch)
    free, _, _ = criterion(model, {k: v for k, v in batch.items() if k != "constraint_masks"})
    assert torch.isfinite(constrained) and constrained < free


def test_beam_search_answers_come_from_the_answer_list(corpus):
    task = vqa_task(corpus)
    model = task_model(task)
    batch = batch_of(task, "valid", 6)
    answers = task.predict(model, batch)
    assert len(answers) == 6 and set(answers) <= set(task.answers)


def test_all_candidate_scores_are_teacher_forced_log_probabilities(corpus):
    task = vqa_task(corpus, val_inference_type="allcand", candidate_chunk_size=3)
    model = task_model(task)
    batch = batch_of(task, "valid", 2)
    scores = score_candidates(model, batch, task.candidates, 0, 1, chunk_size=3)
    for row in range(2):
        for index in (0, len(task.candidates) - 1):
            candidate = task.candidates[index]
            single = {"net_input": {k: v[row:row + 1] for k, v in batch["net_input"].items()
                                    if k != "prev_output_tokens"}}
            previous = torch.cat([torch.tensor([0]), candidate[:-1]]).unsqueeze(0)
            logits = model(**single["net_input"], prev_output_tokens=previous)[0]
            expected = torch.log_softmax(logits, -1)[0].gather(-1, candidate.unsqueeze(-1)).sum()
            assert scores[row, index].item() == pytest.approx(expected.item(), abs=1e-4)
    assert task.predict(model, batch) == [task.answers[i] for i in scores.argmax(-1).tolist()]


def test_validation_reports_vqa_accuracy(corpus):
    task = vqa_task(corpus)
    model = task_model(task)
    batch = batch_of(task, "valid", 4)
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False)
    _, _, log = task.valid_step(batch, model, criterion)
    predictions = task.predict(model, batch)
    expected = sum(vqa_score(p, refs) for p, refs in zip(predictions, batch["references"]))
    assert log["_vqa_score_count"] == 4 and log["_vqa_score_hits"] == pytest.approx(expected)
    with metrics.aggregate() as aggregated:
        task.reduce_metrics([log], criterion)
    assert aggregated.get_smoothed_values()["vqa_score"] == pytest.approx(round(100 * expected / 4, 2))


def test_vqa_score_is_the_matching_confidence():
    refs = {"two": 1.0, "2": 0.6}
    assert vqa_score("two", refs) == 1.0 and vqa_score(" 2 ", refs) == 0.6 and vqa_score("three", refs) == 0.0


def test_a_bad_answer_field_names_file_and_line(corpus, tmp_path):
    lines = (corpus / "vqa_valid.tsv").read_text().splitlines()
    fields = lines[1].split("\t")
    fields[3] = "yes"  # no confidence
    (tmp_path / "vqa_valid.tsv").write_text("\n".join([lines[0], "\t".join(fields)]) + "\n")
    (tmp_path / "vqa_train.tsv").write_text((corpus / "vqa_train.tsv").read_text())
    (tmp_path / "answers.txt").write_text((corpus / "answers.txt").read_text())
    task = vqa_task(tmp_path)
    task.load_dataset("valid")
    with pytest.raises(ValueError, match=r"vqa_valid.tsv:2: .*bad answer candidate 'yes'"):
        task.dataset("valid")[1]


def test_missing_answer_list_option_is_an_error(corpus):
    with pytest.raises(FileNotFoundError, match="--answer-list /nowhere/answers.txt"):
        vqa_task(corpus, answer_list="/nowhere/answers.txt")


def test_video_questions_read_frames_and_answer_inside_the_list(corpus):
    task = VideoVqaGenTask.setup_task(VideoVqaGenConfig(
        data=str(corpus), tsv_prefix="video_vqa", num_frames=2, patch_frame_size=32, train_subset="train",
        valid_subset="valid", seed=1))
    batch = batch_of(task, "valid", 2)
    assert batch["net_input"]["patch_videos"].shape == (2, 3, 2, 32, 32)
    assert batch["net_input"]["patch_types"].tolist() == [1, 1]
    model = task_model(task, video_encoder="r3d_18")
    assert set(task.predict(model, batch)) <= set(task.answers)


def test_answers_outside_the_list_train_unconstrained_and_are_counted(corpus, tmp_path, caplog):
    answers = (corpus / "answers.txt").read_text().splitlines()
    short_list = tmp_path / "answers.txt"
    short_list.write_text("\n".join(answers[:3]) + "\n")
    task = vqa_task(corpus, answer_list=str(short_list))
    task.load_dataset("train")
    dataset = task.dataset("train")
    samples = [dataset[index] for index in range(8)]
    unlisted = [task.decode(sample["target"]) not in answers[:3] for sample in samples]
    assert [sample["unlisted"] for sample in samples] == unlisted and 0 < sum(unlisted) < 8
    assert all(sample["constraint_mask"].all() for sample, outside in zip(samples, unlisted) if outside)
    assert len([record for record in caplog.records if "is not in the answer list" in record.message]) == 1
    batch = dataset.collater(samples)
    model = task_model(task)
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.0)
    _, _, logged = task.valid_step(batch, model, criterion)
    assert logged["num_unlisted"] == sum(unlisted)
    with metrics.aggregate() as aggregated:
        task.reduce_metrics([logged], criterion)
    assert aggregated.get_smoothed_values()["unlisted_answers"] == sum(unlisted)
