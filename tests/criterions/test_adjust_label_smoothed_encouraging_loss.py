"""Numbers of the criterion ``adjust_label_smoothed_encouraging_loss`` on scripted probabilities, worked out by
hand on both sides of ``log_end``."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions import CRITERION_REGISTRY, build_criterion
from fairseq.data import Dictionary
from fairseq.dataclass.utils import gen_parser_from_dataclass
from torch import nn

from unival.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
from unival.criterions.adjust_label_smoothed_encouraging_loss import (
    AdjustLabelSmoothedEncouragingLossConfig, AdjustLabelSmoothedEncouragingLossCriterion, encouraging_bonus)

EOS = 2


class FixedLogits(nn.Module):
    """Stands in for the model: returns the same logits (B, T, V) whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32).clone())

    def forward(self, **net_input):
        return self.logits, {"attn": [None]}

    def get_normalized_probs(self, net_output, log_probs):
        return F.log_softmax(net_output[0].float(), dim=-1)


class FakeTask:
    def __init__(self, vocab_size):
        self.target_dictionary = Dictionary()
        for index in range(vocab_size - len(self.target_dictionary)):
            self.target_dictionary.add_symbol(f"w{index}")


def make_criterion(vocab_size=4, **options):
    values = dict(sentence_avg=False, label_smoothing=0.0)
    values.update(options)
    return AdjustLabelSmoothedEncouragingLossCriterion(FakeTask(vocab_size), **values).train()


def one_position(criterion, probabilities, target):
    """Loss of one target position whose probabilities are given."""
    lprobs = torch.log(torch.tensor([probabilities]))
    loss, nll = criterion.token_losses(lprobs, torch.tensor([target]), None)
    return loss.item(), nll.item()


def test_registered_and_built_from_options():
    assert CRITERION_REGISTRY["adjust_label_smoothed_encouraging_loss"] is AdjustLabelSmoothedEncouragingLossCriterion
    parser = argparse.ArgumentParser()
    gen_parser_from_dataclass(parser, AdjustLabelSmoothedEncouragingLossConfig())
    args = parser.parse_args(["--log-end", "0.5", "--constraint-range", "5,9", "--drop-worst-ratio", "0.2"])
    assert args.label_smoothing == 0.1
    args.criterion, args.sentence_avg = "adjust_label_smoothed_encouraging_loss", False
    criterion = build_criterion(args, FakeTask(10))
    assert isinstance(criterion, AdjustLabelSmoothedEncouragingLossCriterion)
    assert (criterion.log_end, criterion.constraint_range, criterion.drop_worst_ratio) == (0.5, (5, 9), 0.2)
    assert AdjustLabelSmoothedEncouragingLossConfig().log_end == 0.75


@pytest.mark.parametrize("log_end", [0.0, -0.5, 1.5])
def test_log_end_outside_zero_one_is_refused(log_end):
    with pytest.raises(ValueError, match="log-end"):
        make_criterion(log_end=log_end)


def test_below_log_end_the_bonus_is_log_one_minus_p():
    # p = 0.6 < 0.75: loss = -log 0.6 + log(1 - 0.6) = log(2 / 3)
    loss, nll = one_position(make_criterion(log_end=0.75), [0.6, 0.2, 0.1, 0.1], target=0)
    assert loss == pytest.approx(math.log(0.4) - math.log(0.6), rel=1e-5)
    assert loss == pytest.approx(-0.405465, abs=1e-5)
    assert nll == pytest.approx(-math.log(0.6), rel=1e-5)


def test_above_log_end_the_bonus_follows_the_tangent_with_smoothing():
    loss, nll = one_position(make_criterion(log_end=0.75, label_smoothing=0.1), [0.9, 0.05, 0.03, 0.02], target=0)
    # Smoothing: the target weighs 1 - 0.1 and each of the 3 other tokens 0.1 / 3, for both terms.
    eps_i = 0.1 / 3
    cross_entropy = (0.9 - eps_i) * -math.log(0.9) + eps_i * -(math.log(0.9) + math.log(0.05) + math.log(0.03)
                                                               + math.log(0.02))
    # p = 0.9 > 0.75: the tangent of log(1 - p) at 0.75, log(0.25) - (0.9 - 0.75) / 0.25; the others stay logs.
    target_bonus = math.log(0.25) - 0.6
    bonus = (0.9 - eps_i) * target_bonus + eps_i * (target_bonus + math.log(0.95) + math.log(0.97) + math.log(0.98))
    assert loss == pytest.approx(cross_entropy + bonus, rel=1e-5)
    assert loss == pytest.approx(-1.349095, abs=1e-5)
    assert nll == pytest.approx(-math.log(0.9), rel=1e-5)


def test_bonus_is_continuous_and_bounded():
    probs = torch.tensor([0.0, 0.5, 0.75, 0.75 + 1e-6, 1.0])
    bonus = encouraging_bonus(probs, log_end=0.75)
    assert bonus[0] == 0 and bonus[1].item() == pytest.approx(math.log(0.5))
    assert bonus[3].item() == pytest.approx(bonus[2].item(), abs=1e-4)
    assert bonus[4].item() == pytest.approx(math.log(0.25) - 1.0, rel=1e-6)
    # log_end 1 keeps the full log, clamped at 1 - p = 1e-5
    full = encouraging_bonus(probs, log_end=1.0)
    assert full[4].item() == pytest.approx(math.log(1e-5), rel=1e-6)


def test_confident_prediction_keeps_a_finite_gradient():
    logits = torch.zeros(1, 1, 4)
    logits[0, 0, 3] = 30.0  # p(target) rounds to 1 in float32
    model = FixedLogits(logits)
    loss, _, _ = make_criterion(log_end=0.75)(model, {"net_input": {}, "target": torch.tensor([[3]]), "ntokens": 1})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(model.logits.grad).all()


def test_forward_adds_the_bonus_of_allowed_tokens_to_the_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 10)
    sample = {"net_input": {}, "target": torch.tensor([[6, 8, EOS], [7, EOS, 1]]), "ntokens": 5}
    options = dict(sentence_avg=False, label_smoothing=0.1, constraint_range="6,9")
    loss, sample_size, logging = AdjustLabelSmoothedEncouragingLossCriterion(FakeTask(10), log_end=0.5, **options)(
        FixedLogits(logits), sample)
    base_loss, _, base_logging = AdjustLabelSmoothedCrossEntropyCriterion(FakeTask(10), **options)(
        FixedLogits(logits), sample)

    allowed = [EOS, 6, 7, 8]
    probs = logits[..., allowed].softmax(-1)
    bonus = torch.where(probs > 0.5, math.log(0.5) - (probs - 0.5) / 0.5, torch.log(1 - probs))
    target_column = {EOS: 0, 6: 1, 7: 2, 8: 3}
    expected_bonus = 0.0
    for row, column in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        token_bonus = bonus[row, column]
        target = target_column[int(sample["target"][row, column])]
        expected_bonus += (0.9 - 0.1 / 3) * token_bonus[target] + 0.1 / 3 * token_bonus.sum()
    assert sample_size == 5
    assert loss.item() == pytest.approx(base_loss.item() + float(expected_bonus), rel=1e-5)
    assert logging["nll_loss"].item() == pytest.approx(base_logging["nll_loss"].item(), rel=1e-6)
