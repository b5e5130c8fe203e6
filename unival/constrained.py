"""Decoding restricted to allowed tokens (an answer trie for VQA, exactly four ``<bin>`` tokens for grounding) with
fairseq's own SequenceGenerator, and scoring of every candidate answer by its log-probability."""
from typing import Optional, Sequence

import torch
from fairseq.data import Dictionary
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator
from torch import Tensor

from unival.data_utils.trie import Trie


class TrieConstraint:
    """After a decoded prefix, only tokens that continue it towards an answer of the trie."""

    def __init__(self, trie: Trie):
        self.trie = trie

    def allowed(self, tokens: Tensor, vocab_size: int) -> Tensor:
        # tokens: (N, step + 1), starting with <s>, which is not part of the stored answers
        return self.trie.prefix_mask(tokens[:, 1:], vocab_size)


class RangeConstraint:
    """Exactly ``length`` tokens from ``[start, end)``, then ``</s>`` (grounding: four ``<bin>`` tokens)."""

    def __init__(self, start: int, end: int, length: int, eos: int):
        if not 0 <= start < end:
            raise ValueError(f"empty token range [{start}, {end})")
        self.start, self.end, self.length, self.eos = start, end, length, eos

    def allowed(self, tokens: Tensor, vocab_size: int) -> Tensor:
        mask = torch.zeros(tokens.size(0), vocab_size, dtype=torch.bool, device=tokens.device)
        if tokens.size(1) - 1 < self.length:
            mask[:, self.start:self.end] = True
        else:
            mask[:, self.eos] = True
        return mask


# Log-probability of a token outside the allowed set. Finite, unlike -inf: fairseq's beam search never finalises
# -inf hypotheses, so a beam wider than the choices (beam 5 over three entailment answers) would never end.
DISALLOWED = -1e4


class ConstrainedEnsemble(EnsembleModel):
    """fairseq's ensemble wrapper whose next-token log-probabilities are renormalised over the allowed tokens, as
    the loss of constrained training is; other tokens get :data:`DISALLOWED`, so hypotheses beyond the allowed
    choices rank below every allowed one, and end at their next step."""

    def __init__(self, models, constraint, eos: int):
        super().__init__(models)
        self.constraint = constraint
        self.eos = eos

    @torch.no_grad()
    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):
        lprobs, attn = super().forward_decoder(tokens, encoder_outs, incremental_states, temperature)
        allowed = self.constraint.allowed(tokens, lprobs.size(-1)).to(lprobs.device)
        allowed &= ~torch.isinf(lprobs)  # never <pad>, never what the model itself rules out
        kept = lprobs.masked_fill(~allowed, -torch.inf)
        kept = kept - torch.logsumexp(kept, dim=-1, keepdim=True)
        lprobs = torch.where(allowed, kept, torch.full_like(lprobs, DISALLOWED))
        # A hypothesis already outside the allowed set may only end (rather than run on to the length limit).
        stranded = ~allowed.any(-1)
        lprobs[stranded] = -torch.inf
        lprobs[stranded, self.eos] = DISALLOWED
        return lprobs, attn


def constrained_generator(models: Sequence, dictionary: Dictionary, constraint, **kwargs) -> SequenceGenerator:
    """A SequenceGenerator (``kwargs``: beam_size, max_len_b, ...) whose choices ``constraint`` restricts."""
    ensemble = ConstrainedEnsemble(list(models), constraint, dictionary.eos())
    return SequenceGenerator(ensemble, dictionary, **kwargs)


@torch.no_grad()
def score_candidates(model, sample, candidates: Sequence[Tensor], bos: int, pad: int,
                     chunk_size: int = 256, allowed: Optional[Trie] = None) -> Tensor:
    """(B, C) summed log-probabilities of every candidate (token ids ending with ``</s>``) for every sample of the
    batch, by teacher forcing; with ``allowed`` the distributions are renormalised over the trie's tokens."""
    encoder_out = model.encoder.forward_torchscript(sample["net_input"])
    batch_size = sample["net_input"]["src_tokens"].size(0)
    device = sample["net_input"]["src_tokens"].device
    scores = torch.empty(batch_size, len(candidates), device=device)
    for first in range(0, len(candidates), chunk_size):
        chunk = candidates[first:first + chunk_size]
        targets = torch.full((len(chunk), max(len(c) for c in chunk)), pad, dtype=torch.long, device=device)
        for row, candidate in enumerate(chunk):
            targets[row, :len(candidate)] = candidate
        previous = torch.cat([torch.full_like(targets[:, :1], bos), targets[:, :-1]], dim=1)
        masks = None
        for index in range(batch_size):
            order = torch.full((len(chunk),), index, dtype=torch.long, device=device)
            logits = model.decoder(previous, encoder_out=model.encoder.reorder_encoder_out(encoder_out, order))[0]
            if allowed is not None:
                if masks is None:
                    masks = torch.stack([allowed.target_masks(row, logits.size(-1), pad)
                                         for row in targets.cpu()]).to(device)
                logits = logits.masked_fill(~masks, -torch.inf)
            lprobs = torch.log_softmax(logits.float(), dim=-1)
            token_scores = lprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            token_scores = token_scores.masked_fill(targets.eq(pad), 0.0)
            scores[index, first:first + len(chunk)] = token_scores.sum(-1)
    return scores
