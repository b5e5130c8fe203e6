"""The refcoco task: prompt and box bins of a sample, boxes mapped back to the original image, bad rows, the loss
restricted to bins, validation metrics and fairseq-generate's four-bin decoding."""
from functools import partial

import pytest
import torch
from fairseq import metrics
from fairseq.dataclass.configs import GenerationConfig
from omegaconf import OmegaConf

from unival.criterions.adjust_label_smoothed_cross_entropy import (AdjustLabelSmoothedCrossEntropyConfig,
                                                                    AdjustLabelSmoothedCrossEntropyCriterion)
from unival.tasks.refcoco import RefcocoConfig, RefcocoTask, bins_from_text

import task_files
from task_files import first_rows_batch, setup_task


write_split = partial(task_files.write_split, prefix="refcoco")
make_task = partial(setup_task, RefcocoTask, RefcocoConfig, prefix="refcoco")


@pytest.fixture(scope="module")
def demo_batch(image_corpus, tiny_model):
    """(task, tiny model, a batch of the first validation rows) of the demo corpus, built once for the module."""
    task = make_task(image_corpus)
    return task, tiny_model(task.dictionary), first_rows_batch(task, "valid", 6)


def good_rows(image_field):
    # a 200 x 100 image: x scales by 32 / 200, y by 32 / 100 when resized to 32 x 32
    return [["7", "70", "The red-box.", "20,10,120,90", image_field(200, 100)],
            ["8", "71", "the blue square", "0,0,10,20", image_field(40, 40)]]


def test_sample_holds_the_prompt_and_the_bins_of_the_resized_box(tmp_path, image_field):
    write_split(tmp_path, "train", good_rows(image_field))
    task = make_task(tmp_path)
    task.load_dataset("train")
    dataset = task.dataset("train")
    batch = dataset.collater([dataset[0]])
    assert task.decode(batch["net_input"]["src_tokens"][0]) == 'which region does the text " the red box " describe?'
    assert not batch["net_input"]["src_tokens"].eq(task.dictionary.unk()).any()
    # resized box (3.2, 3.2, 19.2, 28.8) of 32: bins round(c / 32 * 999) = 99.9, 99.9, 599.4, 899.1
    first = task.bin_range[0]
    assert batch["target"][0].tolist() == [first + 100, first + 100, first + 599, first + 899, 2]
    assert batch["net_input"]["prev_output_tokens"][0].tolist() == [0, first + 100, first + 100, first + 599,
                                                                     first + 899]
    assert task.decode(batch["target"][0]) == "<bin_100><bin_100><bin_599><bin_899>"
    assert batch["references"] == [(20, 10, 120, 90)] and batch["image_size"] == [(200, 100)]
    assert batch["net_input"]["patch_images"].shape == (1, 3, 32, 32)
    assert task.bin_range == (task.dictionary.index("<bin_0>"), len(task.dictionary))


class ScriptedGenerator:
    """Returns the given token ids as the best hypothesis of every sample."""

    def __init__(self, tokens):
        self.tokens = tokens

    def generate(self, models, sample, **kwargs):
        return [[{"tokens": torch.tensor(self.tokens)}] for _ in sample["uniq_ids"]]


def test_predicted_bins_are_mapped_back_to_pixels_of_the_original_image(tmp_path, image_field):
    write_split(tmp_path, "train", good_rows(image_field))
    task = make_task(tmp_path)
    task.load_dataset("train")
    batch = task.dataset("train").collater([task.dataset("train")[0]])
    first = task.bin_range[0]
    generator = ScriptedGenerator([first + 100, first + 100, first + 599, first + 899, 2])
    (box,) = task.predicted_boxes(generator, None, batch).tolist()
    # bin k of the 200 x 100 image is k / 999 * 200 (x) or k / 999 * 100 (y)
    assert box == pytest.approx([100 / 999 * 200, 100 / 999 * 100, 599 / 999 * 200, 899 / 999 * 100])


BAD_ROWS = {
    "box outside the image": ("0,0,250,50", "lies outside the 200x100 image"),
    "box with three numbers": ("1,2,3", "'1,2,3'"),
    "box with x0 > x1": ("50,0,40,10", "x0 <= x1"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_box_raises_naming_file_line_and_value(tmp_path, image_field, case):
    box, reason = BAD_ROWS[case]
    path = write_split(tmp_path, "train", good_rows(image_field) + [["9", "72", "the box", box, image_field(200, 100)]])
    task = make_task(tmp_path)
    task.load_dataset("train")
    with pytest.raises(ValueError) as error:
        task.dataset("train")[2]
    assert f"{path}:3" in str(error.value) and reason in str(error.value)


def test_an_empty_expression_raises_naming_file_and_line(tmp_path, image_field):
    path = write_split(tmp_path, "train", good_rows(image_field) + [["9", "72", " ... ", "0,0,5,5", image_field(9, 9)]])
    task = make_task(tmp_path)
    task.load_dataset("train")
    with pytest.raises(ValueError, match=f"{path}:3: empty referring expression"):
        task.dataset("train")[2]


def criterion_config(**values):
    """The criterion's options as fairseq-train hands them to the task."""
    return OmegaConf.structured(AdjustLabelSmoothedCrossEntropyConfig(
        _name="adjust_label_smoothed_cross_entropy", sentence_avg=False, **values))


def test_the_loss_is_restricted_to_the_bins_unless_a_range_is_given(tmp_path, image_field):
    write_split(tmp_path, "train", good_rows(image_field))
    task = make_task(tmp_path)
    assert task.build_criterion(criterion_config()).constraint_range == task.bin_range
    assert task.build_criterion(criterion_config(constraint_range="4,8")).constraint_range == (4, 8)
    free = make_task(tmp_path, constrain_loss_to_bins=False)
    assert free.build_criterion(criterion_config()).constraint_range is None


def test_fairseq_generate_decodes_exactly_four_bins(demo_batch):
    task, model, batch = demo_batch
    generator = task.build_generator([model], GenerationConfig(beam=5))
    start, end = task.bin_range
    for hypotheses in task.inference_step(generator, [model], batch):
        assert len(hypotheses) == 5
        for hypothesis in hypotheses:
            tokens = hypothesis["tokens"].tolist()
            assert len(tokens) == 5 and tokens[-1] == task.dictionary.eos()
            assert all(start <= token < end for token in tokens[:4])
            text = task.decode(hypothesis["tokens"])
            assert bins_from_text(text) == [token - start for token in tokens[:4]]


def test_bins_are_read_from_generate_lines_and_anything_else_is_refused():
    assert bins_from_text("<bin_12><bin_40><bin_3><bin_999>") == [12, 40, 3, 999]
    assert bins_from_text("<bin_12> <bin_40> <bin_3> <bin_999>") == [12, 40, 3, 999]
    for text in ("<bin_1><bin_2><bin_3>", "<bin_1><bin_2><bin_3><bin_4> a", ""):
        with pytest.raises(ValueError, match="exactly 4"):
            bins_from_text(text)


def test_valid_step_logs_acc50_overall_and_by_box_size(demo_batch):
    task, model, batch = demo_batch
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, constraint_range="{},{}".format(
        *task.bin_range))
    _, _, logging_output = task.valid_step(batch, model, criterion)
    assert logging_output["_acc50_count"] == 6
    assert sum(logging_output[f"_acc50_{size}_count"] for size in ("small", "medium", "large")) == 6
    with metrics.aggregate() as aggregated:
        task.reduce_metrics([logging_output], criterion)
    values = aggregated.get_smoothed_values()
    assert 0 <= values["acc50"] <= 100 and "loss" in values


def test_reduced_accuracies_are_percentages_of_summed_hits(demo_batch):
    task, _, _ = demo_batch
    # (hits, count) of two batches, overall ("") and by size
    batches = [{"": (1, 2), "_small": (1, 1), "_medium": (0, 1), "_large": (0, 0)},
               {"": (2, 2), "_small": (2, 2), "_medium": (0, 0), "_large": (0, 0)}]
    logs = [{"ntokens": 10, "nsentences": 2, **{f"_acc50{size}_hits": hits for size, (hits, _) in counts.items()},
             **{f"_acc50{size}_count": count for size, (_, count) in counts.items()}} for counts in batches]
    with metrics.aggregate() as aggregated:
        task.reduce_metrics(logs, AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False))
    values = aggregated.get_smoothed_values()
    assert values["acc50"] == 75.0 and values["acc50_small"] == 100.0 and values["acc50_medium"] == 0.0
    assert "acc50_large" not in values
