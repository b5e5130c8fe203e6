"""Grounding and entailment metrics on hand-computed boxes and answers, and the logged percentages."""
import math

import pytest
import torch
from fairseq import metrics

from unival.task_metrics import (box_iou, box_size_bucket, entailment_accuracy, grounding_accuracy, grounding_hits,
                                 log_accuracy, log_ratio, summed)


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_box_iou_of_hand_computed_pairs():
    predicted = boxes([0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4], [5, 5, 5, 9], [3, 3, 3, 3])
    truth = boxes([5, 5, 15, 15], [0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 2, 8], [0, 0, 10, 10], [3, 3, 3, 3])
    # overlap 25 / union 175; identical; disjoint; overlap 8 / union 16 + 16 - 8; an empty box; two empty boxes
    assert box_iou(predicted, truth).tolist() == pytest.approx([1 / 7, 1.0, 0.0, 1 / 3, 0.0, 0.0])


def test_a_box_with_swapped_corners_has_no_area():
    assert box_iou(boxes([10, 10, 0, 0]), boxes([0, 0, 10, 10])).tolist() == [0.0]


def test_box_iou_refuses_tensors_of_other_shapes():
    with pytest.raises(ValueError, match=r"\(2, 4\) and \(1, 4\)"):
        box_iou(torch.zeros(2, 4), torch.zeros(1, 4))


@pytest.mark.parametrize("box,bucket", [([0, 0, 31, 32], "small"), ([0, 0, 32, 32], "medium"),
                                        ([10, 10, 105, 107], "medium"), ([0, 0, 96, 96], "large"),
                                        ([0, 0, 0, 500], "small")])
def test_size_buckets_use_cocos_area_thresholds(box, bucket):
    assert box_size_bucket(box) == bucket


def test_grounding_accuracy_overall_and_by_size():
    # IoUs: 1/7 (small truth), 1 (small), 0.5 exactly (medium: 40 x 40 truth, half covered), 0 (large)
    predicted = boxes([0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 40, 20], [0, 0, 1, 1])
    truth = boxes([5, 5, 15, 15], [0, 0, 10, 10], [0, 0, 40, 40], [100, 100, 300, 300])
    assert grounding_hits(predicted, truth).tolist() == [False, True, True, False]
    assert grounding_accuracy(predicted, truth) == {
        "accuracy": 50.0, "count": 4, "accuracy_small": 50.0, "count_small": 2, "accuracy_medium": 100.0,
        "count_medium": 1, "accuracy_large": 0.0, "count_large": 1}


def test_grounding_accuracy_leaves_out_empty_buckets_and_has_none_without_boxes():
    assert grounding_accuracy(boxes([0, 0, 10, 10]), boxes([0, 0, 10, 10])) == {
        "accuracy": 100.0, "count": 1, "accuracy_small": 100.0, "count_small": 1}
    empty = grounding_accuracy(torch.zeros(0, 4), torch.zeros(0, 4))
    assert math.isnan(empty["accuracy"]) and empty["count"] == 0


def test_entailment_accuracy():
    assert entailment_accuracy(["yes", "no", "maybe", "no"], ["yes", "maybe", "maybe", "no "]) == 75.0
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        entailment_accuracy(["yes", "no"], ["yes"])


def test_logged_accuracy_sums_hits_and_counts_over_logging_outputs():
    logs = [{"_acc_hits": 1, "_acc_count": 4}, {"_acc_hits": 2, "_acc_count": 4}, {"other": 1}]
    with metrics.aggregate() as aggregated:
        log_accuracy("acc", logs)
        log_accuracy("missing", logs)
    values = aggregated.get_smoothed_values()
    assert values["acc"] == 37.5 and "missing" not in values


def test_logged_metrics_of_ranks_summed_into_tensors():
    """In multi-GPU training fairseq sums the ranks' logging outputs into float64 tensors before the task reduces
    them (seen with 2 processes: round() then failed on a tensor at the first validation)."""
    logs = [{"_acc_hits": torch.tensor(3.0, dtype=torch.float64), "_acc_count": torch.tensor(8.0, dtype=torch.float64),
             "_cider_score_sum": torch.tensor(1.5, dtype=torch.float64),
             "_cider_count": torch.tensor(2.0, dtype=torch.float64), "_empty_count": torch.tensor(0.0)}]
    with metrics.aggregate() as aggregated:
        log_accuracy("acc", logs)
        log_ratio("cider", "_cider_score_sum", "_cider_count", logs)
        log_accuracy("empty", logs)
    values = aggregated.get_smoothed_values()
    assert values["acc"] == 37.5 and values["cider"] == 75.0 and "empty" not in values
    assert summed(logs, "_acc_count") == 8.0 and not torch.is_tensor(summed(logs, "_acc_count"))


def test_entailment_labels_and_grounding_boxes_as_a_user_passes_them():
    from unival.task_metrics import entailment_accuracy, grounding_accuracy
    assert entailment_accuracy(["yes", "No", " maybe", "Entailment"], ["yes", "no", "neutral", "yes"]) == 100.0
    with pytest.raises(ValueError, match="label 'banana' is not one of"):
        entailment_accuracy(["banana"], ["yes"])
    assert grounding_accuracy([[0, 0, 10, 10]], [[0, 0, 10, 10]])["accuracy"] == 100.0  # lists, not tensors
