"""Metrics of the non-caption tasks: grounding (box IoU, Acc@0.5 overall and by box size) and visual entailment
accuracy as pure functions for the evaluation entry, and the logging of summed hit counts for the tasks' validation."""
from typing import Dict, Sequence

import torch
from fairseq import metrics, utils
from torch import Tensor

# Size buckets of a ground-truth box, by its area in pixels of the original image, with COCO's thresholds:
# small < 32^2, medium 32^2 .. < 96^2, large >= 96^2. COCO measures the object's mask; a box is all we have.
SMALL_MAX_AREA = 32 ** 2
LARGE_MIN_AREA = 96 ** 2
SIZE_BUCKETS = ("small", "medium", "large")
IOU_THRESHOLD = 0.5


# ---- grounding ----------------------------------------------------------------------------------------------

def box_area(boxes: Tensor) -> Tensor:
    """(N,) areas of (N, 4) boxes ``x0, y0, x1, y1``; 0 for boxes with x1 < x0 or y1 < y0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(boxes: Tensor, other: Tensor) -> Tensor:
    """(N,) intersection over union of each box of ``boxes`` (N, 4) with the box of the same row of ``other``;
    0 where both boxes are empty."""
    if boxes.shape != other.shape or boxes.dim() != 2 or boxes.size(1) != 4:
        raise ValueError(f"box_iou: expected two (N, 4) tensors, got {tuple(boxes.shape)} and {tuple(other.shape)}")
    boxes, other = boxes.double(), other.double()
    corners = torch.cat([torch.maximum(boxes[:, :2], other[:, :2]), torch.minimum(boxes[:, 2:], other[:, 2:])], 1)
    intersection = box_area(corners)
    union = box_area(boxes) + box_area(other) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def box_size_bucket(box: Sequence[float]) -> str:
    """"small", "medium" or "large": the COCO bucket of a box's area, in pixels of the original image
    (small < 32^2 <= medium < 96^2 <= large)."""
    x0, y0, x1, y1 = (float(c) for c in box)
    area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    if area < SMALL_MAX_AREA:
        return "small"
    return "medium" if area < LARGE_MIN_AREA else "large"


def grounding_hits(predicted: Tensor, ground_truth: Tensor, threshold: float = IOU_THRESHOLD) -> Tensor:
    """(N,) bool: whether each predicted box overlaps its ground-truth box with IoU >= ``threshold``."""
    return box_iou(predicted, ground_truth) >= threshold


def grounding_accuracy(predicted: Tensor, ground_truth: Tensor, threshold: float = IOU_THRESHOLD) -> Dict[str, float]:
    """Acc@``threshold`` in percent of (N, 4) predicted boxes against their ground truth (original pixels):
    ``{"accuracy": %, "count": N, "accuracy_small": %, "count_small": n, ...}``; a size bucket without boxes is
    left out (see :func:`box_size_bucket` for the buckets)."""
    predicted, ground_truth = torch.as_tensor(predicted), torch.as_tensor(ground_truth)
    hits = grounding_hits(predicted, ground_truth, threshold)
    summary = {"accuracy": percent(int(hits.sum()), len(hits)), "count": len(hits)}
    buckets = [box_size_bucket(box) for box in ground_truth.tolist()]
    for bucket in SIZE_BUCKETS:
        chosen = [hit for hit, name in zip(hits.tolist(), buckets) if name == bucket]
        if chosen:
            summary[f"accuracy_{bucket}"] = percent(sum(chosen), len(chosen))
            summary[f"count_{bucket}"] = len(chosen)
    return summary


def percent(hits: int, count: int) -> float:
    """100 * hits / count; nan for no samples (an empty split has no accuracy, not 0)."""
    return 100.0 * hits / count if count else float("nan")


# ---- visual entailment --------------------------------------------------------------------------------------

ENTAILMENT_LABELS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe",
                     "yes": "yes", "no": "no", "maybe": "maybe"}


def entailment_label(text: str) -> str:
    """yes / no / maybe of an answer or label, in any case, also given as SNLI's entailment / contradiction /
    neutral; ValueError for anything else."""
    label = ENTAILMENT_LABELS.get(text.strip().lower())
    if label is None:
        raise ValueError(f"label {text!r} is not one of {', '.join(ENTAILMENT_LABELS)}")
    return label


def entailment_accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Percentage of predicted answers equal to their label, both read by :func:`entailment_label`."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    hits = sum(entailment_label(answer) == entailment_label(label) for answer, label in zip(predictions, labels))
    return percent(hits, len(labels))


# ---- validation logging -------------------------------------------------------------------------------------

def summed(logging_outputs, key: str) -> float:
    """The sum of ``key`` over the logging outputs as a Python number. In multi-GPU training fairseq sums the
    ranks' outputs into tensors (on the GPU) before the task reduces them; Python's round() refuses tensors."""
    return utils.item(sum(log.get(key, 0) for log in logging_outputs))


def log_ratio(name: str, sum_key: str, count_key: str, logging_outputs) -> None:
    """Logs metric ``name`` = 100 * sum / count from the ``sum_key`` and ``count_key`` entries of the logging
    outputs, when they count any sample; summed counts aggregate exactly over batches and ranks."""
    count = summed(logging_outputs, count_key)
    if not count:
        return
    metrics.log_scalar(sum_key, summed(logging_outputs, sum_key))
    metrics.log_scalar(count_key, count)
    metrics.log_derived(name, lambda meters: round(100 * meters[sum_key].sum / meters[count_key].sum, 2))


def log_accuracy(name: str, logging_outputs) -> None:
    """Logs metric ``name`` = 100 * hits / count (percent) from the ``_{name}_hits`` and ``_{name}_count``
    entries of the logging outputs."""
    log_ratio(name, f"_{name}_hits", f"_{name}_count", logging_outputs)
