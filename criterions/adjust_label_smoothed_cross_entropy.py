"""Criterion ``adjust_label_smoothed_cross_entropy``: label-smoothed cross-entropy over the tokens a position may
take (an answer trie's mask or a token range), with per-sample confidence weights and dropping of the worst tokens."""
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II
from torch import Tensor


@dataclass
class AdjustLabelSmoothedCrossEntropyConfig(FairseqDataclass):
    label_smoothing: float = field(
        default=0.1, metadata={"help": "probability mass spread over the allowed tokens other than the target"})
    report_accuracy: bool = field(default=False, metadata={"help": "log token accuracy of the argmax prediction"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "leave the first N target positions out of the loss"})
    ignore_eos: bool = field(default=False, metadata={"help": "leave the end-of-sentence token out of the loss"})
    sentence_avg: bool = II("optimization.sentence_avg")
    drop_worst_ratio: float = field(
        default=0.0, metadata={"help": "in training, leave out this fraction of the batch's target tokens with the "
                                       "largest loss"})
    drop_worst_after: int = field(
        default=0, metadata={"help": "drop the worst tokens only once more than this many updates are done"})
    constraint_range: Optional[str] = field(
        default=None, metadata={"help": "'start,end': only token ids in [start, end) and </s> can be predicted (the "
                                        "<bin> tokens for grounding); smoothing spreads over those tokens only"})


def parse_constraint_range(value: Optional[str], vocab_size: int) -> Optional[Tuple[int, int]]:
    """``"start,end"`` -> ``(start, end)``, checked against the vocabulary size."""
    if value is None:
        return None
    try:
        start, end = (int(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"--constraint-range must be 'start,end' with two integers, got {value!r}") from None
    if not 0 <= start < end <= vocab_size:
        raise ValueError(f"--constraint-range {value!r} is not a range inside the vocabulary of {vocab_size} tokens")
    return start, end


def label_smoothed_sum(values: Tensor, target: Tensor, epsilon: float, allowed: Optional[Tensor] = None) -> Tensor:
    """Per-token expectation of ``values`` (N, V) under the smoothed target distribution: the target (N,) gets
    1 - epsilon and every other allowed token epsilon / (allowed - 1); ``allowed`` is a (V,) or (N, V) mask,
    None for all."""
    target_values = values.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if allowed is None:
        smooth = values.sum(-1)
        others = max(values.size(-1) - 1, 1)
    else:
        # Disallowed tokens (log-probability -inf) take no smoothing mass.
        smooth = values.masked_fill(~allowed, 0.0).sum(-1)
        others = (allowed.sum(-1) - 1).clamp(min=1)  # one allowed token: the loss is 0, not 0 * inf
    eps_i = epsilon / others
    return (1.0 - epsilon - eps_i) * target_values + eps_i * smooth


def label_smoothed_nll_loss(lprobs: Tensor, target: Tensor, epsilon: float,
                            allowed: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Per-token ``(loss, nll_loss)`` of log-probabilities (N, V) for targets (N,), smoothed as in
    :func:`label_smoothed_sum`."""
    nll_loss = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return label_smoothed_sum(-lprobs, target, epsilon, allowed), nll_loss


def token_accuracy(meters) -> float:
    """Percentage of scored tokens whose argmax is the target, from the summed meters."""
    total = meters["total"].sum
    return round(100.0 * meters["n_correct"].sum / total, 3) if total > 0 else float("nan")


@register_criterion("adjust_label_smoothed_cross_entropy", dataclass=AdjustLabelSmoothedCrossEntropyConfig)
class AdjustLabelSmoothedCrossEntropyCriterion(FairseqCriterion):
    """The task's ``train_step`` passes the update count through ``set_num_updates`` (fairseq's trainer only
    tells the model), so that dropping the worst tokens starts after ``drop_worst_after`` updates."""

    def __init__(self, task, sentence_avg: bool, label_smoothing: float = 0.1, report_accuracy: bool = False,
                 ignore_prefix_size: int = 0, ignore_eos: bool = False, drop_worst_ratio: float = 0.0,
                 drop_worst_after: int = 0, constraint_range: Optional[str] = None):
        super().__init__(task)
        if not 0.0 <= drop_worst_ratio < 1.0:
            raise ValueError(f"--drop-worst-ratio must be in [0, 1), got {drop_worst_ratio}")
        self.sentence_avg = sentence_avg
        self.eps = label_smoothing
        self.report_accuracy = report_accuracy
        self.ignore_prefix_size = ignore_prefix_size
        self.ignore_eos = ignore_eos
        self.drop_worst_ratio = drop_worst_ratio
        self.drop_worst_after = drop_worst_after
        self.eos_idx = task.target_dictionary.eos()
        self.constraint_range = parse_constraint_range(constraint_range, len(task.target_dictionary))
        self.num_updates = 0

    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates

    def forward(self, model, sample):
        """Returns the summed loss, the sample size (denominator of the gradient) and the logging output."""
        net_output = model(**sample["net_input"])
        target = sample["target"]
        scored = self.scored_positions(target)
        # Only scored positions reach the softmax: padded rows of a trie mask may allow no token at all.
        allowed = self.allowed_tokens(sample, scored, net_output[0].size(-1))
        logits = net_output[0][scored]
        if allowed is not None:
            logits = logits.masked_fill(~allowed, -math.inf)
        lprobs = model.get_normalized_probs((logits, *net_output[1:]), log_probs=True)
        target = target[scored]
        loss, nll_loss = self.token_losses(lprobs, target, allowed)
        balanced = sample.get("streams") is not None
        rows = scored.nonzero(as_tuple=True)[0] if balanced else None  # the sample of each scored token

        conf = sample.get("conf")
        if conf is not None:
            loss = loss * conf.unsqueeze(1).expand_as(scored)[scored].to(loss)
        if self.training and self.drop_worst_ratio > 0 and self.num_updates > self.drop_worst_after:
            keep = loss.numel() - int(loss.numel() * self.drop_worst_ratio)
            loss, kept = loss.topk(keep, largest=False)
            nll_loss = nll_loss[kept]
            rows = rows[kept] if balanced else None

        loss_tokens = loss.numel()
        stream_losses = {}
        if balanced:
            loss, stream_losses = self.stream_balanced(sample, loss, rows)
            sample_size = 1
        else:
            sample_size = sample["target"].size(0) if self.sentence_avg else loss_tokens
            loss = loss.sum()
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.sum().data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
            "loss_tokens": loss_tokens,
        }
        for name, value in stream_losses.items():
            present = value is not None  # every stream gets its keys: ranks must log the same ones at each step
            logging_output[f"_stream_{name}_loss"] = value.data if present else loss.new_zeros(()).data
            logging_output[f"_stream_{name}_count"] = int(present)
        if self.report_accuracy:
            logging_output["n_correct"] = utils.item(lprobs.argmax(-1).eq(target).sum())
            logging_output["total"] = target.numel()
        return loss, sample_size, logging_output

    def stream_balanced(self, sample, loss: Tensor, rows: Tensor) -> Tuple[Tensor, Dict[str, Optional[Tensor]]]:
        """Task balancing of a pretraining batch (``stream_ids``: the stream of each sample, ``streams``: their
        names): the sum over streams of each stream's token losses divided by its own sample size (its scored
        tokens, or sentences with --sentence-avg), so that a stream with longer targets or more rows does not
        drown the others; returned with each stream's loss. The batch's sample size is then 1, so that fairseq
        averages over micro-batches and ranks."""
        names = sample["streams"]
        stream_ids = sample["stream_ids"]
        token_streams = stream_ids[rows]
        sums = loss.new_zeros(len(names)).index_add(0, token_streams, loss)
        sizes = torch.bincount(stream_ids if self.sentence_avg else token_streams, minlength=len(names))
        per_stream = sums / sizes.clamp(min=1).to(sums)  # 0 for a stream without tokens in this batch
        present = (sizes > 0).tolist()
        return per_stream.sum(), {name: per_stream[number] if present[number] else None
                                  for number, name in enumerate(names)}

    def token_losses(self, lprobs: Tensor, target: Tensor, allowed: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Per-token ``(loss, nll_loss)`` of the scored positions; subclasses add terms to the loss here."""
        return label_smoothed_nll_loss(lprobs, target, self.eps, allowed)

    def scored_positions(self, target: Tensor) -> Tensor:
        """(B, T) mask of the target positions in the loss: not padding, not in the ignored prefix, not eos when
        ``ignore_eos``."""
        scored = target.ne(self.padding_idx)
        if self.ignore_prefix_size > 0:
            scored[:, :self.ignore_prefix_size] = False
        if self.ignore_eos:
            scored &= target.ne(self.eos_idx)
        return scored

    def allowed_tokens(self, sample, scored: Tensor, vocab_size: int) -> Optional[Tensor]:
        """Mask of the tokens each scored position may take: (V,) for a range, (N, V) with a trie's
        ``constraint_masks``, None when every token is allowed."""
        allowed = None
        if self.constraint_range is not None:
            start, end = self.constraint_range
            allowed = torch.zeros(vocab_size, dtype=torch.bool, device=scored.device)
            allowed[start:end] = True
            allowed[self.eos_idx] = True  # every target ends with </s>
        masks = sample.get("constraint_masks")
        if masks is not None:
            masks = masks[scored]
            allowed = masks if allowed is None else masks & allowed
        return allowed

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """Logs loss per sample-size unit and nll per scored token, both in base 2, perplexity and accuracy."""
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        nll_loss_sum = sum(log.get("nll_loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        loss_tokens = sum(log.get("loss_tokens", 0) for log in logging_outputs)
        # An empty batch (sizes 0) is logged with weight 0 rather than dividing by zero.
        metrics.log_scalar("loss", loss_sum / max(sample_size, 1) / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", nll_loss_sum / max(loss_tokens, 1) / math.log(2), loss_tokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))

        # pretraining batches: each stream's own loss (see stream_balanced), averaged over the batches that had it
        streams = sorted({key[len("_stream_"):-len("_loss")] for log in logging_outputs for key in log
                          if key.startswith("_stream_") and key.endswith("_loss")})
        for name in streams:
            stream_sum = sum(log.get(f"_stream_{name}_loss", 0) for log in logging_outputs)
            count = sum(log.get(f"_stream_{name}_count", 0) for log in logging_outputs)
            if count:  # a stream no batch had (yet) is not logged
                metrics.log_scalar(f"loss_{name}", stream_sum / count / math.log(2), count, round=3)

        total = utils.item(sum(log.get("total", 0) for log in logging_outputs))
        if total > 0:
            metrics.log_scalar("total", total)
            metrics.log_scalar("n_correct", utils.item(sum(log.get("n_correct", 0) for log in logging_outputs)))
            metrics.log_derived("accuracy", token_accuracy)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
