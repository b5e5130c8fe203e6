"""Criterion ``scst_reward_criterion``: self-critical sequence training. Samples several outputs per input,
scores them (CIDEr-D of captions, or IoU of grounding boxes) and raises the log-probability of the samples that
beat the mean reward of the input's other samples."""
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II
from torch import Tensor, nn

from unival.data_utils.vocab import first_bin_index, normalize_caption
from unival.metrics import DocumentFrequency, cider_d, cider_document_frequency
from unival.task_metrics import box_iou

logger = logging.getLogger(__name__)

GROUNDING_LENGTH = 4  # x0, y0, x1, y1
REWARDS = ChoiceEnum(["cider", "iou"])


@dataclass
class ScstRewardCriterionConfig(FairseqDataclass):
    reward: REWARDS = field(
        default="cider", metadata={"help": "cider: CIDEr-D of sampled captions against sample['references'] "
                                           "(caption tasks); iou: IoU of 4 sampled <bin> tokens with the target box "
                                           "(grounding)"})
    scst_samples: int = field(
        default=5, metadata={"help": "outputs sampled per input; each one's baseline is the mean reward of the "
                                     "others (at least 2)"})
    scst_max_len: int = field(
        default=16, metadata={"help": "longest sampled caption in tokens, </s> included (grounding always samples "
                                      "4 tokens)"})
    sentence_avg: bool = II("optimization.sentence_avg")


# ---- sampling ---------------------------------------------------------------------------------------------------
@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Runs the block with dropout off, then restores the model's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def encoder_inputs(net_input: Dict) -> Dict:
    return {key: value for key, value in net_input.items() if key != "prev_output_tokens"}


def repeated_encoder_out(model, net_input: Dict, num_samples: int) -> Dict[str, List[Tensor]]:
    """The encoder's output for each input, repeated ``num_samples`` times in a row: the encoder runs once per
    input, not once per sample."""
    encoder_out = model.encoder(**encoder_inputs(net_input))
    batch = net_input["src_tokens"].size(0)
    order = torch.arange(batch, device=net_input["src_tokens"].device).repeat_interleave(num_samples)
    return model.encoder.reorder_encoder_out(encoder_out, order)


def masked_logits(logits: Tensor, allowed: Optional[Tensor]) -> Tensor:
    return logits if allowed is None else logits.masked_fill(~allowed, -math.inf)


@torch.no_grad()
def sample_sequences(model, net_input: Dict, num_samples: int, max_length: int, bos: int, eos: int, pad: int,
                     allowed: Optional[Tensor] = None) -> Tensor:
    """(B * num_samples, L <= max_length) token ids drawn from the model's distribution (temperature 1), decoded
    incrementally from ``<s>``. Rows of one input are consecutive. A row stops at its first ``</s>`` and is
    padded after it; ``allowed`` (V,) restricts the tokens (e.g. to ``<bin>`` tokens, which never stop)."""
    encoder_out = repeated_encoder_out(model, net_input, num_samples)
    rows = net_input["src_tokens"].size(0) * num_samples
    tokens = torch.full((rows, 1), bos, dtype=torch.long, device=net_input["src_tokens"].device)
    finished = torch.zeros(rows, dtype=torch.bool, device=tokens.device)
    state: Dict = {}
    for _ in range(max_length):
        logits, _ = model.decoder(tokens, encoder_out, incremental_state=state)
        probs = masked_logits(logits[:, -1].float(), allowed).softmax(-1)
        step = torch.multinomial(probs, 1).squeeze(1).masked_fill(finished, pad)
        tokens = torch.cat([tokens, step.unsqueeze(1)], dim=1)
        finished |= step.eq(eos)
        if finished.all():
            break
    return tokens[:, 1:]


def sequence_log_probs(model, net_input: Dict, sequences: Tensor, num_samples: int, bos: int, pad: int,
                       allowed: Optional[Tensor] = None) -> Tensor:
    """(N,) sum of the log-probabilities of each sampled sequence's tokens (padding left out, ``</s>`` counted),
    from a teacher-forced pass with gradients, under the same token restriction as the sampling. The pass goes
    through the model's own forward on each input repeated ``num_samples`` times, as OFA's does: a
    DistributedDataParallel wrapper only synchronises gradients of its forward."""
    repeated = {key: value.repeat_interleave(num_samples, dim=0) if torch.is_tensor(value) else value
                for key, value in encoder_inputs(net_input).items()}
    prev_output_tokens = torch.cat([sequences.new_full((sequences.size(0), 1), bos), sequences[:, :-1]], dim=1)
    logits, extra = model(**repeated, prev_output_tokens=prev_output_tokens)
    lprobs = model.get_normalized_probs((masked_logits(logits, allowed), extra), log_probs=True)
    token_lprobs = lprobs.gather(-1, sequences.unsqueeze(-1)).squeeze(-1)
    return token_lprobs.masked_fill(sequences.eq(pad), 0.0).sum(-1)


# ---- loss arithmetic --------------------------------------------------------------------------------------------
def leave_one_out_baseline(rewards: Tensor) -> Tensor:
    """(B, K) mean reward of each input's other K - 1 samples. Leaving the sample's own reward out keeps the
    gradient estimate unbiased; including it would shrink every advantage by (K - 1) / K."""
    return (rewards.sum(-1, keepdim=True) - rewards) / (rewards.size(-1) - 1)


def scst_loss(sequence_lprobs: Tensor, rewards: Tensor) -> Tensor:
    """-sum over samples of (reward - baseline) * log p(sample), for (B, K) log-probabilities and rewards; the
    advantages are constants (no gradient flows through the rewards)."""
    advantages = (rewards - leave_one_out_baseline(rewards)).detach()
    return -(advantages * sequence_lprobs).sum()


# ---- rewards ----------------------------------------------------------------------------------------------------
class CiderReward:
    """CIDEr-D (in [0, 10]) of each sampled caption against its input's references, ``sample["references"]``
    (lists of normalized captions, as the caption tasks provide). The n-gram document frequencies are those of
    the training split's references when the task holds them (``task.document_frequency[train_subset]``), else
    those of the batch's references."""

    def __init__(self, task, max_length: int):
        if max_length < 1:
            raise ValueError(f"--scst-max-len must be at least 1, got {max_length}")
        if not hasattr(task, "document_frequency"):  # what the caption tasks keep of their references
            name = getattr(task.cfg, "_name", None) or type(task).__name__
            raise ValueError(f"--reward cider scores captions, and the {name} task has no reference captions "
                             "(grounding: --reward iou)")
        self.task = task
        self.max_length = max_length
        self.warned = False

    def allowed_tokens(self, vocab_size: int, device) -> Tensor:
        # <pad>, <s> and <unk> are never part of a caption; everything else (</s> included) may be sampled.
        dictionary = self.task.target_dictionary
        allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
        allowed[[dictionary.pad(), dictionary.bos(), dictionary.unk()]] = False
        return allowed

    def document_frequency(self, references: List[List[str]]) -> DocumentFrequency:
        frequencies = getattr(self.task, "document_frequency", {})
        train_subset = self.task.cfg.train_subset
        if train_subset in frequencies:
            return frequencies[train_subset]
        if not self.warned:
            logger.warning("no CIDEr-D document frequencies of the training split %r in the task: SCST rewards use "
                           "those of each batch's references", train_subset)
            self.warned = True
        return cider_document_frequency(references)

    def __call__(self, sample: Dict, sequences: Tensor, num_samples: int) -> Tensor:
        references = sample.get("references")
        if references is None:
            raise ValueError("--reward cider needs sample['references'] (reference captions; the caption tasks "
                             "provide them)")
        # one transfer from the device for the batch, not one per sampled row
        predictions = {row: normalize_caption(self.task.decode(tokens)) for row, tokens in enumerate(sequences.cpu())}
        sample_references = {row: references[row // num_samples] for row in predictions}
        _, scores = cider_d(predictions, sample_references, document_frequency=self.document_frequency(references))
        return torch.as_tensor(scores, dtype=torch.float32, device=sequences.device)


class IouReward:
    """IoU of the box of 4 sampled ``<bin>`` tokens with the target's first 4 tokens. Bins are compared as they
    are: a bin is a coordinate scaled by (num_bins - 1) / side per axis, and IoU does not change when an axis
    is scaled, so the IoU in bin units equals the IoU in pixels of the resized image. A sampled box with
    x1 <= x0 or y1 <= y0 has no area and earns 0."""

    max_length = GROUNDING_LENGTH

    def __init__(self, task):
        dictionary = task.target_dictionary
        self.first_bin = first_bin_index(dictionary)
        self.num_bins = task.cfg.num_bins
        if self.first_bin + self.num_bins > len(dictionary):
            raise ValueError(f"--num-bins {self.num_bins} from <bin_0> (id {self.first_bin}) runs past the "
                             f"dictionary's {len(dictionary)} symbols")

    def allowed_tokens(self, vocab_size: int, device) -> Tensor:
        allowed = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        allowed[self.first_bin:self.first_bin + self.num_bins] = True
        return allowed

    def target_bins(self, sample: Dict) -> Tensor:
        """(B, 4) bin numbers of the target boxes; a target that does not start with 4 ``<bin>`` tokens raises."""
        target = sample["target"]
        bins = target[:, :GROUNDING_LENGTH] - self.first_bin
        bad = ((bins < 0) | (bins >= self.num_bins)).any(1) | (target.size(1) < GROUNDING_LENGTH)
        if bad.any():
            row = int(bad.nonzero()[0])
            name = sample["uniq_ids"][row] if sample.get("uniq_ids") else f"#{row}"
            raise ValueError(f"--reward iou: the target of sample {name} does not start with 4 <bin> tokens: "
                             f"{target[row].tolist()}")
        return bins

    def __call__(self, sample: Dict, sequences: Tensor, num_samples: int) -> Tensor:
        targets = self.target_bins(sample).repeat_interleave(num_samples, dim=0)
        return box_iou(sequences - self.first_bin, targets).float()


def build_reward(name: str, task, max_length: int):
    return IouReward(task) if name == "iou" else CiderReward(task, max_length)


# ---- criterion --------------------------------------------------------------------------------------------------
@register_criterion("scst_reward_criterion", dataclass=ScstRewardCriterionConfig)
class ScstRewardCriterion(FairseqCriterion):
    """Per batch: sample ``scst_samples`` outputs per input in evaluation mode (no dropout) without gradient,
    as OFA does; score them; recompute their log-probabilities with gradients by a teacher-forced pass in the
    trainer's mode; loss = -sum (reward - leave-one-out baseline) * log p(sample)."""

    def __init__(self, task, sentence_avg: bool, reward: str = "cider", scst_samples: int = 5,
                 scst_max_len: int = 16):
        super().__init__(task)
        if scst_samples < 2:
            raise ValueError(f"--scst-samples must be at least 2 (the baseline is the mean of the other samples), "
                             f"got {scst_samples}")
        self.sentence_avg = sentence_avg
        self.num_samples = scst_samples
        self.reward = build_reward(str(reward), task, scst_max_len)
        dictionary = task.target_dictionary
        self.bos, self.eos = dictionary.bos(), dictionary.eos()

    def forward(self, model, sample, reduce=True):
        """Returns the summed loss, the sample size (sampled sequences or their tokens) and the logging output."""
        net_input = sample["net_input"]
        batch = net_input["src_tokens"].size(0)
        allowed = self.reward.allowed_tokens(len(self.task.target_dictionary), net_input["src_tokens"].device)
        with evaluation_mode(model):
            sequences = sample_sequences(model, net_input, self.num_samples, self.reward.max_length, self.bos,
                                         self.eos, self.padding_idx, allowed)
        rewards = self.reward(sample, sequences, self.num_samples)
        lprobs = sequence_log_probs(model, net_input, sequences, self.num_samples, self.bos, self.padding_idx,
                                    allowed)
        loss = scst_loss(lprobs.view(batch, self.num_samples), rewards.view(batch, self.num_samples).to(lprobs))

        ntokens = int(sequences.ne(self.padding_idx).sum())
        sample_size = sequences.size(0) if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data,
            "score_sum": float(rewards.sum()),
            "nsequences": sequences.size(0),
            "ntokens": ntokens,
            "nsentences": batch,
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """Logs the loss per sample-size unit and ``score``, the mean reward of the sampled sequences."""
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        score_sum = sum(log.get("score_sum", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        nsequences = sum(log.get("nsequences", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss_sum / max(sample_size, 1), sample_size, round=3)
        metrics.log_scalar("score", score_sum / max(nsequences, 1), nsequences, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
