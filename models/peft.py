"""Parameter-efficient finetuning: bottleneck adapters, the prompt projection of prefix tuning, and which of the
model's parameters train (plain prompts live in ``layers.MultiheadAttention``).

The options (``UnivalConfig``) fall in two kinds. Selectors restrict training to a part of the model: ``--bitfit``
(every bias), ``--only-linear-proj`` (the media projections), adapters (``--adapter-dim N``) and prompts
(``--encoder-prompt-length`` / ``--decoder-prompt-length``), the last two alone unless ``--unfreeze``; several
selectors train the union of their parts. Freezes then fix parts: ``--freeze-encoder`` / ``--freeze-decoder``
(the transformers), ``--freeze-embeddings`` (the token table that the encoder, the decoder and the output
projection share), ``--freeze-{image,video,audio}-encoder`` (a media backbone) and ``--freeze-batchnorm`` (every
BatchNorm of the media backbones). Frozen parameters have ``requires_grad`` off: fairseq's optimizers and
data-parallel wrappers leave them out. A media backbone that has nothing left to train, and a BatchNorm whose scale
and shift do not train, stay in eval mode, so that their BatchNorm statistics do not move either.
"""
import logging
from typing import Dict, Iterator, List, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# (option, encoder attribute, the option that builds that encoder; None: every model has it)
BACKBONE_FREEZES = (("freeze_image_encoder", "embed_images", None),
                    ("freeze_video_encoder", "embed_videos", "video_encoder"),
                    ("freeze_audio_encoder", "embed_audios", "audio_encoder"))
# Encoder attributes of the media input path, which --freeze-encoder leaves training (as the original did).
MEDIA_INPUT = {"embed_images", "image_proj", "embed_image_positions", "embed_videos", "video_proj",
               "embed_video_positions", "embed_audios", "audio_proj", "embed_audio_positions",
               "patch_layernorm_embedding"}
PROJECTIONS = ("image_proj", "video_proj", "audio_proj")
# Options that choose what trains, not what the model computes (models merged may differ in them).
TRAINABILITY_OPTIONS = ("unfreeze", "bitfit", "only_linear_proj", "freeze_encoder", "freeze_decoder",
                        "freeze_embeddings", "freeze_batchnorm") + tuple(option for option, _, _ in BACKBONE_FREEZES)


class Adapter(nn.Module):
    """x + up(GELU(down(x))), a bottleneck of ``dim`` features. ``up`` starts at zero, so a model given adapters
    computes exactly what it computed without them until they have trained."""

    def __init__(self, embed_dim: int, dim: int):
        super().__init__()
        self.down = nn.Linear(embed_dim, dim)
        self.up = nn.Linear(dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(F.gelu(self.down(x)))


class PromptProjection(nn.Module):
    """Prefix tuning's reparametrisation (Li and Liang, 2021; the original's ``--encoder-prompt-projection``): the
    prompts of all ``num_layers`` layers come from one learned (length, C) table through an MLP, Linear(C, dim),
    ReLU, Linear(dim, num_layers * 2 * C), which trains more stably than the prompts themselves. Once trained, only
    its output matters: a model built without the projection loads the computed prompts (``fold_prompt_projection``).
    """

    def __init__(self, length: int, embed_dim: int, dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.embedding = nn.Parameter(torch.randn(length, embed_dim) * 0.02)
        self.hidden = nn.Linear(embed_dim, dim)
        self.out = nn.Linear(dim, num_layers * 2 * embed_dim)

    def forward(self) -> Tensor:
        """(num_layers, 2, length, C): each layer's prompt keys, then values."""
        return project_prompts(self.embedding, self.hidden.weight, self.hidden.bias, self.out.weight, self.out.bias,
                               self.num_layers)


def project_prompts(embedding: Tensor, hidden_weight: Tensor, hidden_bias: Tensor, out_weight: Tensor,
                    out_bias: Tensor, num_layers: int) -> Tensor:
    length, dim = embedding.shape
    x = F.linear(F.relu(F.linear(embedding, hidden_weight, hidden_bias)), out_weight, out_bias)
    return x.view(length, num_layers, 2, dim).permute(1, 2, 0, 3)


def adapters(model: nn.Module) -> Iterator[Adapter]:
    return (module for module in model.modules() if isinstance(module, Adapter))


def prompts(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters of the prompts: the attention layers' own, and the prompt projections'."""
    for module in model.modules():
        if isinstance(module, PromptProjection):
            yield from module.parameters()
        elif getattr(module, "prompt", None) is not None:
            yield module.prompt


def peft_parameter_ids(model: nn.Module) -> Set[int]:
    """The adapters' and prompts' parameters: they always train, and no freeze fixes them."""
    return set().union(*(parameter_ids(adapter) for adapter in adapters(model))) | {id(p) for p in prompts(model)}


def backbones(model: nn.Module) -> Iterator[nn.Module]:
    """The media backbones the model has."""
    for _, attribute, _ in BACKBONE_FREEZES:
        module = getattr(model.encoder, attribute, None)
        if module is not None:
            yield module


def backbone_batchnorms(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    return (module for backbone in backbones(model) for module in backbone.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm))


def check_options(cfg) -> None:
    for option, backbone, needs in BACKBONE_FREEZES:
        if getattr(cfg, option) and needs is not None and not getattr(cfg, needs):
            raise ValueError(f"--{option.replace('_', '-')} given but the model has no {needs.split('_')[0]} "
                             f"encoder (--{needs.replace('_', '-')})")
    if cfg.unfreeze and not (cfg.adapter_dim or cfg.encoder_prompt_length or cfg.decoder_prompt_length):
        raise ValueError("--unfreeze given without adapters or prompts (--adapter-dim, --encoder-prompt-length, "
                         "--decoder-prompt-length)")
    for part in ("encoder", "decoder"):
        length, projection, dim = (getattr(cfg, f"{part}_prompt_{name}") for name in ("length", "projection", "dim"))
        if projection and not length:
            raise ValueError(f"--{part}-prompt-projection given without --{part}-prompt-length")
        if dim and not projection:
            raise ValueError(f"--{part}-prompt-dim {dim} given without --{part}-prompt-projection")


def parameter_ids(module: nn.Module) -> Set[int]:
    return {id(parameter) for parameter in module.parameters()}


def selected_parameters(model: nn.Module, cfg) -> Tuple[Set[int], List[str]]:
    """Ids of the parameters the selectors train, and the selectors' names; (None, []) when none restricts."""
    chosen, names = set(), []
    if cfg.adapter_dim and not cfg.unfreeze:
        names.append("adapters")
    if (cfg.encoder_prompt_length or cfg.decoder_prompt_length) and not cfg.unfreeze:
        names.append("prompts")
    if cfg.bitfit:
        names.append("biases (--bitfit)")
        chosen |= {id(parameter) for name, parameter in model.named_parameters() if name.endswith("bias")}
    if cfg.only_linear_proj:
        names.append("media projections (--only-linear-proj)")
        for attribute in PROJECTIONS:
            if hasattr(model.encoder, attribute):
                chosen |= parameter_ids(getattr(model.encoder, attribute))
    if not names:
        return None, []
    return chosen | peft_parameter_ids(model), names


def frozen_parameters(model: nn.Module, cfg) -> Tuple[Set[int], List[str]]:
    """Ids of the parameters the freezes fix, and the parts' names."""
    frozen, names = set(), []
    embedding = id(model.encoder.embed_tokens.weight)
    peft_ids = peft_parameter_ids(model)  # never frozen
    if cfg.freeze_encoder:
        names.append("encoder transformer")
        for name, child in model.encoder.named_children():
            if name not in MEDIA_INPUT:
                frozen |= parameter_ids(child) - peft_ids - {embedding}
        frozen |= {id(parameter) for parameter in model.encoder.parameters(recurse=False)}
    if cfg.freeze_decoder:
        names.append("decoder transformer")
        frozen |= parameter_ids(model.decoder) - peft_ids - {embedding}
    if cfg.freeze_embeddings:
        names.append("token embeddings")
        frozen.add(embedding)
    for option, backbone, _ in BACKBONE_FREEZES:
        if getattr(cfg, option):
            names.append(backbone)
            frozen |= parameter_ids(getattr(model.encoder, backbone))
    if cfg.freeze_batchnorm:
        names.append("BatchNorm of the media backbones")
        for batchnorm in backbone_batchnorms(model):
            frozen |= parameter_ids(batchnorm)
    return frozen, names


def fixed_parameter_ids(model: nn.Module) -> Set[int]:
    """Parameters no option trains, which modules name with ``fixed_parameters()`` (the audio front end's filters,
    kept as parameters for the original's checkpoint names)."""
    return {id(parameter) for module in model.modules() if hasattr(module, "fixed_parameters")
            for parameter in module.fixed_parameters()}


def apply_trainable(model: nn.Module, cfg) -> Dict[str, int]:
    """Sets ``requires_grad`` of every parameter from the options; returns the counts and logs what trains."""
    check_options(cfg)
    chosen, selectors = selected_parameters(model, cfg)
    frozen, freezes = frozen_parameters(model, cfg)
    frozen |= fixed_parameter_ids(model)
    total = trained = 0
    for parameter in model.parameters():
        trains = (chosen is None or id(parameter) in chosen) and id(parameter) not in frozen
        parameter.requires_grad_(trains)
        total += parameter.numel()
        trained += parameter.numel() if trains else 0
    if selectors or freezes:
        # Something always trains: no freeze reaches the media projections, which every model has.
        logger.info("parameters that train: %d of %d (%.2f%%)%s%s", trained, total, 100.0 * trained / total,
                    f"; only {', '.join(selectors)}" if selectors else "",
                    f"; frozen: {', '.join(freezes)}" if freezes else "")
    return {"trained": trained, "total": total}


# Modules a checkpoint may lack: (option that builds them, their name, keys' scope and marker, the key whose size
# along a dimension is the option's value, further options that build them)
PEFT_PARTS = (("adapter_dim", "adapters", "", ".adapter.", ("down.weight", 0), ""),
              ("encoder_prompt_length", "encoder prompts", "encoder.", ".self_attn.prompt", ("prompt", 1), ""),
              ("decoder_prompt_length", "decoder prompts", "decoder.", ".self_attn.prompt", ("prompt", 1), ""),
              ("encoder_prompt_length", "encoder prompt projection weights", "encoder.", "prompt_projection.",
               ("embedding", 0), " --encoder-prompt-projection"),
              ("decoder_prompt_length", "decoder prompt projection weights", "decoder.", "prompt_projection.",
               ("embedding", 0), " --decoder-prompt-projection"))


def keep_own_peft_weights(model: nn.Module, state_dict: Dict[str, Tensor], prefix: str = "") -> None:
    """A checkpoint without adapters or prompts (the model being adapted) leaves this model's own as they start
    (adapters as identity functions); a checkpoint with them needs a model built with them. The prompts of a
    checkpoint's prompt projection load into a model built without one as computed."""
    for part in ("encoder", "decoder"):
        fold_prompt_projection(model, state_dict, prefix, part)
    weights = model.state_dict()
    for option, name, scope, marker, (size_key, size_dim), more in PEFT_PARTS:
        own = [key for key in weights if key.startswith(scope) and marker in key]
        saved = [key[len(prefix):] for key in state_dict
                 if key.startswith(prefix + scope) and marker in key[len(prefix):]]
        if own and not saved:
            logger.info("the checkpoint has no %s: this model's %d tensors of them keep their initialisation", name,
                        len(own))
            for key in own:
                state_dict[prefix + key] = weights[key]
        elif saved and not own:
            sized = [key for key in saved if key.endswith(size_key)]
            size = state_dict[prefix + sized[0]].size(size_dim) if sized else "N"
            raise ValueError(f"the checkpoint has {name} ({saved[0]}, ...) but this model has none: pass "
                             f"--{option.replace('_', '-')} {size}{more}")


def fold_prompt_projection(model: nn.Module, state_dict: Dict[str, Tensor], prefix: str, part: str) -> None:
    """A checkpoint's prompt projection of ``part`` (encoder or decoder) into a model with plain prompts: its
    output replaces it, one prompt per layer. Plain prompts cannot go the other way."""
    scope = f"{prefix}{part}."
    projection = {key[len(scope + "prompt_projection."):]: key for key in state_dict
                  if key.startswith(scope + "prompt_projection.")}
    layers = getattr(model, part).layers
    own_plain = any(layer.self_attn.prompt is not None for layer in layers)
    if projection and own_plain:
        names = ("embedding", "hidden.weight", "hidden.bias", "out.weight", "out.bias")
        if set(projection) != set(names):
            raise ValueError(f"the checkpoint's {part} prompt projection holds {sorted(projection)}, expected "
                             f"{list(names)}")
        tensors = [state_dict[projection[name]] for name in names]
        layer_count = tensors[3].size(0) // (2 * tensors[0].size(1))
        if layer_count != len(layers):
            raise ValueError(f"the checkpoint's {part} prompt projection makes prompts for {layer_count} layers, "
                             f"this model has {len(layers)}")
        with torch.no_grad():
            computed = project_prompts(*(tensor.float() for tensor in tensors), layer_count)
        for index, prompt in enumerate(computed):
            state_dict[f"{scope}layers.{index}.self_attn.prompt"] = prompt.to(tensors[0].dtype).contiguous()
        for key in projection.values():
            del state_dict[key]
        logger.info("the checkpoint's %s prompt projection is folded: its %d layers' prompts load as computed", part,
                    layer_count)
    elif getattr(getattr(model, part), "prompt_projection", None) is not None:
        plain = [key for key in state_dict if key.startswith(f"{scope}layers.") and key.endswith(".self_attn.prompt")]
        if plain:
            raise ValueError(f"the checkpoint's {part} prompts are plain tensors ({plain[0][len(prefix):]}, ...), "
                             f"which no prompt projection computes: build the model without "
                             f"--{part}-prompt-projection")


def trains(module: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in module.parameters())


def eval_untrained_backbones(model: nn.Module) -> None:
    """Puts each media backbone none of whose parameters trains in eval mode: its BatchNorm statistics then stay as
    loaded, as its weights do (a frozen backbone, or one outside what --bitfit, --only-linear-proj, adapters or
    prompts train); the same for each BatchNorm of a training backbone whose scale and shift are fixed
    (--freeze-batchnorm). fairseq calls this at every step: the BatchNorms are looked at only with that option."""
    for backbone in backbones(model):
        if not trains(backbone):
            backbone.eval()
        elif backbone.training and model.cfg.freeze_batchnorm:
            for module in backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and not trains(module):
                    module.eval()


def zero_adapters(model: nn.Module) -> None:
    """After the model-wide initialisation, which would give ``up`` random weights."""
    with torch.no_grad():
        for adapter in adapters(model):
            adapter.reset_parameters()
