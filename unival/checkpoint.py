"""Loading checkpoints: the original UnIVAL/OFA ones (``cfg["model"]`` an argparse.Namespace) and this
project's own, safely (weights-only unpickling), with EMA selection and fp16 upcasting.
"""
import argparse
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from fairseq.data import Dictionary

from unival._compat import allow_checkpoint_types
from unival.data_utils.vocab import (CHECKPOINT_VOCABULARY, dictionary_from_symbols, is_placeholder_vocabulary,
                                     placeholder_symbol, vocabulary_difference)
from unival.models.position import image_relative_buckets, token_relative_buckets
from unival.models.unival import WEIGHT_FILE_OPTIONS, UnivalConfig, UnivalModel, architecture_defaults

logger = logging.getLogger(__name__)

# Buffers the original stores although they follow from the configuration; checked, then dropped.
DERIVED_BUFFERS = ("version", "token_rp_bucket", "image_rp_bucket", "image_position_idx")
# Parameters of the original that its forward pass never uses (timm's ImageNet classifier head).
UNUSED_PREFIXES = ("encoder.embed_images.fc.",)

# Original option -> this project's option, for options with the same meaning and value.
SAME_OPTIONS = (
    "encoder_layers", "decoder_layers", "encoder_embed_dim", "decoder_embed_dim", "encoder_ffn_embed_dim",
    "decoder_ffn_embed_dim", "encoder_attention_heads", "decoder_attention_heads", "dropout", "attention_dropout",
    "activation_dropout", "encoder_drop_path_rate", "decoder_drop_path_rate", "max_source_positions",
    "max_target_positions", "token_bucket_size", "image_bucket_size", "attn_scale_factor",
    "code_layernorm_embedding",
)
# Original flag that turns a feature on -> this project's flag that turns it off.
NEGATED_OPTIONS = {
    "scale_attn": "no_attn_ln",
    "scale_fc": "no_ffn_ln",
    "scale_heads": "no_head_scale",
    "add_type_embedding": "no_type_embedding",
    "layernorm_embedding": "no_layernorm_embedding",
    "patch_layernorm_embedding": "no_patch_layernorm_embedding",
}
# Original options whose non-default value changes the network in ways this project does not implement.
UNSUPPORTED_OPTIONS = {
    "scale_resids": False,
    "encoder_prompt": False,
    "decoder_prompt": False,
    "adapter": False,
    "cross_self_attention": False,
    "no_cross_attention": False,
}


# The original's encoder names -> this project's. (Its pann_cnn10 has a fifth block and differs from PANN's Cnn10.)
ORIGINAL_VIDEO_ENCODERS = {"all_resnext50": "resnext50", "all_resnext101": "resnext101"}
ORIGINAL_AUDIO_ENCODERS = {"pann_cnn6": "cnn6", "pann_cnn14": "cnn14"}
AUDIO_OPTIONS = {"sample_rate": "audio_sample_rate", "hop_size": "audio_hop_size", "mel_bins": "audio_mel_bins"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def unpickler_reason(message: str) -> str:
    """The line of torch's weights-only error that says what failed (its message is several paragraphs)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and index + 1 < len(lines):
            return lines[index + 1]
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()
    return lines[0] if lines else message


def read_checkpoint(path: Union[str, Path], allow_unsafe: bool = False) -> Dict[str, Any]:
    """Unpickles a checkpoint with ``weights_only=True`` (only tensors and the few containers real
    checkpoints hold); ``allow_unsafe`` falls back to full unpickling, which can run code from the file."""
    path = Path(path)
    if path.is_dir():
        kind = "a model exported by `unival convert`" if (path / "config.json").is_file() else "not a checkpoint"
        raise FileNotFoundError(f"{path} is a folder ({kind}): give a checkpoint file (.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    allow_checkpoint_types()
    with path.open("rb") as file:
        start = file.read(4)
    # torch.save writes a zip archive; torch < 1.6 and the original code's fairseq a pickle (protocol 2 and up)
    if not (start.startswith(b"PK\x03\x04") or start[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither the zip archive of torch.save nor a "
                              f"pickle; it starts with {start!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = unpickler_reason(str(err))
        if "Unsupported global" not in reason:
            raise CheckpointError(f"{path} is damaged or not a checkpoint: {reason}") from err
        if not allow_unsafe:
            raise CheckpointError(
                f"{path} holds Python objects outside the weights-only allowlist ({reason}). Loading it fully "
                "can execute code stored in the file: pass allow_unsafe=True (--allow-unsafe-checkpoint) "
                "only for files you trust") from err
    except (EOFError, IndexError, RuntimeError) as err:  # a truncated pickle, or zip archive
        raise CheckpointError(f"{path} is damaged or not a checkpoint: {err}") from err
    warnings.warn(f"loading {path} with full unpickling (allow_unsafe=True): it can execute code")
    return torch.load(path, map_location="cpu", weights_only=False)


def config_from_original(args: argparse.Namespace) -> UnivalConfig:
    """Maps the original code's model arguments onto this project's config, refusing what it lacks."""
    values = architecture_defaults("unival_base")
    for name in SAME_OPTIONS:
        if hasattr(args, name):
            values[name] = getattr(args, name)
    for name, negated in NEGATED_OPTIONS.items():
        values[negated] = not getattr(args, name, False)
    for name, supported in UNSUPPORTED_OPTIONS.items():
        if getattr(args, name, supported) not in (supported, None, 0):
            raise CheckpointError(f"the checkpoint uses --{name.replace('_', '-')}={getattr(args, name)}, "
                                  "which this project does not implement")
    if getattr(args, "entangle_position_embedding", False) and not getattr(args, "disable_entangle", False):
        raise CheckpointError("the checkpoint adds position embeddings to the tokens (entangled positions); "
                              "this project implements UnIVAL's disentangled positions only")
    if not (getattr(args, "encoder_normalize_before", True) and getattr(args, "decoder_normalize_before", True)):
        raise CheckpointError("the checkpoint is post-norm; UnIVAL models are pre-norm")
    if getattr(args, "activation_fn", "gelu") != "gelu":
        raise CheckpointError(f"unsupported activation {args.activation_fn!r} (UnIVAL uses gelu)")
    encoder_name = getattr(args, "image_encoder_name", "resnet") or "resnet"
    resnet = getattr(args, "resnet_type", "resnet101")
    if encoder_name == "resnet":
        values.update(image_encoder=resnet, image_encoder_stages=3)
    elif encoder_name == "timm_resnet":
        values.update(image_encoder=resnet, image_encoder_stages=4)
    else:
        raise CheckpointError(f"image encoder {encoder_name!r} of the checkpoint is not supported yet "
                              "(supported: resnet, timm_resnet)")
    values["image_drop_path_rate"] = getattr(args, "resnet_drop_path_rate", 0.0)
    values.update(dict.fromkeys(WEIGHT_FILE_OPTIONS))
    values["video_encoder"] = _mapped_name(args, "video_encoder_name", ORIGINAL_VIDEO_ENCODERS)
    values["audio_encoder"] = _mapped_name(args, "audio_encoder_name", ORIGINAL_AUDIO_ENCODERS)
    for original, ours in AUDIO_OPTIONS.items():
        if getattr(args, original, None) is not None:
            values[ours] = getattr(args, original)
    return UnivalConfig(**values)


def _mapped_name(args: argparse.Namespace, option: str, names: Dict[str, str]) -> Optional[str]:
    value = getattr(args, option, None)
    if value is None:
        return None
    if value not in names:
        raise CheckpointError(f"--{option.replace('_', '-')} {value} of the checkpoint is not supported "
                              f"(supported: {', '.join(names)})")
    return names[value]


def config_from_own(model_cfg: Dict[str, Any]) -> UnivalConfig:
    """Config of a checkpoint written by this project's training (a dict of UnivalConfig fields)."""
    known = set(architecture_defaults("unival_base"))
    values = {key: value for key, value in dict(model_cfg).items() if key in known}
    for option in WEIGHT_FILE_OPTIONS:
        values[option] = None  # the weights are in the checkpoint itself
    return UnivalConfig(**values)


def placeholder_dictionary(size: int, pad: int = 1) -> Dictionary:
    """A dictionary with fairseq's special ids and ``size`` entries, for building a model without its vocabulary."""
    dictionary = Dictionary()
    if dictionary.pad() != pad:
        raise CheckpointError(f"the checkpoint's padding id {pad} differs from fairseq's {dictionary.pad()}")
    for index in range(len(dictionary), size):
        dictionary.add_symbol(placeholder_symbol(index))
    return dictionary


def is_placeholder(dictionary: Dictionary) -> bool:
    """Whether ``dictionary`` is a :func:`placeholder_dictionary` (a model built without its vocabulary)."""
    return is_placeholder_vocabulary(dictionary.symbols)


def _check_derived_buffers(state: Dict[str, torch.Tensor], cfg: UnivalConfig) -> None:
    expected = {
        "token_rp_bucket": lambda max_positions: token_relative_buckets(cfg.token_bucket_size, max_positions),
        "image_rp_bucket": lambda _: image_relative_buckets(cfg.image_bucket_size),
    }
    for key, value in state.items():
        name = key.rsplit(".", 1)[-1]
        if name in expected:
            max_positions = cfg.max_source_positions if key.startswith("encoder") else cfg.max_target_positions
            if not torch.equal(value, expected[name](max_positions)):
                raise CheckpointError(f"{key} differs from the buckets this project computes for the "
                                      "checkpoint's configuration: its position scheme is not supported")


def without_derived_entries(weights: Dict[str, torch.Tensor], cfg: UnivalConfig, prefix: str = "") -> Dict:
    """``weights`` less the buffers this project recomputes (checked first) and the unused classifier."""
    _check_derived_buffers({key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)},
                           cfg)
    unused = tuple(prefix + name for name in UNUSED_PREFIXES)
    return {key: value for key, value in weights.items()
            if key.rsplit(".", 1)[-1] not in DERIVED_BUFFERS and not key.startswith(unused)}


def stored_weights(state: Dict[str, Any], ema: bool, source: str = "the checkpoint") -> Dict[str, torch.Tensor]:
    """The model's weights as the checkpoint stores them, or its EMA copy's (``ema``)."""
    if not ema:
        return state["model"]
    extra = state.get("extra_state") or {}
    if not extra.get("ema"):
        raise CheckpointError(f"ema=True but {source} holds no EMA weights (extra_state['ema'])")
    return extra["ema"]


def model_state_from_checkpoint(state: Dict[str, Any], cfg: UnivalConfig, ema: bool,
                                source: str = "the checkpoint") -> Dict[str, torch.Tensor]:
    """The weights to load: the model's or the EMA copy's, float32, derived and unused entries removed."""
    return {key: value.float() if value.is_floating_point() else value
            for key, value in without_derived_entries(stored_weights(state, ema, source), cfg).items()}


def key_differences(expected: Dict[str, torch.Tensor], given: Dict[str, torch.Tensor],
                    titles: Tuple[str, str, str] = ("missing", "unexpected", "shape mismatch"),
                    labels: Tuple[str, str] = ("", "")) -> List[str]:
    """Lines naming the keys of ``expected`` that ``given`` lacks, the keys only ``given`` has, and the keys whose
    shapes differ (``given``'s shape first, each after its label), under ``titles``; none when the two fit."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mis_shaped = [f"{key}: {labels[0]}{tuple(given[key].shape)} vs {labels[1]}{tuple(expected[key].shape)}"
                  for key in sorted(set(expected) & set(given)) if expected[key].shape != given[key].shape]
    return [f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else "")
            for title, keys in zip(titles, (missing, unexpected, mis_shaped)) if keys]


def load_strict(model: torch.nn.Module, weights: Dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that lists every missing, unexpected and mis-shaped key in its error."""
    if isinstance(model, UnivalModel):  # before the key comparison, which a missing fingerprint would fail
        weights = dict(weights)
        try:
            model.check_vocabulary_fingerprint(weights)
        except ValueError as err:
            raise CheckpointError(f"{source}: {err}") from None
    differences = key_differences(model.state_dict(), weights, labels=("checkpoint ", "model "))
    if differences:
        raise CheckpointError("\n".join([f"{source} does not fit the model:"] + differences))
    model.load_state_dict(weights, strict=True)


def build_from_checkpoint(state: Dict[str, Any], ema: bool = False, dictionary: Optional[Dictionary] = None,
                          source: str = "checkpoint") -> Tuple[UnivalModel, UnivalConfig]:
    """(model, its configuration) of a checkpoint already read (``read_checkpoint``, or the merged state of
    ``merge_checkpoints``), its weights loaded strictly; the model is in training mode (``.eval()`` to predict).
    ``ema``, ``dictionary``: as for :func:`load_checkpoint`; ``source`` names the checkpoint in errors."""
    cfg = checkpoint_config(state, source)
    weights = model_state_from_checkpoint(state, cfg, ema, source)
    vocab_size = weights["encoder.embed_tokens.weight"].shape[0]
    dictionary = model_dictionary(dictionary, stored_vocabulary(state, source), vocab_size, source)
    model = UnivalModel.from_config(cfg, dictionary)
    load_strict(model, weights, source)
    return model, cfg


def model_dictionary(given: Union[Dictionary, str, Path, None], stored: Optional[Dictionary], vocab_size: int,
                     source: str, holder: Optional[str] = None) -> Dictionary:
    """The dictionary to build the model of ``source`` (``vocab_size`` symbols) with: ``given`` (a ``Dictionary``
    or a dict.txt path), which must be the ``stored`` vocabulary (kept by ``holder``, by default ``source``) where
    there is one; else the stored one; else a placeholder."""
    holder = holder or source
    if isinstance(given, (str, Path)):
        from unival.data_utils.vocab import load_dictionary
        given = load_dictionary(str(given))
    if stored is not None and len(stored) != vocab_size:
        raise CheckpointError(f"{holder} stores a vocabulary of {len(stored)} symbols for a model of {vocab_size}")
    if given is None:
        return stored if stored is not None else placeholder_dictionary(vocab_size)
    difference = vocabulary_difference(given, stored) if stored is not None else None
    if difference:
        raise CheckpointError(f"the dictionary given is not the vocabulary {source} was trained with, which "
                              f"{'it' if holder == source else holder} stores ({difference}): its ids would decode "
                              f"to other words; pass none to use the stored one")
    if len(given) != vocab_size:
        raise CheckpointError(f"the dictionary has {len(given)} symbols but {source} was trained with "
                              f"{vocab_size}: use the dict.txt and --code-dict-size/--num-bins it was trained with")
    return given


def stored_vocabulary(state: Dict[str, Any], source: str = "the checkpoint") -> Optional[Dictionary]:
    """The vocabulary a checkpoint of fairseq-train with this plugin stores (its task state), or None (the
    original's checkpoints and ours from before it was stored)."""
    symbols = (state.get("task_state") or {}).get(CHECKPOINT_VOCABULARY)
    return None if symbols is None else dictionary_from_symbols(symbols, source)


def checkpoint_config(state: Dict[str, Any], source: str = "checkpoint") -> UnivalConfig:
    """The model configuration of a checkpoint: the original's argument namespace mapped, or our own options."""
    model_args = state["cfg"]["model"] if state.get("cfg") else state.get("args")
    if isinstance(model_args, argparse.Namespace):
        return config_from_original(model_args)
    if model_args is not None:
        return config_from_own(model_args)
    raise CheckpointError(f"{source} has no model configuration (cfg['model'] or args)")


def load_checkpoint(path: Union[str, Path], ema: bool = False, dictionary: Optional[Dictionary] = None,
                    allow_unsafe: bool = False) -> UnivalModel:
    """Builds the model stored in ``path`` in eval mode: an original UnIVAL checkpoint, one written by
    ``fairseq-train`` with this plugin, or a folder written by ``unival convert``.

    ``ema`` picks the exponential-moving-average weights; ``dictionary`` (optional; a fairseq ``Dictionary`` or
    the path of a ``dict.txt``) is the vocabulary the model was trained with, for decoding text; without it the
    vocabulary the checkpoint stores is used, else a placeholder of the right size.
    """
    return load_checkpoint_and_task_options(path, ema, dictionary, allow_unsafe)[0]


def load_checkpoint_and_task_options(path: Union[str, Path], ema: bool = False,
                                     dictionary: Optional[Dictionary] = None,
                                     allow_unsafe: bool = False) -> Tuple[UnivalModel, Optional[Dict[str, Any]]]:
    """``load_checkpoint``'s model and the task options it was trained with (image size, frames...), which a
    checkpoint file holds (fairseq's ``cfg['task']``, or the original's argument namespace); None for a folder of
    ``unival convert`` made without them."""
    if Path(path).is_dir():
        from unival.convert import load_safetensors, stored_folder_task_options
        if ema:
            raise CheckpointError(f"ema=True but {path} is a folder of `unival convert`, which holds one set of "
                                  f"weights (`unival convert --ema` exports the EMA ones)")
        return load_safetensors(path, dictionary=dictionary), stored_folder_task_options(path)
    state = read_checkpoint(path, allow_unsafe=allow_unsafe)
    model, _ = build_from_checkpoint(state, ema=ema, dictionary=dictionary, source=str(path))
    return model.eval(), stored_task_options(state)


def stored_task_options(state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The task options a checkpoint was trained with (fairseq's ``cfg['task']``, or the original's argument
    namespace); None when it holds none."""
    task = state["cfg"].get("task") if state.get("cfg") else state.get("args")
    if isinstance(task, argparse.Namespace):
        task = vars(task)
    return dict(task) if task else None
