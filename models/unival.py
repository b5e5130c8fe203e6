"""The ``unival`` model: a pre-norm BART-style encoder-decoder whose encoder reads modality patches
(image now; video and audio plug in through ``MODALITIES``) placed before the text tokens, with OFA-style
disentangled position biases (absolute biases from position embeddings, plus 1-D and 2-D relative buckets).

Module names follow the original UnIVAL code so that its checkpoints load with ``load_state_dict``.
"""
import argparse
import logging
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (FairseqEncoder, FairseqEncoderDecoderModel, FairseqIncrementalDecoder,
                            register_model, register_model_architecture)
from torch import Tensor

from unival.data_utils.vocab import VOCABULARY_FINGERPRINT, known_fingerprint, vocabulary_fingerprint
from unival.models import cpu_linear, layers
from unival.models.audio_encoders import PannBackbone, audio_position_ids, audio_tokens
from unival.models.image_encoders import ResNetBackbone
from unival.models.peft import (PromptProjection, apply_trainable, eval_untrained_backbones, keep_own_peft_weights,
                                zero_adapters)
from unival.models.video_encoders import VideoBackbone, video_position_ids, video_tokens
from unival.models.layers import (DecoderLayer, EncoderLayer, IncrementalState, Linear, TokenEmbedding,
                                  drop_path_rates, late_gradient, padding_to_bias, reorder_effect,
                                  reorder_keeps_rows)
from unival.models.position import (grid_position_ids, image_relative_buckets, layered_relative_bias,
                                    num_image_relative_buckets, token_relative_buckets)

logger = logging.getLogger(__name__)


@dataclass
class UnivalConfig(FairseqDataclass):
    """Options of the model; defaults are those of the paper's ``unival_base``."""

    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder layers"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "model width (encoder)"})
    decoder_embed_dim: int = field(default=768, metadata={"help": "model width (decoder); equals the encoder's"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "encoder feed-forward width"})
    decoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "decoder feed-forward width"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "encoder attention heads"})
    decoder_attention_heads: int = field(default=12, metadata={"help": "decoder attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on embeddings and sublayer outputs"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention probabilities"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_drop_path_rate: float = field(
        default=0.1, metadata={"help": "stochastic depth of the last encoder layer (linear from 0)"})
    decoder_drop_path_rate: float = field(
        default=0.1, metadata={"help": "stochastic depth of the last decoder layer (linear from 0)"})
    max_source_positions: int = field(default=1024, metadata={"help": "longest text input, in tokens"})
    max_target_positions: int = field(default=1024, metadata={"help": "longest output, in tokens"})
    token_bucket_size: int = field(default=256, metadata={"help": "buckets of 1-D relative text positions"})
    image_bucket_size: int = field(
        default=42, metadata={"help": "side of the 2-D position grid; the patch grid must fit in it"})
    attn_scale_factor: float = field(
        default=2.0, metadata={"help": "attention scores are scaled by (head_dim * factor) ** -0.5"})
    no_attn_ln: bool = field(default=False, metadata={"help": "drop NormFormer's LayerNorm after attention"})
    no_ffn_ln: bool = field(default=False, metadata={"help": "drop NormFormer's LayerNorm inside the FFN"})
    no_head_scale: bool = field(default=False, metadata={"help": "drop NormFormer's learned per-head scale"})
    no_type_embedding: bool = field(
        default=False, metadata={"help": "drop the type embedding that tells text from media tokens"})
    no_layernorm_embedding: bool = field(default=False, metadata={"help": "drop the LayerNorm on token embeddings"})
    no_patch_layernorm_embedding: bool = field(
        default=False, metadata={"help": "drop the LayerNorm on projected media patches"})
    code_layernorm_embedding: bool = field(
        default=False, metadata={"help": "create the decoder's image-code modules of OFA checkpoints (LayerNorm, "
                                         "image positions); no UnIVAL task uses them, released checkpoints hold them"})
    image_encoder: str = field(default="resnet101", metadata={"help": "timm ResNet name of the image encoder"})
    image_encoder_stages: int = field(
        default=4, metadata={"help": "ResNet stages kept (3: stride 16, the original's default; 4: stride 32)"})
    image_encoder_path: Optional[str] = field(
        default=None, metadata={"help": "local file with ImageNet weights for the image encoder (else random init)"})
    image_drop_path_rate: float = field(default=0.0, metadata={"help": "stochastic depth inside the ResNet"})
    video_encoder: Optional[str] = field(
        default=None, metadata={"help": "video encoder: resnext50, resnext101 (the original's), r3d_18, r2plus1d_18, "
                                        "or frames_<timm resnet>[_s<stages>] (e.g. frames_resnet18_s2: a 2-D "
                                        "ResNet's first stages on every frame plus a learned time embedding, "
                                        "light enough for a CPU); none: the model reads no video"})
    video_encoder_path: Optional[str] = field(
        default=None, metadata={"help": "local weights of the video encoder (e.g. resnext-101-kinetics.pth)"})
    audio_encoder: Optional[str] = field(
        default=None, metadata={"help": "audio encoder: cnn6, cnn10, cnn14 (PANN); none: the model reads no audio"})
    audio_encoder_path: Optional[str] = field(
        default=None, metadata={"help": "local weights of the audio encoder (e.g. Cnn14_mAP=0.431.pth)"})
    bart_path: Optional[str] = field(
        default=None, metadata={"help": "a BART checkpoint (bart.base/model.pt) whose text transformer and token "
                                        "embeddings initialise the model, as the paper's first pretraining stage "
                                        "(needs --dict-file with BART's dict.txt)"})
    audio_sample_rate: int = field(default=48000, metadata={"help": "sample rate the audio encoder expects"})
    audio_window_size: int = field(default=1024, metadata={"help": "STFT window of the log-mel front end"})
    audio_hop_size: int = field(default=480, metadata={"help": "STFT hop (the paper finetunes with 200)"})
    audio_mel_bins: int = field(default=64, metadata={"help": "mel bins of the front end"})
    audio_fmin: float = field(default=50.0, metadata={"help": "lowest mel frequency, Hz"})
    audio_fmax: float = field(default=14000.0, metadata={"help": "highest mel frequency, Hz"})
    no_channels_last: bool = field(
        default=False, metadata={"help": "feed the CNN image encoder NCHW images; by default they are converted to "
                                         "channels-last, which oneDNN and cuDNN convolutions run faster (same "
                                         "outputs, same weights)"})
    adapter_dim: int = field(
        default=0, metadata={"help": "bottleneck width of an adapter added after the feed-forward block of every "
                                     "encoder and decoder layer (0: none). Adapters start as identity functions and "
                                     "train alone unless --unfreeze; --bitfit and --only-linear-proj add their "
                                     "parameters"})
    encoder_prompt_length: int = field(
        default=0, metadata={"help": "learned key and value vectors (a prompt of this length) prepended to every "
                                     "encoder self-attention layer's (prefix tuning; 0: none); prompts train alone "
                                     "unless --unfreeze"})
    decoder_prompt_length: int = field(
        default=0, metadata={"help": "the same for every decoder self-attention layer"})
    encoder_prompt_projection: bool = field(
        default=False, metadata={"help": "compute the encoder prompts of all layers from one learned table through an "
                                         "MLP (prefix tuning's reparametrisation, the original's option); a model "
                                         "built without it loads the prompts it computes"})
    encoder_prompt_dim: int = field(
        default=0, metadata={"help": "hidden width of the encoder prompt projection (0: twice the embedding size, "
                                     "the original's default)"})
    decoder_prompt_projection: bool = field(
        default=False, metadata={"help": "the same for the decoder prompts"})
    decoder_prompt_dim: int = field(
        default=0, metadata={"help": "hidden width of the decoder prompt projection (0: twice the embedding size)"})
    unfreeze: bool = field(
        default=False, metadata={"help": "with adapters or prompts, train the rest of the model too (less what a "
                                         "--freeze-* option fixes)"})
    bitfit: bool = field(
        default=False, metadata={"help": "train only the biases (BitFit), plus any adapters and prompts"})
    only_linear_proj: bool = field(
        default=False, metadata={"help": "train only the linear projections of the media encoders' features, plus "
                                         "any adapters and prompts and, with --bitfit, the biases"})
    freeze_encoder: bool = field(
        default=False, metadata={"help": "fix the encoder's transformer (layers, LayerNorms, text positions, "
                                         "attention-bias tables); the media backbones, projections and media "
                                         "position embeddings, and the shared token embeddings, still train"})
    freeze_decoder: bool = field(
        default=False, metadata={"help": "fix the decoder (all but the token embeddings it shares)"})
    freeze_embeddings: bool = field(
        default=False, metadata={"help": "fix the token embeddings shared by the encoder input, the decoder input "
                                         "and the output projection"})
    freeze_image_encoder: bool = field(
        default=False, metadata={"help": "fix the image backbone and keep it in eval mode (BatchNorm statistics "
                                         "do not move)"})
    freeze_video_encoder: bool = field(
        default=False, metadata={"help": "fix the video backbone and keep it in eval mode"})
    freeze_audio_encoder: bool = field(
        default=False, metadata={"help": "fix the audio backbone and keep it in eval mode"})
    freeze_batchnorm: bool = field(
        default=False, metadata={"help": "fix every BatchNorm of the media backbones, scale, shift and statistics "
                                         "(eval mode), while their convolutions train: for small batches per device "
                                         "(the original's option of this name left the statistics moving)"})
    compile_layers: bool = field(
        default=False, metadata={"help": "torch.compile each transformer layer (in place: checkpoints keep their "
                                         "names); the first batches of each new shape are slow while it compiles"})


def image_tokens(features: Tensor, bucket_size: int) -> Tuple[Tensor, Tensor]:
    height, width = features.shape[-2:]
    return features.flatten(2).transpose(1, 2), grid_position_ids(height, width, bucket_size, features.device)


def video_tokens_and_ids(features: Tensor, bucket_size: int) -> Tuple[Tensor, Tensor]:
    steps, height, width = features.shape[-3:]
    return video_tokens(features), video_position_ids(steps, height, width, bucket_size, features.device)


def audio_tokens_and_ids(features: Tensor, bucket_size: int) -> Tuple[Tensor, Tensor]:
    tokens = audio_tokens(features)
    return tokens, audio_position_ids(tokens.size(1), bucket_size, features.device)


@dataclass(frozen=True)
class Modality:
    """How one kind of media becomes encoder tokens: its backbone, projection and position table (attribute
    names of the encoder, as in the original's checkpoints), its ``patch_types`` value, and the function
    turning backbone features into (B, N, C) tokens and their (N,) position ids."""

    backbone: str
    projection: str
    positions: str
    type_id: int
    tokens: Callable[[Tensor, int], Tuple[Tensor, Tensor]]


# The dimensions of each media input, for the errors of check_inputs
MEDIA_LAYOUTS = {"patch_images": "(batch, 3, height, width)", "patch_videos": "(batch, 3, frames, height, width)",
                 "patch_audios": "(batch, samples)"}


def describe_input(value) -> str:
    return f"shape {tuple(value.shape)} ({value.dtype})" if torch.is_tensor(value) else type(value).__name__


def check_inputs(src_tokens, media: Dict[str, Any]) -> None:
    """Refuses inputs of the wrong layout with the layout expected (shapes only: nothing that waits for a GPU)."""
    if not torch.is_tensor(src_tokens) or src_tokens.dim() != 2 or src_tokens.is_floating_point():
        raise ValueError(f"src_tokens: expected (batch, length) token ids, got {describe_input(src_tokens)}")
    for key, layout in MEDIA_LAYOUTS.items():
        value = media.get(key)
        if value is None:
            continue
        dims = layout.count(",") + 1
        if not torch.is_tensor(value) or value.dim() != dims or (dims > 2 and value.size(1) != 3):
            raise ValueError(f"{key}: expected {layout}, got {describe_input(value)}")


MODALITIES = {
    "patch_images": Modality("embed_images", "image_proj", "embed_image_positions", 0, image_tokens),
    "patch_videos": Modality("embed_videos", "video_proj", "embed_video_positions", 1, video_tokens_and_ids),
    "patch_audios": Modality("embed_audios", "audio_proj", "embed_audio_positions", 2, audio_tokens_and_ids),
}


# Options naming files whose weights initialise a new model; a model built from a checkpoint reads none of them.
WEIGHT_FILE_OPTIONS = ("image_encoder_path", "video_encoder_path", "audio_encoder_path", "bart_path")


def media_rows(key: str, media: Tensor, index: Tensor, batch: int) -> Tensor:
    """The rows ``index`` (the samples whose ``patch_types`` name this modality) of a media tensor with a row per
    sample of the batch; a tensor with exactly one row per such sample (the pretraining batches, which mix
    modalities and carry no placeholder media) is already them."""
    if media.size(0) == batch:
        return media.index_select(0, index)
    if media.size(0) == index.numel():
        return media
    raise ValueError(f"{key} holds {media.size(0)} rows: expected one per sample of the batch ({batch}) or one per "
                     f"sample whose patch_types name it ({index.numel()})")


def bert_init(module: nn.Module) -> None:
    """BERT-style initialisation of linear and embedding weights (normal, std 0.02)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


def relative_tables(num_layers: int, num_buckets: int, num_heads: int) -> nn.ModuleList:
    """One zero-initialised (num_buckets, num_heads) bias table per layer."""
    tables = nn.ModuleList([nn.Embedding(num_buckets, num_heads) for _ in range(num_layers)])
    for table in tables:
        nn.init.zeros_(table.weight)
    return tables


class PositionBias(nn.Module):
    """Shared pieces of the encoder's and decoder's position biases."""

    def _build_positions(self, cfg: UnivalConfig, dim: int, heads: int, num_layers: int, max_positions: int) -> None:
        self.num_heads = heads
        self.pos_scaling = float(dim / heads * cfg.attn_scale_factor) ** -0.5
        self.embed_positions = nn.Embedding(max_positions + 2, dim)
        self.pos_ln = nn.LayerNorm(dim)
        self.token_rel_pos_table_list = relative_tables(num_layers, 2 * cfg.token_bucket_size - 1, heads)
        # int32 bucket ids (F.embedding takes them): half the memory of int64 (here 4 MiB of 8 at 1024 positions)
        self.register_buffer("token_rp_bucket", token_relative_buckets(cfg.token_bucket_size, max_positions).int(),
                             persistent=False)

    def _heads(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, H, T, C / H)."""
        return x.view(x.size(0), x.size(1), self.num_heads, -1).transpose(1, 2)

    def token_relative_biases(self, query_positions: Tensor, key_length: int) -> Tensor:
        """(layers, 1, H, len(query_positions), key_length) biases of 1-D relative positions, every layer's
        from one lookup of the buckets."""
        buckets = self.token_rp_bucket[query_positions, :key_length]
        return layered_relative_bias(self.token_rel_pos_table_list, buckets).unsqueeze(1)


def prompt_projection(cfg: UnivalConfig, part: str) -> Optional[PromptProjection]:
    """The prompt projection of ``part`` (encoder or decoder), if its options ask for one."""
    if not getattr(cfg, f"{part}_prompt_projection"):
        return None
    dim = getattr(cfg, f"{part}_embed_dim")
    return PromptProjection(getattr(cfg, f"{part}_prompt_length"), dim, getattr(cfg, f"{part}_prompt_dim") or 2 * dim,
                            getattr(cfg, f"{part}_layers"))


class UnivalEncoder(PositionBias, FairseqEncoder):
    """Text tokens and modality patches -> (T, B, C) states, with the position embeddings for the decoder."""

    def __init__(self, cfg: UnivalConfig, dictionary, embed_tokens: nn.Embedding):
        FairseqEncoder.__init__(self, dictionary)
        dim = cfg.encoder_embed_dim
        self.cfg = cfg
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens
        self.dropout = nn.Dropout(cfg.dropout)
        self.layernorm_embedding = None if cfg.no_layernorm_embedding else nn.LayerNorm(dim)
        self.type_embedding = None if cfg.no_type_embedding else nn.Embedding(2, dim)
        self.embed_images = ResNetBackbone(cfg.image_encoder, cfg.image_encoder_stages, cfg.image_drop_path_rate)
        self.image_proj = Linear(self.embed_images.num_channels, dim)
        if cfg.video_encoder:
            self.embed_videos = VideoBackbone(cfg.video_encoder)
            self.video_proj = Linear(self.embed_videos.num_channels, dim)
        if cfg.audio_encoder:
            self.embed_audios = PannBackbone(cfg.audio_encoder, sample_rate=cfg.audio_sample_rate,
                                             window_size=cfg.audio_window_size, hop_size=cfg.audio_hop_size,
                                             mel_bins=cfg.audio_mel_bins, fmin=cfg.audio_fmin, fmax=cfg.audio_fmax)
            self.audio_proj = Linear(self.embed_audios.num_channels, dim)
        self.patch_layernorm_embedding = None if cfg.no_patch_layernorm_embedding else nn.LayerNorm(dim)
        self._build_positions(cfg, dim, cfg.encoder_attention_heads, cfg.encoder_layers, cfg.max_source_positions)
        grid_size = cfg.image_bucket_size ** 2 + 1
        self.embed_image_positions = nn.Embedding(grid_size, dim)
        if cfg.video_encoder:
            self.embed_video_positions = nn.Embedding(grid_size, dim)
        if cfg.audio_encoder:
            self.embed_audio_positions = nn.Embedding(grid_size, dim)
        self.image_pos_ln = nn.LayerNorm(dim)
        self.pos_q_linear = Linear(dim, dim)
        self.pos_k_linear = Linear(dim, dim)
        rates = drop_path_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)
        self.layers = nn.ModuleList([EncoderLayer(cfg, rate) for rate in rates])
        self.prompt_projection = prompt_projection(cfg, "encoder")
        self.layer_norm = nn.LayerNorm(dim)
        self.image_rel_pos_table_list = relative_tables(
            cfg.encoder_layers, num_image_relative_buckets(cfg.image_bucket_size), cfg.encoder_attention_heads)
        self.register_buffer("image_rp_bucket", image_relative_buckets(cfg.image_bucket_size).int(), persistent=False)

    def embed_text(self, src_tokens: Tensor) -> Tensor:
        x = self.embed_tokens(src_tokens)
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x)

    def embed_media(self, key: str, media: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Media batch -> (B, N, C) patch embeddings, their (N, C) position embeddings and (N,) position ids."""
        modality = MODALITIES[key]
        if not hasattr(self, modality.backbone):
            raise ValueError(f"the batch holds {key} but the model has no encoder for them "
                             f"(--{modality.backbone.replace('embed_', '')[:-1]}-encoder)")
        if media.dim() == 4 and not self.cfg.no_channels_last:
            # Convolutions follow their input's layout, so the whole ResNet then runs channels-last.
            media = media.contiguous(memory_format=torch.channels_last)
        features = getattr(self, modality.backbone)(media)
        tokens, position_ids = modality.tokens(features, self.cfg.image_bucket_size)
        x = getattr(self, modality.projection)(tokens)
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[1]
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        positions = self.image_pos_ln(getattr(self, modality.positions)(position_ids))
        return self.dropout(x), positions, position_ids

    def embed_all_media(self, batch: int, media: Dict[str, Tensor], patch_types: Optional[Tensor]):
        """Patches of every sample, each from its own modality: (B, N, C) embeddings, (1 or B, N, C) position
        embeddings, (N,) or (B, N) position ids and (B, N) padding (samples with fewer patches are padded).
        A media tensor holds a row per sample, or only the rows of the samples of its modality (see
        :func:`media_rows`)."""
        if patch_types is None:
            if len(media) > 1:
                raise ValueError(f"a batch with {' and '.join(media)} needs patch_types to tell which media "
                                 "each sample uses")
            rows = {key: None for key in media}
        else:
            rows = {key: (patch_types == MODALITIES[key].type_id).nonzero().squeeze(1) for key in media}
            rows = {key: index for key, index in rows.items() if index.numel()}
            if len(rows) == 1 and next(iter(rows.values())).numel() == batch:
                rows = {key: None for key in rows}
        if len(rows) == 1 and next(iter(rows.values())) is None:
            # every sample has the same kind of media: patches share their positions across the batch
            key = next(iter(rows))
            x, positions, position_ids = self.embed_media(key, media[key])
            return x, positions.unsqueeze(0), position_ids, x.new_zeros(x.shape[:2], dtype=torch.bool)
        parts = {key: self.embed_media(key, media_rows(key, media[key], index, batch)) for key, index in rows.items()}
        length = max(part[0].size(1) for part in parts.values())
        dim = next(iter(parts.values()))[0].size(-1)
        first, first_positions, _ = next(iter(parts.values()))  # of the model's type (float16 after --fp16)
        x = first.new_zeros(batch, length, dim)
        positions = first_positions.new_zeros(batch, length, dim)
        position_ids = torch.zeros(batch, length, dtype=torch.long, device=first.device)
        padding = torch.ones(batch, length, dtype=torch.bool, device=first.device)
        for key, (part, part_positions, part_ids) in parts.items():
            index, count = rows[key], part.size(1)
            x[index, :count] = part
            positions[index, :count] = part_positions
            position_ids[index, :count] = part_ids
            padding[index, :count] = False
        return x, positions, position_ids, padding

    def image_relative_biases(self, position_ids: Tensor) -> Tensor:
        """(layers, 1 or B, H, N, N) biases of 2-D relative positions between patches, every layer's from one
        lookup of the buckets."""
        ids = position_ids if position_ids.dim() == 2 else position_ids.unsqueeze(0)
        buckets = self.image_rp_bucket[ids[:, :, None], ids[:, None, :]]
        return layered_relative_bias(self.image_rel_pos_table_list, buckets)

    def attention_biases(self, absolute_bias: Tensor, text_length: int, patch_positions: Optional[Tensor],
                         padding: Tensor) -> Tensor:
        """(layers, 1 or B, H, T, T) self-attention bias of every layer, built once per forward: the shared
        absolute bias, each layer's relative biases on the text and patch blocks, -inf on padded keys."""
        batch, length = padding.shape
        # one bias for the whole batch, unless the samples' patches sit at different positions (mixed media)
        rows = batch if patch_positions is not None and patch_positions.dim() == 2 else absolute_bias.size(0)
        relative = absolute_bias.new_zeros(len(self.layers), rows, self.num_heads, length, length)
        text_positions = torch.arange(text_length, device=padding.device)
        relative[..., -text_length:, -text_length:] = self.token_relative_biases(text_positions, text_length)
        if patch_positions is not None:
            num_patches = length - text_length
            relative[..., :num_patches, :num_patches] = self.image_relative_biases(patch_positions)
        bias = absolute_bias + relative
        if not padding.any():
            return bias
        return padding_to_bias(bias.expand(-1, batch, -1, -1, -1), padding)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None, patch_masks: Optional[Tensor] = None,
                patch_types: Optional[Tensor] = None, return_all_hiddens: bool = False, **inputs) -> Dict[str, List]:
        """Text tokens plus, per sample, the media named by ``patch_types`` among ``patch_images``,
        ``patch_videos`` and ``patch_audios`` (masked out where ``patch_masks`` is False)."""
        check_inputs(src_tokens, inputs)
        batch, text_length = src_tokens.shape
        x = self.embed_text(src_tokens)
        padding = src_tokens.eq(self.padding_idx)
        positions = self.pos_ln(self.embed_positions.weight[:text_length]).unsqueeze(0)
        media = {key: inputs[key] for key in MODALITIES if inputs.get(key) is not None}
        patch_positions = None
        if media:
            patches, media_positions, patch_positions, patch_padding = self.embed_all_media(batch, media, patch_types)
            if patch_masks is not None:
                patch_padding = patch_padding | ~patch_masks[:, None]
            x = torch.cat([patches, x], dim=1)
            padding = torch.cat([patch_padding, padding], dim=1)
            positions = torch.cat([media_positions, positions.expand(media_positions.size(0), -1, -1)], dim=1)
        if padding.any():
            x = x * (1 - padding.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)

        pos_q = self._heads(self.pos_q_linear(positions)) * self.pos_scaling
        pos_k = self._heads(self.pos_k_linear(positions))
        absolute_bias = torch.matmul(pos_q, pos_k.transpose(2, 3))
        biases = self.attention_biases(absolute_bias, text_length, patch_positions, padding)
        states = [x] if return_all_hiddens else []
        prompts = [None] * len(self.layers) if self.prompt_projection is None else self.prompt_projection()
        for layer, bias, prompt in zip(self.layers, biases, prompts):
            x = layer(x, bias, prompt)
            if return_all_hiddens:
                states.append(x)
        x = self.layer_norm(x)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding],
            "position_embeddings": [positions.expand(batch, -1, -1)],
            "encoder_states": states,
            "src_tokens": [],
            "src_lengths": [],
            # which input sample each row holds, so that beam search's reorderings within a sample copy nothing
            "source_rows": [torch.arange(batch, device=src_tokens.device)],
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor) -> Dict[str, List]:
        rows = encoder_out.get("source_rows")
        if rows and reorder_keeps_rows(rows[0], new_order):
            return encoder_out
        reordered = {}
        for key, values in encoder_out.items():
            batch_dim = 1 if key in ("encoder_out", "encoder_states") else 0
            reordered[key] = [value.index_select(batch_dim, new_order) for value in values]
        return reordered

    def max_positions(self) -> int:
        return self.cfg.max_source_positions


class UnivalDecoder(PositionBias, FairseqIncrementalDecoder):
    """Causal decoder with self- and cross-attention position biases; caches keys, values and the
    projected source positions during incremental decoding."""

    def __init__(self, cfg: UnivalConfig, dictionary, embed_tokens: nn.Embedding):
        FairseqIncrementalDecoder.__init__(self, dictionary)
        dim = cfg.decoder_embed_dim
        self.cfg = cfg
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens
        self.dropout = nn.Dropout(cfg.dropout)
        self.layernorm_embedding = None if cfg.no_layernorm_embedding else nn.LayerNorm(dim)
        self._build_positions(cfg, dim, cfg.decoder_attention_heads, cfg.decoder_layers, cfg.max_target_positions)
        self.self_pos_q_linear = Linear(dim, dim)
        self.self_pos_k_linear = Linear(dim, dim)
        self.cross_pos_q_linear = Linear(dim, dim)
        self.cross_pos_k_linear = Linear(dim, dim)
        if cfg.code_layernorm_embedding:
            # Image-code generation of OFA; kept only so that checkpoints holding these weights load strictly.
            self.code_layernorm_embedding = nn.LayerNorm(dim)
            self.embed_image_positions = nn.Embedding(cfg.image_bucket_size ** 2 + 1, dim)
            self.image_pos_ln = nn.LayerNorm(dim)
            self.image_rel_pos_table_list = relative_tables(
                cfg.decoder_layers, num_image_relative_buckets(cfg.image_bucket_size), cfg.decoder_attention_heads)
        rates = drop_path_rates(cfg.decoder_drop_path_rate, cfg.decoder_layers)
        self.layers = nn.ModuleList([DecoderLayer(cfg, rate) for rate in rates])
        self.prompt_projection = prompt_projection(cfg, "decoder")
        self.layer_norm = nn.LayerNorm(dim)
        self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
        self.output_projection.weight = embed_tokens.weight

    def _cross_position_keys(self, encoder_out: Dict[str, List[Tensor]],
                             incremental_state: Optional[IncrementalState]) -> Tensor:
        """(B, H, C / H, S) transposed keys of the source positions, computed once per generation (stored
        transposed, so that no decoding step copies them to multiply)."""
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "cross_position_keys")
            if cached is not None:
                if encoder_out.get("source_rows"):
                    cached["rows"] = encoder_out["source_rows"][0]  # see MultiheadAttention.forward
                return cached["keys"]
        keys = self._heads(self.cross_pos_k_linear(encoder_out["position_embeddings"][0])).transpose(2, 3)
        if incremental_state is not None:
            keys = keys.contiguous()
            cache = {"keys": keys}
            if encoder_out.get("source_rows"):
                cache["rows"] = encoder_out["source_rows"][0]
            self.set_incremental_state(incremental_state, "cross_position_keys", cache)
        return keys

    def _self_position_queries_and_keys(self, first: int, length: int,
                                        incremental_state: Optional[IncrementalState]) -> Tuple[Tensor, Tensor]:
        """(1, length - first, C) normalised embeddings of the query positions and (1, H, length, C / H) keys of
        all target positions. Incremental decoding projects only positions not seen before: the keys do not
        depend on the hypothesis, so the cache needs no reordering."""
        cached = None if incremental_state is None else self.get_incremental_state(incremental_state,
                                                                                   "self_position_keys")
        start = 0 if cached is None or cached["keys"].size(2) > first else cached["keys"].size(2)
        positions = self.pos_ln(self.embed_positions.weight[start:length]).unsqueeze(0)
        keys = self._heads(self.self_pos_k_linear(positions))
        if start:
            keys = torch.cat([cached["keys"], keys], dim=2)
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "self_position_keys", {"keys": keys})
        return positions[:, first - start:], keys

    def reorder_incremental_state_scripting(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Called by fairseq's generator before every step; does nothing when ``new_order`` keeps every row in
        place, as greedy search's does until a hypothesis finishes. The decision is read from the device once per
        step (``reorder_effect``), and the cross-attention layers and the encoder reuse it."""
        cached = self.get_incremental_state(incremental_state, "cross_position_keys")
        if cached is not None and "rows" in cached and reorder_effect(cached["rows"], new_order).identity:
            return
        super().reorder_incremental_state_scripting(incremental_state, new_order)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        cached = self.get_incremental_state(incremental_state, "cross_position_keys")
        if cached is None or ("rows" in cached and reorder_keeps_rows(cached["rows"], new_order)):
            return
        self.set_incremental_state(incremental_state, "cross_position_keys",
                                   {name: value.index_select(0, new_order) for name, value in cached.items()})

    def forward(self, prev_output_tokens: Tensor, encoder_out: Optional[Dict[str, List[Tensor]]] = None,
                incremental_state: Optional[IncrementalState] = None, features_only: bool = False,
                output_weight: Optional[Tensor] = None, **unused) -> Tuple[Tensor, Dict[str, Any]]:
        """``output_weight``: the output projection's weight as the caller wants its gradient routed (see
        ``UnivalModel.forward``); by default the shared embedding itself."""
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        if not features_only:
            x = self.output_layer(x, output_weight)
        return x, extra

    def extract_features(self, prev_output_tokens: Tensor, encoder_out: Dict[str, List[Tensor]],
                         incremental_state: Optional[IncrementalState] = None, **unused):
        batch, target_length = prev_output_tokens.shape
        device = prev_output_tokens.device
        # In incremental decoding only the newest position is computed; earlier ones are cached.
        first = target_length - 1 if incremental_state is not None else 0
        query_positions = torch.arange(first, target_length, device=device)
        queries, self_k = self._self_position_queries_and_keys(first, target_length, incremental_state)

        self_q = self._heads(self.self_pos_q_linear(queries)) * self.pos_scaling
        self_bias = torch.matmul(self_q, self_k.transpose(2, 3))
        cross_q = self._heads(self.cross_pos_q_linear(queries)) * self.pos_scaling
        cross_bias = torch.matmul(cross_q, self._cross_position_keys(encoder_out, incremental_state))
        cross_bias = padding_to_bias(cross_bias, encoder_out["encoder_padding_mask"][0])

        tokens = prev_output_tokens[:, first:]
        x = self.embed_tokens(tokens)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout(x).transpose(0, 1)

        # Every layer's self-attention bias at once: shared absolute part, own relative part, causal mask.
        biases = self_bias + self.token_relative_biases(query_positions, target_length)
        if incremental_state is None:
            biases = biases + self.causal_mask(prev_output_tokens, biases.dtype)
        source_rows = encoder_out["source_rows"][0] if encoder_out.get("source_rows") else None
        states = [x]
        prompts = [None] * len(self.layers)
        if self.prompt_projection is not None and (incremental_state is None
                                                   or not self.layers[0].self_attn.has_cache(incremental_state)):
            prompts = self.prompt_projection()  # (in incremental decoding, the key cache holds them after a step)
        for layer, bias, prompt in zip(self.layers, biases, prompts):
            # Incremental decoding calls the layers' own forward, uncompiled under --compile-layers: its key cache
            # grows by one at every step, which would recompile them step after step up to torch's limit.
            run = layer if incremental_state is None else layer.forward
            x = run(x, encoder_out["encoder_out"][0], bias.expand(batch, -1, -1, -1), cross_bias, incremental_state,
                    source_rows, prompt)
            states.append(x)
        x = self.layer_norm(x).transpose(0, 1)
        return x, {"attn": [None], "inner_states": states}

    def causal_mask(self, prev_output_tokens: Tensor, dtype: torch.dtype) -> Tensor:
        """(T, T), or (B, 1, T, T) with padded targets, additive mask: -inf on later and padded positions."""
        length = prev_output_tokens.size(1)
        mask = torch.full((length, length), float("-inf"), dtype=dtype, device=prev_output_tokens.device).triu(1)
        padding = prev_output_tokens.eq(self.padding_idx)
        if padding.any():
            mask = padding_to_bias(mask.expand(prev_output_tokens.size(0), 1, -1, -1), padding)
        return mask

    def output_layer(self, features: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """(B, T, C) features -> (B, T, V) logits, computed as weight @ features^T (the same products), or by
        ``cpu_linear.linear`` where oneDNN multiplies the CPU's linear layers and there are more than a few rows.

        Written so that the weight's gradient comes out of backward as a plain matrix rather than a transposed
        view: autograd then adds the token-embedding gradients of the shared weight into it in place, instead
        of allocating a third vocabulary-sized matrix at the peak of training memory.
        """
        flat = features.reshape(-1, features.size(-1))
        weight = self.output_projection.weight if weight is None else weight
        if flat.size(0) > layers.FEW_ROWS and cpu_linear.uses_onednn(flat, weight):
            logits = cpu_linear.linear(flat, weight)  # its weight gradient is a plain matrix too
        else:
            logits = torch.mm(weight, flat.t()).t()
        return logits.reshape(*features.shape[:-1], logits.size(-1))

    def max_positions(self) -> int:
        return self.cfg.max_target_positions


@register_model("unival", dataclass=UnivalConfig)
class UnivalModel(FairseqEncoderDecoderModel):
    """Encoder-decoder with shared embeddings (encoder input, decoder input and output projection)."""

    def __init__(self, cfg: UnivalConfig, encoder: UnivalEncoder, decoder: UnivalDecoder):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.register_buffer(VOCABULARY_FINGERPRINT,
                             torch.tensor(vocabulary_fingerprint(encoder.dictionary.symbols), dtype=torch.int64))

    @classmethod
    def build_model(cls, cfg: UnivalConfig, task) -> "UnivalModel":
        if isinstance(cfg, argparse.Namespace) and hasattr(cfg, "image_encoder_name"):
            # A checkpoint of the original code, loaded through fairseq (fairseq-generate --path, --restore-file).
            from unival.checkpoint import config_from_original
            cfg = config_from_original(cfg)
        return cls.from_config(cfg, task.source_dictionary)

    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str) -> None:
        """Drops the buffers the original stores but this model recomputes, when fairseq loads a checkpoint."""
        from unival.checkpoint import without_derived_entries
        prefix = f"{name}." if name else ""
        try:
            self.check_vocabulary_size(state_dict, prefix)
            self.check_vocabulary_fingerprint(state_dict, prefix)
            kept = without_derived_entries(state_dict, self.cfg, prefix)
            for key in [key for key in state_dict if key not in kept]:
                del state_dict[key]
            self.keep_own_modality_weights(state_dict, prefix)
            keep_own_peft_weights(self, state_dict, prefix)
        except ValueError as err:
            # fairseq-train re-raises any loading error as "Cannot load model parameters ... ensure that the
            # architectures match", which would leave this reason in the middle of its traceback
            logger.error("the checkpoint does not fit this model: %s", err)
            raise
        super().upgrade_state_dict_named(state_dict, name)

    def check_vocabulary_size(self, state_dict: Dict[str, Tensor], prefix: str = "") -> None:
        """A checkpoint whose token embedding has another number of rows than this model's vocabulary was trained
        with another dictionary: say so, rather than leave it to a size-mismatch error."""
        saved = state_dict.get(prefix + "encoder.embed_tokens.weight")
        own = self.encoder.embed_tokens.weight
        if saved is not None and saved.size(0) != own.size(0):
            raise ValueError(
                f"the checkpoint's vocabulary has {saved.size(0)} symbols but this task's has {own.size(0)}: pass "
                "the --dict-file the model was trained with (BART's dict.txt for UnIVAL checkpoints) and the same "
                "--code-dict-size and --num-bins, or, for a model trained without --dict-file, the same training "
                "split, from which the vocabulary is built")

    def check_vocabulary_fingerprint(self, state_dict: Dict[str, Tensor], prefix: str = "") -> None:
        """Refuses weights trained with another vocabulary of this model's size (the rows of the token table would
        stand for other symbols). Nothing is compared where either side's vocabulary is unknown: weights without a
        fingerprint (the original's, or saved before fingerprints) or with the unknown one (a model built with a
        placeholder vocabulary, e.g. `unival convert` of such a checkpoint) are given this model's; a model built
        with a placeholder vocabulary takes the weights'."""
        key = prefix + VOCABULARY_FINGERPRINT
        own = self.get_buffer(VOCABULARY_FINGERPRINT)
        saved = state_dict.get(key)
        saved_value, own_value = known_fingerprint(saved), known_fingerprint(own)
        if saved_value is None:
            state_dict[key] = own.detach().clone()
        elif own_value is not None and saved_value != own_value:
            raise ValueError(
                f"the checkpoint was trained with another vocabulary of the same size ({len(self.encoder.dictionary)} "
                "symbols, in another order or with other symbols): its token embeddings would stand for other "
                "words. Give the vocabulary it was trained with (--dict-file; `dictionary=` in Python); a checkpoint "
                "stores its vocabulary, which `unival convert CHECKPOINT --out DIR` writes as DIR/dict.txt")

    def keep_own_modality_weights(self, state_dict: Dict[str, Tensor], prefix: str = "") -> None:
        """A checkpoint of an earlier curriculum stage holds nothing of a modality added since (audio after image
        and video): that modality's encoder, projection and positions keep this model's own initialisation (e.g.
        ``--audio-encoder-path``), with a warning. The other way round (an image task finetuned from a model
        pretrained with audio, built without an audio encoder), the checkpoint's weights of that modality are
        left out, with a warning. A modality the checkpoint holds in part is left to the strict check, which
        names the missing keys."""
        own = self.state_dict()
        for modality in MODALITIES.values():
            names = {modality.backbone, modality.projection, modality.positions}
            keys = [key for key in own if key.startswith("encoder.") and key.split(".")[1] in names]
            if keys and not any(prefix + key in state_dict for key in keys):
                logger.warning("the checkpoint has no %s weights: keeping this model's own initialisation of %s",
                               modality.backbone, ", ".join(sorted(names)))
                for key in keys:
                    state_dict[prefix + key] = own[key]
            saved = [key for key in state_dict if key.startswith(prefix + "encoder.")
                     and key[len(prefix):].split(".")[1] in names]
            if saved and not keys:
                logger.warning("the checkpoint has %s weights but this model has no such encoder: %d of its "
                               "tensors (%s) are not loaded", modality.backbone, len(saved), ", ".join(sorted(names)))
                for key in saved:
                    del state_dict[key]

    @classmethod
    def from_config(cls, cfg: UnivalConfig, dictionary) -> "UnivalModel":
        if cfg.encoder_embed_dim != cfg.decoder_embed_dim:
            raise ValueError("encoder and decoder share their embeddings: --encoder-embed-dim "
                             f"{cfg.encoder_embed_dim} must equal --decoder-embed-dim {cfg.decoder_embed_dim}")
        embed_tokens = TokenEmbedding(len(dictionary), cfg.encoder_embed_dim, padding_idx=dictionary.pad())
        model = cls(cfg, UnivalEncoder(cfg, dictionary, embed_tokens), UnivalDecoder(cfg, dictionary, embed_tokens))
        for name, module in model.named_modules():
            if not name.startswith("encoder.embed_images"):
                bert_init(module)
        for tables in ("token_rel_pos_table_list", "image_rel_pos_table_list"):
            for part in (model.encoder, model.decoder):
                for table in getattr(part, tables, []):
                    nn.init.zeros_(table.weight)
        # Pretrained encoder weights, after the initialisation above (which would overwrite their linear layers)
        for option, backbone, needs in (("image_encoder_path", "embed_images", None),
                                         ("video_encoder_path", "embed_videos", "video_encoder"),
                                         ("audio_encoder_path", "embed_audios", "audio_encoder")):
            path = getattr(cfg, option)
            if not path:
                continue
            if needs is not None and not getattr(cfg, needs):
                raise ValueError(f"--{option.replace('_', '-')} {path} given but the model has no "
                                 f"{needs.split('_')[0]} encoder (--{needs.replace('_', '-')})")
            getattr(model.encoder, backbone).load_weights(path)
            logger.info("%s: weights loaded from %s", backbone, path)
        if cfg.bart_path:
            from unival.models.bart import initialise_from_bart
            initialise_from_bart(model, cfg.bart_path)
        zero_adapters(model)
        apply_trainable(model, cfg)
        if cfg.compile_layers:
            # In place, unlike torch.compile(module): parameter names, hence checkpoints, stay the same.
            for layer in [*model.encoder.layers, *model.decoder.layers]:
                layer.compile()
        return model

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor], prev_output_tokens: Tensor,
                features_only: bool = False, return_all_hiddens: bool = False, **media) -> Tuple[Tensor, Dict]:
        """Takes the original's net_input keywords (``patch_images``, ``patch_masks``, ...) and returns
        ``(logits, extra)`` like a fairseq decoder."""
        output_weight = None
        weight = self.decoder.output_projection.weight
        if torch.is_grad_enabled() and weight.requires_grad and not features_only:
            # Before the token lookups: their sparse gradients are then added in place into this dense one.
            output_weight = late_gradient(weight)
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens, **media)
        if not torch.is_tensor(prev_output_tokens) or prev_output_tokens.dim() != 2 or \
                prev_output_tokens.size(0) != src_tokens.size(0):  # src_tokens: checked by the encoder
            raise ValueError(f"prev_output_tokens: expected (batch, length) token ids for the {src_tokens.size(0)} "
                             f"samples of src_tokens, got {describe_input(prev_output_tokens)}")
        return self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                            output_weight=output_weight)

    def train(self, mode: bool = True) -> "UnivalModel":
        super().train(mode)
        eval_untrained_backbones(self)  # a backbone that does not train keeps its BatchNorm statistics too
        return self

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)


# Sizes of each registered architecture; options not named keep the dataclass (unival_base) defaults.
ARCHITECTURES = {
    "unival_tiny": dict(
        encoder_layers=2, decoder_layers=2, encoder_embed_dim=256, decoder_embed_dim=256,
        encoder_ffn_embed_dim=1024, decoder_ffn_embed_dim=1024, encoder_attention_heads=4,
        decoder_attention_heads=4, image_encoder="resnet18", image_encoder_stages=3, image_bucket_size=16,
    ),
    "unival_base": dict(),
    "unival_large": dict(
        encoder_layers=12, decoder_layers=12, encoder_embed_dim=1024, decoder_embed_dim=1024,
        encoder_ffn_embed_dim=4096, decoder_ffn_embed_dim=4096, encoder_attention_heads=16,
        decoder_attention_heads=16, image_encoder="resnet152",
    ),
}


def architecture_defaults(name: str) -> Dict[str, Any]:
    """Every model option with its value for the architecture ``name``."""
    values = {f.name: f.default for f in fields(UnivalConfig) if not f.name.startswith("_")}
    values.update(ARCHITECTURES[name])
    return values


def _register_architecture(name: str) -> None:
    def apply(args) -> None:
        # Options given on the command line win; the rest take this architecture's values.
        for key, value in architecture_defaults(name).items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)

    register_model_architecture("unival", name)(apply)


for _name in ARCHITECTURES:
    _register_architecture(_name)
