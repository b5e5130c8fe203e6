"""Initialising a unival model from a BART checkpoint (fairseq's ``bart.base/model.pt``), as the paper starts its
first pretraining stage: every tensor of the text transformer whose name BART shares (attention, feed-forward,
their LayerNorms, embedding LayerNorms, positions) and the token-embedding rows of BART's vocabulary. What BART
lacks keeps the model's own initialisation: the image, video and audio encoders, the position-bias projections
and relative tables, the NormFormer LayerNorms and head scales, the ``<code>`` and ``<bin>`` token rows."""
import logging
from pathlib import Path
from typing import Dict, List, NamedTuple, Union

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# fairseq's four specials, the 50260 BPE symbols of BART's dict.txt and <mask>: the ids the unified vocabulary
# (with --dict-file dict.txt) shares with BART; the <code> and <bin> tokens follow.
BART_SYMBOLS = 50265
TOKEN_TABLES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


class BartInitialisation(NamedTuple):
    copied: List[str]  # tensors of the model set from BART
    kept: List[str]  # tensors of the model BART has nothing for
    token_rows: int  # token embedding rows set from BART's


def bart_weights(path: Union[str, Path]) -> Dict[str, Tensor]:
    """The tensors of a BART checkpoint (``{"model": state_dict, ...}`` as fairseq writes it, or a bare state
    dict), read weights-only."""
    from unival.checkpoint import CheckpointError, read_checkpoint

    state = read_checkpoint(path)
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or "encoder.embed_tokens.weight" not in weights:
        raise CheckpointError(f"--bart-path {path}: not a BART checkpoint (no encoder.embed_tokens.weight)")
    return weights


def initialise_from_bart(model: nn.Module, path: Union[str, Path]) -> BartInitialisation:
    """Copies into ``model`` (in place) the tensors of the BART checkpoint at ``path`` that it shares by name;
    the token tables take BART's first rows (at most :data:`BART_SYMBOLS`). A shared tensor of another shape
    (BART-large into unival_base) is an error naming it."""
    from unival.checkpoint import CheckpointError

    bart = bart_weights(path)
    copied, kept, token_rows = [], [], 0
    with torch.no_grad():
        for name, value in model.state_dict().items():
            source = bart.get(name)
            if source is None:
                kept.append(name)
                continue
            if name in TOKEN_TABLES and source.dim() == 2 and source.size(1) == value.size(1):
                token_rows = min(source.size(0), value.size(0), BART_SYMBOLS)
                value[:token_rows].copy_(source[:token_rows])
            elif source.shape == value.shape:
                value.copy_(source)
            else:
                raise CheckpointError(f"--bart-path {path}: {name} is {tuple(source.shape)} in BART but "
                                      f"{tuple(value.shape)} in this model (BART-base fits unival_base: 768 wide, "
                                      f"FFN 3072)")
            copied.append(name)
    layers = [name for name in copied if ".layers." in name]
    if not layers:
        raise CheckpointError(f"--bart-path {path}: no transformer layer of the model matches BART's")
    logger.info("initialised %d tensors from BART %s (%d token rows); %d tensors BART lacks keep their "
                "initialisation (media encoders, position biases, NormFormer layers)", len(copied), path,
                token_rows, len(kept))
    return BartInitialisation(copied, kept, token_rows)
