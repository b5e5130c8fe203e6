"""Numbers of the criterion ``adjust_label_smoothed_cross_entropy`` on scripted logits, worked out by hand."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions import CRITERION_REGISTRY, build_criterion
from fairseq.data import Dictionary
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.logging import metrics
from torch import nn

from unival.criterions.adjust_label_smoothed_cross_entropy import (
    AdjustLabelSmoothedCrossEntropyConfig, AdjustLabelSmoothedCrossEntropyCriterion)

PAD, EOS = 1, 2  # fairseq's Dictionary: <s> 0, <pad> 1, </s> 2, <unk> 3


class FixedLogits(nn.Module):
    """Stands in for the model: returns the same logits (B, T, V) whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32).clone())

    def forward(self, **net_input):
        return self.logits, {"attn": [None]}

    def get_normalized_probs(self, net_output, log_probs):
        assert log_probs
        return F.log_softmax(net_output[0].float(), dim=-1)


class FakeTask:
    def __init__(self, vocab_size):
        self.target_dictionary = Dictionary()
        for index in range(vocab_size - len(self.target_dictionary)):
            self.target_dictionary.add_symbol(f"w{index}")


def make_criterion(vocab_size=5, **options):
    values = dict(sentence_avg=False, label_smoothing=0.1)
    values.update(options)
    return AdjustLabelSmoothedCrossEntropyCriterion(FakeTask(vocab_size), **values).train()


def make_sample(target, **extra):
    target = torch.as_tensor(target)
    return {"id": torch.arange(target.size(0)), "net_input": {"src_tokens": target}, "target": target,
            "ntokens": int(target.ne(PAD).sum()), "nsentences": target.size(0), **extra}


def logs(*probabilities):
    """Logits whose softmax is exactly the given probabilities (rows summing to 1)."""
    return [math.log(p) for p in probabilities]


def test_registered_and_built_from_options():
    assert CRITERION_REGISTRY["adjust_label_smoothed_cross_entropy"] is AdjustLabelSmoothedCrossEntropyCriterion
    parser = argparse.ArgumentParser()
    gen_parser_from_dataclass(parser, AdjustLabelSmoothedCrossEntropyConfig())
    args = parser.parse_args(["--constraint-range", "5,9", "--drop-worst-ratio", "0.2", "--drop-worst-after", "3",
                              "--ignore-eos"])
    assert args.label_smoothing == 0.1 and args.report_accuracy is False and args.ignore_prefix_size == 0
    args.criterion, args.sentence_avg = "adjust_label_smoothed_cross_entropy", False
    criterion = build_criterion(args, FakeTask(10))
    assert criterion.constraint_range == (5, 9)
    assert (criterion.drop_worst_ratio, criterion.drop_worst_after, criterion.ignore_eos) == (0.2, 3, True)


@pytest.mark.parametrize("value", ["5", "a,b", "6,6", "4,11", "-1,3"])
def test_bad_constraint_range_is_refused(value):
    with pytest.raises(ValueError, match="constraint-range"):
        make_criterion(vocab_size=10, constraint_range=value)


def test_hand_computed_loss_with_smoothing():
    model = FixedLogits([[logs(0.1, 0.1, 0.2, 0.2, 0.4),
                          logs(0.05, 0.05, 0.5, 0.2, 0.2),
                          [9.0, -9.0, 3.0, 0.0, 1.0]]])  # padding
    loss, sample_size, logging = make_criterion()(model, make_sample([[4, EOS, PAD]]))

    # eps = 0.1 spread over the 4 other tokens: eps_i = 0.025; the target keeps 1 - eps - eps_i = 0.875 of
    # its nll plus eps_i of the sum over all tokens.
    nll_0, nll_1 = -math.log(0.4), -math.log(0.5)
    smooth_0 = -(2 * math.log(0.1) + 2 * math.log(0.2) + math.log(0.4))
    smooth_1 = -(2 * math.log(0.05) + math.log(0.5) + 2 * math.log(0.2))
    expected = 0.875 * (nll_0 + nll_1) + 0.025 * (smooth_0 + smooth_1)
    assert expected == pytest.approx(1.87435, abs=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logging["nll_loss"].item() == pytest.approx(nll_0 + nll_1, rel=1e-5)
    assert sample_size == 2
    assert {k: logging[k] for k in ("ntokens", "nsentences", "sample_size", "loss_tokens")} == {
        "ntokens": 2, "nsentences": 1, "sample_size": 2, "loss_tokens": 2}


def test_padding_is_ignored():
    target = [[4, 3, EOS, PAD, PAD], [3, EOS, PAD, PAD, PAD]]
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 5)
    changed = logits.clone()
    changed[0, 3:] = torch.randn(2, 5) * 10
    changed[1, 2:] = torch.randn(3, 5) * 10
    criterion = make_criterion()
    model = FixedLogits(logits)
    loss, sample_size, _ = criterion(model, make_sample(target))
    other, _, _ = criterion(FixedLogits(changed), make_sample(target))
    assert sample_size == 5
    assert other.item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert model.logits.grad[0, 3:].abs().sum() == 0 and model.logits.grad[1, 2:].abs().sum() == 0
    assert model.logits.grad[0, :3].abs().sum() > 0


def test_no_smoothing_is_plain_nll():
    target = torch.tensor([[5, 4, 6, EOS], [6, EOS, PAD, PAD], [4, 4, EOS, PAD]])
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 7)
    loss, _, logging = make_criterion(vocab_size=7, label_smoothing=0.0)(FixedLogits(logits), make_sample(target))
    expected = F.nll_loss(F.log_softmax(logits, -1).view(-1, 7), target.view(-1), ignore_index=PAD, reduction="sum")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logging["nll_loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def range_logits(other):
    """V = 10, allowed ids 2 (</s>), 6, 7, 8 with fixed probabilities; every other id gets the logit ``other``."""
    logits = torch.full((1, 2, 10), float(other))
    logits[0, 0, [2, 6, 7, 8]] = torch.tensor(logs(0.1, 0.2, 0.3, 0.4))
    logits[0, 1, [2, 6, 7, 8]] = torch.tensor(logs(0.7, 0.1, 0.1, 0.1))
    return logits


def test_constraint_range_masks_other_tokens():
    criterion = make_criterion(vocab_size=10, constraint_range="6,9")
    sample = make_sample([[7, EOS]])
    model = FixedLogits(range_logits(other=5.0))
    loss, _, logging = criterion(model, sample)

    # Allowed: 6, 7, 8 and </s>, so eps_i = 0.1 / 3 and the probabilities are those written in range_logits.
    eps_i = 0.1 / 3
    nll = -math.log(0.3) - math.log(0.7)
    smooth = -(math.log(0.1) + math.log(0.2) + math.log(0.3) + math.log(0.4)) - (math.log(0.7) + 3 * math.log(0.1))
    expected = (1 - 0.1 - eps_i) * nll + eps_i * smooth
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logging["nll_loss"].item() == pytest.approx(nll, rel=1e-5)

    # The mass of tokens outside the range does not matter, and they get no gradient.
    other, _, _ = criterion(FixedLogits(range_logits(other=-3.0)), sample)
    assert other.item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    outside = [0, 1, 3, 4, 5, 9]
    assert model.logits.grad[0][:, outside].abs().sum() == 0
    assert model.logits.grad[0][:, [2, 6, 7, 8]].abs().sum() > 0


def test_constraint_masks_from_a_trie():
    logits = torch.zeros(2, 2, 6)
    logits[0, 0, [4, 5]] = torch.tensor(logs(0.6, 0.4))
    logits[1, 0, [3, 4, 5]] = torch.tensor(logs(0.2, 0.3, 0.5))
    masks = torch.zeros(2, 2, 6, dtype=torch.bool)
    masks[0, 0, [4, 5]] = True
    masks[0, 1, EOS] = True  # a single allowed token: nothing to smooth, loss 0
    masks[1, 0, [3, 4, 5]] = True  # masks[1, 1] (padding) allows nothing at all
    model = FixedLogits(logits)
    loss, sample_size, logging = make_criterion(vocab_size=6)(model, make_sample([[4, EOS], [5, PAD]],
                                                                                 constraint_masks=masks))

    # Two allowed tokens: the target keeps 1 - eps = 0.9 and the other one gets 0.1.
    first = 0.9 * -math.log(0.6) + 0.1 * -math.log(0.4)
    # Three allowed tokens: eps_i = 0.05.
    third = (1 - 0.1 - 0.05) * -math.log(0.5) + 0.05 * -(math.log(0.2) + math.log(0.3) + math.log(0.5))
    assert loss.item() == pytest.approx(first + third, rel=1e-5)
    assert logging["nll_loss"].item() == pytest.approx(-math.log(0.6) - math.log(0.5), rel=1e-5)
    assert sample_size == 3
    loss.backward()
    assert torch.isfinite(model.logits.grad).all()


def test_conf_weights_each_sample():
    target = [[4, 5, EOS], [6, EOS, PAD]]
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 7)
    criterion = make_criterion(vocab_size=7)
    loss_a, _, log_a = criterion(FixedLogits(logits[:1]), make_sample(target[:1]))
    loss_b, _, log_b = criterion(FixedLogits(logits[1:]), make_sample(target[1:]))
    loss, sample_size, logging = criterion(FixedLogits(logits), make_sample(target, conf=torch.tensor([1.0, 0.25])))
    assert loss.item() == pytest.approx(loss_a.item() + 0.25 * loss_b.item(), rel=1e-6)
    # The logged nll stays the plain one, so perplexity means the same with and without confidences.
    assert logging["nll_loss"].item() == pytest.approx((log_a["nll_loss"] + log_b["nll_loss"]).item(), rel=1e-6)
    assert sample_size == 5


def drop_worst_case():
    """One sentence of 10 tokens, target 4 (V = 5): the target logit at position t is -0.5 * rank[t], the others
    0, so the loss grows with rank (log(e^a + 4) - 0.9 a, decreasing in a)."""
    rank = [3, 9, 0, 5, 1, 8, 2, 7, 4, 6]
    logits = torch.zeros(1, 10, 5)
    logits[0, :, 4] = -0.5 * torch.tensor(rank, dtype=torch.float32)
    return FixedLogits(logits), make_sample([[4] * 10])


def token_losses(ranks):
    loss = sum(math.log(math.exp(-0.5 * r) + 4) + 0.9 * 0.5 * r for r in ranks)
    nll = sum(math.log(math.exp(-0.5 * r) + 4) + 0.5 * r for r in ranks)
    return loss, nll


def test_drop_worst_removes_the_largest_losses():
    model, sample = drop_worst_case()
    criterion = make_criterion(drop_worst_ratio=0.3, drop_worst_after=5)
    criterion.set_num_updates(6)
    loss, sample_size, logging = criterion(model, sample)
    # 10 * 0.3 tokens dropped: exactly 3 (OFA's int(10 * (1 - 0.3)) = 6 kept one token too few).
    expected_loss, expected_nll = token_losses(range(7))
    assert sample_size == 7 and logging["loss_tokens"] == 7 and logging["ntokens"] == 10
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert logging["nll_loss"].item() == pytest.approx(expected_nll, rel=1e-5)


@pytest.mark.parametrize("num_updates, training", [(5, True), (0, True), (6, False)])
def test_drop_worst_waits_for_updates_and_training(num_updates, training):
    model, sample = drop_worst_case()
    criterion = make_criterion(drop_worst_ratio=0.3, drop_worst_after=5).train(training)
    criterion.set_num_updates(num_updates)
    loss, sample_size, _ = criterion(model, sample)
    assert sample_size == 10
    assert loss.item() == pytest.approx(token_losses(range(10))[0], rel=1e-5)


def test_ignore_eos_and_prefix():
    torch.manual_seed(3)
    logits = torch.randn(1, 4, 6)
    lprobs = F.log_softmax(logits[0], -1)
    sample = make_sample([[5, 4, EOS, PAD]])
    loss, sample_size, _ = make_criterion(vocab_size=6, label_smoothing=0.0, ignore_eos=True)(FixedLogits(logits),
                                                                                              sample)
    assert sample_size == 2
    assert loss.item() == pytest.approx(-(lprobs[0, 5] + lprobs[1, 4]).item(), rel=1e-6)
    loss, sample_size, _ = make_criterion(vocab_size=6, label_smoothing=0.0, ignore_prefix_size=1)(
        FixedLogits(logits), sample)
    assert sample_size == 2
    assert loss.item() == pytest.approx(-(lprobs[1, 4] + lprobs[2, EOS]).item(), rel=1e-6)


def test_sentence_avg_and_accuracy():
    logits = torch.zeros(2, 3, 5)
    logits[0, 0, 4] = logits[0, 1, 3] = logits[0, 2, 4] = 2.0  # right, wrong (target </s>), right
    logits[1, 0, 3] = logits[1, 1, EOS] = 2.0  # right, right
    loss, sample_size, logging = make_criterion(sentence_avg=True, report_accuracy=True)(
        FixedLogits(logits), make_sample([[4, EOS, 4], [3, EOS, PAD]]))
    assert sample_size == 2
    assert (logging["n_correct"], logging["total"], logging["loss_tokens"]) == (4, 5, 5)


def test_reduce_metrics():
    logging_outputs = [
        {"loss": torch.tensor(3.0), "nll_loss": torch.tensor(2.0), "ntokens": 4, "nsentences": 2, "sample_size": 4,
         "loss_tokens": 4, "n_correct": 3, "total": 4},
        {"loss": torch.tensor(5.0), "nll_loss": torch.tensor(4.0), "ntokens": 6, "nsentences": 3, "sample_size": 4,
         "loss_tokens": 4, "n_correct": 2, "total": 6},
    ]
    assert AdjustLabelSmoothedCrossEntropyCriterion.logging_outputs_can_be_summed()
    with metrics.aggregate() as aggregation:
        AdjustLabelSmoothedCrossEntropyCriterion.reduce_metrics(logging_outputs)
        values = aggregation.get_smoothed_values()
    # loss 8 over sample size 8 and nll 6 over 8 scored tokens, in bits; ppl = 2 ** (0.75 / ln 2) = e ** 0.75.
    assert values["loss"] == pytest.approx(round(1 / math.log(2), 3))
    assert values["nll_loss"] == pytest.approx(round(0.75 / math.log(2), 3))
    assert values["ppl"] == pytest.approx(round(math.exp(0.75), 2))
    assert values["accuracy"] == pytest.approx(50.0)
    assert (values["loss"], values["nll_loss"], values["ppl"]) == (1.443, 1.082, 2.12)
