"""Criterion ``adjust_label_smoothed_encouraging_loss``: the label-smoothed cross entropy of
``adjust_label_smoothed_cross_entropy`` plus the encouraging-loss bonus (Zhao et al. 2021), which keeps rewarding
well-classified tokens."""
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
from fairseq.criterions import register_criterion
from torch import Tensor

from unival.criterions.adjust_label_smoothed_cross_entropy import (
    AdjustLabelSmoothedCrossEntropyConfig, AdjustLabelSmoothedCrossEntropyCriterion, label_smoothed_sum)

# 1 - p is clamped here so that log(1 - p) stays finite when p rounds to 1 (only reachable with --log-end 1).
MIN_COMPLEMENT = 1e-5


@dataclass
class AdjustLabelSmoothedEncouragingLossConfig(AdjustLabelSmoothedCrossEntropyConfig):
    log_end: float = field(
        default=0.75, metadata={"help": "in (0, 1]: above this probability the bonus log(1 - p) is continued by its "
                                        "tangent, which bounds it (1 keeps the full log; 0.75 or 0.5 are the "
                                        "recommended first tries)"})


def encouraging_bonus(probs: Tensor, log_end: float) -> Tensor:
    """Elementwise bonus log(1 - p); for p > ``log_end`` the straight line tangent to it at ``log_end``
    (value log(1 - log_end), slope -1 / (1 - log_end)), so a confident prediction keeps a finite gradient."""
    bonus = torch.log(torch.clamp(1.0 - probs, min=MIN_COMPLEMENT))
    if log_end < 1.0:
        tangent = math.log(1.0 - log_end) - (probs - log_end) / (1.0 - log_end)
        bonus = torch.where(probs > log_end, tangent, bonus)
    return bonus


@register_criterion("adjust_label_smoothed_encouraging_loss", dataclass=AdjustLabelSmoothedEncouragingLossConfig)
class AdjustLabelSmoothedEncouragingLossCriterion(AdjustLabelSmoothedCrossEntropyCriterion):
    """Per token: smoothed cross entropy + smoothed bonus, where the bonus is weighted by the same smoothed
    target distribution as the cross entropy (target 1 - eps, each other allowed token eps / (allowed - 1)).
    OFA's version spreads the bonus's smoothing mass as eps / V over the whole vocabulary instead, even with a
    constraint; the two agree without smoothing. Confidence weights and drop-worst apply to the sum; the logged
    ``nll_loss`` stays the plain negative log-likelihood."""

    def __init__(self, task, sentence_avg: bool, label_smoothing: float = 0.1, report_accuracy: bool = False,
                 ignore_prefix_size: int = 0, ignore_eos: bool = False, drop_worst_ratio: float = 0.0,
                 drop_worst_after: int = 0, constraint_range: Optional[str] = None, log_end: float = 0.75):
        super().__init__(task, sentence_avg, label_smoothing=label_smoothing, report_accuracy=report_accuracy,
                         ignore_prefix_size=ignore_prefix_size, ignore_eos=ignore_eos,
                         drop_worst_ratio=drop_worst_ratio, drop_worst_after=drop_worst_after,
                         constraint_range=constraint_range)
        if not 0.0 < log_end <= 1.0:
            raise ValueError(f"--log-end must be in (0, 1], got {log_end}")
        self.log_end = log_end

    def token_losses(self, lprobs: Tensor, target: Tensor, allowed: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        loss, nll_loss = super().token_losses(lprobs, target, allowed)
        bonus = encouraging_bonus(lprobs.exp(), self.log_end)
        return loss + label_smoothed_sum(bonus, target, self.eps, allowed), nll_loss
