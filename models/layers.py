"""Transformer building blocks of UnIVAL: biased multi-head attention and pre-norm encoder/decoder layers.

Module and parameter names follow the original (OFA) code so that its checkpoints load without renaming.
"""
import weakref
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from timm.layers import DropPath
from torch import Tensor

from unival.models import cpu_linear
from unival.models.peft import Adapter

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


def padding_to_bias(bias: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
    """Adds -inf where keys are padding to a (B, H, T, S) attention bias."""
    if key_padding_mask is None:
        return bias
    return bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))


class ReorderEffect(NamedTuple):
    """What reordering the rows of a batch by ``new_order`` does: ``identity``, every row stays where it is;
    ``keeps_rows``, every row still holds the same source sample (rows of one sample, a beam's hypotheses, hold
    identical encoder states, so such a reordering, which beam search does at every step, need not copy them)."""
    identity: bool
    keeps_rows: bool


# The last decision and weak references to the tensors it was made for, with their version counters (an in-place
# change of either tensor makes it stale).
_last_reorder: Tuple = ()


def read_reorder_effect(source_rows: Tensor, new_order: Tensor) -> ReorderEffect:
    """``reorder_effect`` computed on the device and read in one transfer."""
    if new_order.numel() != source_rows.numel():
        return ReorderEffect(False, False)
    identity = new_order.eq(torch.arange(new_order.numel(), device=new_order.device)).all()
    keeps_rows = source_rows.index_select(0, new_order).eq(source_rows).all()
    return ReorderEffect(*torch.stack([identity, keeps_rows]).tolist())


def reorder_effect(source_rows: Tensor, new_order: Tensor) -> ReorderEffect:
    """The effect of reordering rows that hold the source samples ``source_rows`` by ``new_order``.

    Beam search asks about the same reordering once per cross-attention layer, once for the decoder's position
    keys and once for the encoder's output at every step; on a GPU each answer costs a synchronisation with the
    host. The answer is therefore read in one transfer and remembered for the same pair of unchanged tensors
    (not for tensors made under ``torch.inference_mode``, which keep no version counter).
    """
    global _last_reorder
    if source_rows.is_inference() or new_order.is_inference():
        return read_reorder_effect(source_rows, new_order)  # no version counter to tell an in-place change
    if _last_reorder:
        rows_ref, rows_version, order_ref, order_version, answer = _last_reorder
        if (rows_ref() is source_rows and order_ref() is new_order and rows_version == source_rows._version
                and order_version == new_order._version):
            return answer
    answer = read_reorder_effect(source_rows, new_order)
    _last_reorder = (weakref.ref(source_rows), source_rows._version, weakref.ref(new_order), new_order._version,
                     answer)
    return answer


def reorder_keeps_rows(source_rows: Tensor, new_order: Tensor) -> bool:
    """Whether reordering by ``new_order`` leaves every row holding the same source sample as before."""
    return reorder_effect(source_rows, new_order).keeps_rows


class TokenEmbedding(nn.Embedding):
    """The token embedding shared by encoder, decoder and output projection, with row-sparse lookup gradients.

    A dense lookup gradient is a vocabulary-sized matrix for the few rows a batch uses (174 MiB for BART's
    vocabulary at 768 dims), built, then added into the weight's gradient, once for the encoder and once for the
    decoder. Sparse rows cost only what the batch uses; ``UnivalModel.forward`` routes the output projection's
    dense gradient through ``late_gradient`` so that autograd adds the rows into it in place. The weight's
    gradient is dense as usual: if a backward pass reached the weight only through lookups (no output
    projection), it is made dense once accumulated, since optimizers like Adam take dense gradients only.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.weight.register_post_accumulate_grad_hook(densify_gradient)

    def forward(self, tokens: Tensor) -> Tensor:
        sparse = torch.is_grad_enabled() and self.weight.requires_grad
        return F.embedding(tokens, self.weight, self.padding_idx, sparse=sparse)


def densify_gradient(parameter: Tensor) -> None:
    if parameter.grad is not None and parameter.grad.is_sparse:
        parameter.grad = parameter.grad.to_dense()


class _LateGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor) -> Tensor:
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad  # passed on as is, so that autograd may add other gradients into it in place


def late_gradient(weight: Tensor) -> Tensor:
    """``weight`` for one of its uses, through an identity whose gradient reaches ``weight`` after the others.

    Autograd sums the gradients of a tensor used several times as they arrive, and adds a sparse gradient in
    place only into a dense one that arrived after it (a dense sum arriving first gets a new, vocabulary-sized
    copy for every sparse gradient added to it). Backward runs the most recently created operations first, so
    an identity created before the other uses runs after their gradients. Call it before the token lookups to
    make the output projection's dense gradient the one the lookups' sparse rows are added into. The gradients
    are the same either way; only the order of additions, hence rounding, differs.
    """
    return _LateGradient.apply(weight)


# Up to this many input rows, a CPU Linear multiplies weight @ input^T (see Linear).
FEW_ROWS = 8


class Linear(nn.Linear):
    """``nn.Linear`` that computes ``weight @ input^T`` on CPU when the input has at most ``FEW_ROWS`` rows.

    Incremental decoding multiplies every weight matrix by one row per hypothesis. There the time is spent
    reading the weights, and for 2 to 8 rows the BLAS reads them at 1.2-2.5x the bandwidth in this orientation
    (measured on the development machine: 768 x 3072 weights, 2 rows, 7 against 17 GB/s). The products are the
    same; only the order of the float additions may differ. Larger inputs go through ``cpu_linear.linear``
    (oneDNN or the BLAS on the CPU), other devices through ``F.linear``.
    """

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        if x.device.type != "cpu" or not 0 < rows <= FEW_ROWS:
            return cpu_linear.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features).t()
        if self.bias is None:
            out = torch.mm(self.weight, flat)
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, flat)
        return out.t().contiguous().view(*x.shape[:-1], self.out_features)


@with_incremental_state
class MultiheadAttention(nn.Module):
    """Multi-head attention with an additive bias, through ``scaled_dot_product_attention``.

    ``scale_factor`` enlarges the softmax temperature (scores scaled by (head_dim * factor) ** -0.5);
    ``scale_heads`` learns one output scale per head (NormFormer). In incremental decoding, self-attention
    caches keys and values; cross-attention (``static_kv``) computes them once. ``prompt_length`` > 0 adds
    key and value vectors that every query attends to before the sequence's own (prefix tuning), with no position
    bias: learned here, or with ``own_prompt`` off given to ``forward`` (by a ``PromptProjection``).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, scale_factor: float = 2.0,
                 scale_heads: bool = True, prompt_length: int = 0, own_prompt: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embedding size {embed_dim} is not divisible by {num_heads} attention heads")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.dropout = dropout
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)
        self.prompt_length = prompt_length
        # (2, length, C): the prompt's keys, then its values
        self.prompt = nn.Parameter(torch.randn(2, prompt_length, embed_dim) * 0.02) if prompt_length and own_prompt \
            else None

    def _heads(self, x: Tensor) -> Tensor:
        """(T, B, C) -> (B, H, T, head_dim)."""
        length, batch = x.shape[:2]
        return x.view(length, batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def forward(self, query: Tensor, key: Tensor, bias: Tensor,
                incremental_state: Optional[IncrementalState] = None, static_kv: bool = False,
                source_rows: Optional[Tensor] = None, prompt: Optional[Tensor] = None) -> Tensor:
        """query (T, B, C), key (S, B, C), bias (B or 1, H, T, S) with -inf on masked keys -> (T, B, C).

        In incremental self-attention ``bias`` covers the cached keys plus the new one. ``source_rows`` (B,),
        the source sample of each row of a static ``key``, lets beam search skip copying the cached keys when
        it only reorders hypotheses of the same sample. ``prompt`` (2, L, C): the prompt's keys and values of an
        attention without its own, needed until the incremental cache holds them.
        """
        q = self._heads(self.q_proj(query))
        saved = self.get_incremental_state(incremental_state, "attn_state") if incremental_state is not None else None
        if static_kv and saved is not None:
            k, v = saved["key"], saved["value"]
            if source_rows is not None:
                # the encoder's own tensor (not this cache's last copy of it), so that every layer and the encoder
                # ask reorder_effect about the same tensor at the next reordering
                saved["rows"] = source_rows
        else:
            k = self._heads(self.k_proj(key))
            v = self._heads(self.v_proj(key))
            if saved is not None:
                k = torch.cat([saved["key"], k], dim=2)
                v = torch.cat([saved["value"], v], dim=2)
            elif self.prompt_length:  # (in incremental decoding, the cache holds the prompt from the first step)
                prompt = self.prompt if self.prompt is not None else prompt
                if prompt is None:
                    raise ValueError("this attention's prompt is computed outside it and was not given")
                prompt = self._heads(prompt.transpose(0, 1).to(k.dtype)).unsqueeze(1)  # (2, 1, H, L, d)
                prompt = prompt.expand(-1, k.size(0), -1, -1, -1)
                k, v = torch.cat([prompt[0], k], dim=2), torch.cat([prompt[1], v], dim=2)
            if incremental_state is not None:
                state = {"key": k, "value": v}
                if static_kv and source_rows is not None:
                    state["rows"] = source_rows
                self.set_incremental_state(incremental_state, "attn_state", state)

        if self.prompt_length:
            bias = F.pad(bias, (self.prompt_length, 0))  # every query sees the prompt, without a position bias
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0,
            scale=self.scaling,
        )
        if self.c_attn is not None:
            attn = attn * self.c_attn.view(1, -1, 1, 1)
        length, batch = query.shape[:2]
        attn = attn.permute(2, 0, 1, 3).reshape(length, batch, self.embed_dim)
        return self.out_proj(attn)

    def has_cache(self, incremental_state: IncrementalState) -> bool:
        return self.get_incremental_state(incremental_state, "attn_state") is not None

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Follows the beam search's reordering of hypotheses."""
        saved = self.get_incremental_state(incremental_state, "attn_state")
        if saved is not None and "rows" in saved and reorder_keeps_rows(saved["rows"], new_order):
            return
        if saved is not None:
            reordered = {name: value.index_select(0, new_order) for name, value in saved.items()}
            self.set_incremental_state(incremental_state, "attn_state", reordered)


def drop_path_rates(max_rate: float, num_layers: int):
    """Stochastic-depth rate of each layer, growing linearly from 0 to ``max_rate``."""
    return [x.item() for x in torch.linspace(0, max_rate, num_layers)]


class FeedForward(nn.Module):
    """fc1 -> GELU -> (LayerNorm, NormFormer) -> fc2 (-> adapter); a mixin of the encoder and decoder layers."""

    def _build_ffn(self, embed_dim: int, ffn_dim: int, scale_fc: bool, activation_dropout: float,
                   adapter_dim: int = 0) -> None:
        self.fc1 = Linear(embed_dim, ffn_dim)
        self.fc2 = Linear(ffn_dim, embed_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim) if scale_fc else None
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.adapter = Adapter(embed_dim, adapter_dim) if adapter_dim else None

    def _ffn(self, x: Tensor) -> Tensor:
        x = self.activation_dropout(F.gelu(self.fc1(x)))
        if self.ffn_layernorm is not None:
            x = self.ffn_layernorm(x)
        x = self.fc2(x)
        return x if self.adapter is None else self.adapter(x)


class EncoderLayer(FeedForward, nn.Module):
    """Pre-norm self-attention + FFN with NormFormer's extra LayerNorms and stochastic depth."""

    def __init__(self, cfg, drop_path_rate: float = 0.0):
        nn.Module.__init__(self)
        dim = cfg.encoder_embed_dim
        self.self_attn = MultiheadAttention(dim, cfg.encoder_attention_heads, cfg.attention_dropout,
                                            cfg.attn_scale_factor, not cfg.no_head_scale, cfg.encoder_prompt_length,
                                            own_prompt=not cfg.encoder_prompt_projection)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.attn_ln = nn.LayerNorm(dim) if not cfg.no_attn_ln else None
        self._build_ffn(dim, cfg.encoder_ffn_embed_dim, not cfg.no_ffn_ln, cfg.activation_dropout, cfg.adapter_dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: Tensor, bias: Tensor, prompt: Optional[Tensor] = None) -> Tensor:
        """x (T, B, C); bias (B, H, T, T) already holding -inf on padded keys; prompt (2, L, C) or None."""
        h = self.self_attn_layer_norm(x)
        h = self.self_attn(h, h, bias, prompt=prompt)
        if self.attn_ln is not None:
            h = self.attn_ln(h)
        x = x + self.drop_path(self.dropout(h))
        h = self._ffn(self.final_layer_norm(x))
        return x + self.drop_path(self.dropout(h))


class DecoderLayer(FeedForward, nn.Module):
    """Pre-norm causal self-attention, cross-attention and FFN, each with a NormFormer LayerNorm."""

    def __init__(self, cfg, drop_path_rate: float = 0.0):
        nn.Module.__init__(self)
        dim = cfg.decoder_embed_dim
        heads = cfg.decoder_attention_heads
        self.self_attn = MultiheadAttention(dim, heads, cfg.attention_dropout, cfg.attn_scale_factor,
                                            not cfg.no_head_scale, cfg.decoder_prompt_length,
                                            own_prompt=not cfg.decoder_prompt_projection)
        self.self_attn_ln = nn.LayerNorm(dim) if not cfg.no_attn_ln else None
        self.cross_attn_ln = nn.LayerNorm(dim) if not cfg.no_attn_ln else None
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.encoder_attn = MultiheadAttention(dim, heads, cfg.attention_dropout, cfg.attn_scale_factor,
                                               not cfg.no_head_scale)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim)
        self._build_ffn(dim, cfg.decoder_ffn_embed_dim, not cfg.no_ffn_ln, cfg.activation_dropout, cfg.adapter_dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: Tensor, encoder_out: Tensor, self_bias: Tensor, cross_bias: Tensor,
                incremental_state: Optional[IncrementalState] = None, source_rows: Optional[Tensor] = None,
                prompt: Optional[Tensor] = None) -> Tensor:
        h = self.self_attn_layer_norm(x)
        h = self.self_attn(h, h, self_bias, incremental_state, prompt=prompt)
        if self.self_attn_ln is not None:
            h = self.self_attn_ln(h)
        x = x + self.drop_path(self.dropout(h))

        h = self.encoder_attn_layer_norm(x)
        h = self.encoder_attn(h, encoder_out, cross_bias, incremental_state, static_kv=True, source_rows=source_rows)
        if self.cross_attn_ln is not None:
            h = self.cross_attn_ln(h)
        x = x + self.drop_path(self.dropout(h))

        h = self._ffn(self.final_layer_norm(x))
        return x + self.drop_path(self.dropout(h))
