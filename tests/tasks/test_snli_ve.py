"""The snli_ve task: prompts with and without the premise, labels and their answers, the loss over the three
answers, bad rows, validation accuracy and fairseq-generate's choice among yes / no / maybe."""
from functools import partial

import pytest
from fairseq import metrics
from fairseq.dataclass.configs import GenerationConfig

from unival.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
from unival.tasks.snli_ve import ANSWERS, SnliVeConfig, SnliVeTask, answer_of_label

import task_files
from task_files import first_rows_batch, setup_task


write_split = partial(task_files.write_split, prefix="snli_ve")
make_task = partial(setup_task, SnliVeTask, SnliVeConfig, prefix="snli_ve")


@pytest.fixture(scope="module")
def demo_batch(image_corpus, tiny_model):
    """(task, tiny model, a batch of the first validation rows) of the demo corpus, built once for the module."""
    task = make_task(image_corpus)
    return task, tiny_model(task.dictionary), first_rows_batch(task, "valid", 6)


def good_rows(image_field):
    image = image_field(40, 30)
    return [["1", "10", image, "The circle is RED.", "A red circle on the left", "entailment"],
            ["2", "10", image, "the circle is heavy", "a red circle", "neutral"],
            ["3", "10", image, "there is a square", "a red circle", "contradiction"],
            ["4", "10", image, "there is a circle", "a red circle", "yes"]]


def test_samples_hold_the_prompt_the_answer_and_its_label(tmp_path, image_field):
    write_split(tmp_path, "train", good_rows(image_field))
    task = make_task(tmp_path)
    task.load_dataset("train")
    dataset = task.dataset("train")
    samples = [dataset[i] for i in range(4)]
    assert task.decode(samples[0]["source"]) == 'does the image describe " the circle is red "?'
    assert [task.decode(sample["target"]) for sample in samples] == ["yes", "maybe", "no", "yes"]
    assert [sample["references"] for sample in samples] == ["yes", "maybe", "no", "yes"]
    assert samples[0]["target"].tolist() == [task.dictionary.index("3763"), task.dictionary.eos()]  # BPE " yes"
    assert samples[0]["patch_image"].shape == (3, 32, 32)


def test_the_premise_goes_into_the_prompt_on_request(tmp_path, image_field):
    write_split(tmp_path, "train", good_rows(image_field))
    task = make_task(tmp_path, add_caption=True)
    task.load_dataset("train")
    source = task.dataset("train")[0]["source"]
    assert task.decode(source) == 'can image and text1 " a red circle on the left " imply text2 " the circle is red "?'
    assert not source.eq(task.dictionary.unk()).any()


def test_samples_mask_the_loss_to_the_three_answers(tmp_path, image_field):
    write_split(tmp_path, "train", good_rows(image_field))
    write_split(tmp_path, "valid", good_rows(image_field))
    task = make_task(tmp_path)
    task.load_dataset("train")
    mask = task.dataset("train")[0]["constraint_mask"]
    assert mask.shape == (2, len(task.dictionary))
    assert set(mask[0].nonzero().flatten().tolist()) == {int(candidate[0]) for candidate in task.candidates}
    assert mask[1].nonzero().flatten().tolist() == [task.dictionary.eos()]
    task.load_dataset("valid")
    assert task.dataset("valid")[0]["constraint_mask"].equal(mask), "validation loss as in training"
    free = make_task(tmp_path, unconstrained_training=True)
    free.load_dataset("train")
    assert "constraint_mask" not in free.dataset("train")[0]


def test_labels_map_to_answers_and_an_unknown_one_is_named():
    assert [answer_of_label(label) for label in ("entailment", "Contradiction", "neutral", "maybe")] == [
        "yes", "no", "maybe", "maybe"]
    with pytest.raises(ValueError, match="unknown label 'unsure'"):
        answer_of_label("unsure")


@pytest.mark.parametrize("column,value,reason", [(5, "unsure", "unknown label 'unsure'"),
                                                 (3, " ... ", "empty hypothesis")])
def test_a_bad_row_raises_naming_file_and_line(tmp_path, image_field, column, value, reason):
    row = good_rows(image_field)[0]
    row[column] = value
    path = write_split(tmp_path, "train", good_rows(image_field) + [row])
    task = make_task(tmp_path)
    task.load_dataset("train")
    with pytest.raises(ValueError, match=f"{path}:5: {reason}"):
        task.dataset("train")[4]


def test_fairseq_generate_answers_yes_no_or_maybe_as_candidate_scoring_does(demo_batch):
    task, model, batch = demo_batch
    generator = task.build_generator([model], GenerationConfig(beam=5))
    hypotheses = task.inference_step(generator, [model], batch)
    generated = [task.decode(hypos[0]["tokens"]) for hypos in hypotheses]
    assert set(generated) <= set(ANSWERS)
    assert task.predict(model, batch) == generated
    for hypos in hypotheses:  # the beam of 5 is capped at the three answers
        assert sorted(task.decode(h["tokens"]) for h in hypos) == sorted(ANSWERS)


def test_valid_step_logs_the_accuracy_of_the_answers(demo_batch):
    task, model, batch = demo_batch
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False)
    _, _, logging_output = task.valid_step(batch, model, criterion)
    hits = sum(answer == label for answer, label in zip(task.predict(model, batch), batch["references"]))
    assert logging_output["_ve_accuracy_hits"] == hits and logging_output["_ve_accuracy_count"] == 6
    with metrics.aggregate() as aggregated:
        task.reduce_metrics([logging_output, {**logging_output, "_ve_accuracy_hits": 6}], criterion)
    assert aggregated.get_smoothed_values()["ve_accuracy"] == round(100 * (hits + 6) / 12, 2)
