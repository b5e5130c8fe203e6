"""``unival merge``: UnIVAL's model merging. Checkpoints finetuned from one pretrained model are combined by
weight interpolation, theta = sum_i w_i * theta_i: two checkpoints at lambda and 1 - lambda, or a uniform soup
of N. The result is a checkpoint of the first one's format and options, for evaluation or further finetuning.
"""
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from unival.checkpoint import (CheckpointError, build_from_checkpoint, checkpoint_config, key_differences,
                               read_checkpoint, stored_vocabulary, stored_weights)
from unival.data_utils.vocab import (UNKNOWN_FINGERPRINT, VOCABULARY_FINGERPRINT, known_fingerprint,
                                     vocabulary_difference)
from unival.models.peft import TRAINABILITY_OPTIONS
from unival.models.unival import WEIGHT_FILE_OPTIONS

logger = logging.getLogger(__name__)

# Model options that do not change what a trained network computes; the merged checkpoints may differ in them.
TRAINING_ONLY_OPTIONS = ("dropout", "attention_dropout", "activation_dropout", "encoder_drop_path_rate",
                         "decoder_drop_path_rate", "image_drop_path_rate", "no_channels_last",
                         "compile_layers") + WEIGHT_FILE_OPTIONS + TRAINABILITY_OPTIONS
# Parts of a checkpoint that describe one training run's optimisation, left out of a merged one.
RUN_STATE = ("last_optimizer_state",)
RUN_EXTRA_STATE = ("ema", "ema_fp32_params", "metrics", "previous_training_time", "best", "val_loss")
WEIGHT_SUM_TOLERANCE = 1e-6


@dataclasses.dataclass
class MergeReport:
    """What ``merge_checkpoints`` did to the tensors of the first checkpoint."""

    interpolated: int = 0  # floating-point tensors combined
    identical: int = 0  # floating-point tensors equal in every checkpoint, kept bit for bit
    integer_differing: List[str] = dataclasses.field(default_factory=list)  # kept from the first checkpoint


def interpolation_weights(weights: Optional[Sequence[float]], count: int) -> List[float]:
    """The weight of each of ``count`` checkpoints: uniform when not given; one value lambda for two checkpoints
    means (lambda, 1 - lambda). They must be finite and sum to 1."""
    if count < 2:
        raise ValueError(f"merging needs at least two checkpoints, got {count}")
    if weights is None:
        return [1.0 / count] * count
    if isinstance(weights, (int, float)):  # merge_checkpoints([a, b], 0.3): lambda and 1 - lambda
        weights = [weights]
    weights = [float(value) for value in weights]
    if count == 2 and len(weights) == 1:
        weights = [weights[0], 1.0 - weights[0]]
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} checkpoints: give one per checkpoint "
                         "(or a single lambda for two)")
    if not all(math.isfinite(value) for value in weights):
        raise ValueError(f"weights must be finite numbers, got {weights}")
    if abs(sum(weights) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"weights {weights} sum to {sum(weights):g}; an interpolation's weights sum to 1")
    return weights


def check_same_network(first: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor], first_source: str,
                       source: str) -> None:
    differences = key_differences(other, first, (f"only in {source}", f"only in {first_source}", "shapes differ"))
    if differences:
        raise CheckpointError("\n".join([f"{first_source} and {source} do not hold the same network; only "
                                          "checkpoints finetuned from one model can be merged:"] + differences))


def check_same_architecture(first: Dict[str, Any], other: Dict[str, Any], first_source: str, source: str) -> None:
    differing = [f"{name}: {first[name]!r} vs {other[name]!r}" for name in first
                 if name not in TRAINING_ONLY_OPTIONS and first[name] != other[name]]
    if differing:
        raise CheckpointError(f"{first_source} and {source} have different model options ({'; '.join(differing)}): "
                              "the same tensors would not compute the same network")


def check_same_vocabulary(first: Dict[str, Any], other: Dict[str, Any], first_source: str, source: str) -> None:
    """Same-sized vocabularies whose ids mean other words pass every shape check: the stored lists must agree."""
    first_vocabulary, vocabulary = stored_vocabulary(first, first_source), stored_vocabulary(other, source)
    if first_vocabulary is not None and vocabulary is not None:
        difference = vocabulary_difference(first_vocabulary, vocabulary)
        if difference:
            raise CheckpointError(f"{first_source} and {source} were trained with different vocabularies "
                                  f"({difference}): their embeddings do not mean the same words")


def check_same_fingerprint(known: Optional[Tuple[str, int]], fingerprint: Optional[torch.Tensor],
                           source: str) -> Optional[Tuple[str, int]]:
    """``source``'s vocabulary fingerprint against ``known``, the first known one read (its checkpoint and value),
    which is returned: the vocabularies of checkpoints that store none (e.g. their task state removed) are still
    told apart."""
    value = known_fingerprint(fingerprint)
    if value is None or known is None:
        return known if value is None else (source, value)
    if value != known[1]:
        raise CheckpointError(f"{known[0]} and {source} were trained with different vocabularies (their "
                              "vocabulary fingerprints differ): their embeddings do not mean the same words")
    return known


def tensor_view(tensor: torch.Tensor) -> Tuple:
    """What makes two entries of a state dict one tensor (tied weights): the same memory, seen the same way."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
            tensor.dtype)


def tied_entries(weights: Dict[str, torch.Tensor]) -> Dict[str, str]:
    """Each key whose tensor is also an earlier key's (BART's token embeddings and output projection are one
    table) mapped to that earlier key."""
    first_key: Dict[Tuple, str] = {}
    tied = {}
    for key, value in weights.items():
        owner = first_key.setdefault(tensor_view(value), key)
        if owner != key:
            tied[key] = owner
    return tied


def merge_checkpoints(paths: Sequence[Union[str, Path]], weights: Optional[Sequence[float]] = None,
                      ema: bool = False, allow_unsafe: bool = False) -> Tuple[Dict[str, Any], MergeReport]:
    """The checkpoint whose weights are ``sum_i weights[i] * weights of paths[i]`` (see
    :func:`interpolation_weights`), and what was done to its tensors; with the first checkpoint's options and format. ``ema`` merges the EMA
    weights each checkpoint holds. Floating-point tensors are summed in float32 (float64 ones in float64) and
    stored in the first checkpoint's precision; tensors equal in every checkpoint and integer ones (BatchNorm
    counters, position buckets) are the first's. Checkpoints are read one at a time."""
    if isinstance(paths, (str, Path)):
        raise TypeError(f"merge_checkpoints takes a list of checkpoint paths, got the single path {str(paths)!r}")
    weights = interpolation_weights(weights, len(paths))
    sources = [str(path) for path in paths]
    first = read_checkpoint(paths[0], allow_unsafe=allow_unsafe)
    for key in RUN_STATE:  # not needed, and often larger than the weights (Adam's moments)
        first.pop(key, None)
    first_options = dataclasses.asdict(checkpoint_config(first, sources[0]))
    first_weights = stored_weights(first, ema, sources[0])
    # vocabulary fingerprints are compared, not summed (checkpoints saved before them hold none; 0 is unknown)
    fingerprint_stored = VOCABULARY_FINGERPRINT in first_weights
    known_vocabulary = check_same_fingerprint(None, first_weights.pop(VOCABULARY_FINGERPRINT, None), sources[0])
    tied = tied_entries(first_weights)  # while tied in every checkpoint read: summed once, stored once
    sums: Dict[str, torch.Tensor] = {}
    identical = {key: True for key in first_weights}
    report = MergeReport()
    for index, (source, weight) in enumerate(zip(sources, weights)):
        state = first if index == 0 else read_checkpoint(paths[index], allow_unsafe=allow_unsafe)
        tensors = stored_weights(state, ema, source)
        if index:
            fingerprint = tensors.pop(VOCABULARY_FINGERPRINT, None)
            fingerprint_stored |= fingerprint is not None
            check_same_architecture(first_options, dataclasses.asdict(checkpoint_config(state, source)),
                                    sources[0], source)
            check_same_network(first_weights, tensors, sources[0], source)
            check_same_vocabulary(first, state, sources[0], source)
            known_vocabulary = check_same_fingerprint(known_vocabulary, fingerprint, source)
            still = {key: owner for key, owner in tied_entries(tensors).items() if tied.get(key) == owner}
            for key in tied.keys() - still.keys():  # one tensor with its owner until now: the owner's sum so far
                owner = tied[key]
                identical[key] = identical[owner]
                if owner in sums:
                    sums[key] = sums[owner].clone()
            tied = still
        for key, value in tensors.items():
            if key in tied:
                continue  # its owner's tensor, summed once
            reference = first_weights[key]
            if index and identical[key] and not torch.equal(value, reference):
                identical[key] = False
                if not reference.is_floating_point():
                    report.integer_differing.append(key)
            if reference.is_floating_point():
                total = sums.setdefault(key, torch.zeros(value.shape, dtype=torch.promote_types(reference.dtype,
                                                                                                torch.float32)))
                total.add_(value.to(total.dtype), alpha=weight)
        del state, tensors
    merged_weights = {}
    for key, reference in first_weights.items():  # an owner comes before the keys tied to it
        if reference.is_floating_point() and not identical[tied.get(key, key)]:
            # a tied key gets its owner's merged tensor: one tensor, as in the checkpoints
            merged_weights[key] = merged_weights[tied[key]] if key in tied else sums[key].to(reference.dtype)
            report.interpolated += 1
        else:
            merged_weights[key] = reference
            report.identical += reference.is_floating_point()
    if fingerprint_stored:
        merged_weights[VOCABULARY_FINGERPRINT] = torch.tensor(known_vocabulary[1] if known_vocabulary
                                                              else UNKNOWN_FINGERPRINT)
    merged = dict(first)
    merged["model"] = merged_weights
    if first.get("extra_state") is not None:
        merged["extra_state"] = {key: value for key, value in first["extra_state"].items()
                                 if key not in RUN_EXTRA_STATE}
    merged["merged_from"] = [{"path": source, "weight": weight, "ema": ema} for source, weight in zip(sources, weights)]
    if report.integer_differing:
        logger.info("%d integer entries differ between the checkpoints (e.g. %s): %s's are kept",
                    len(report.integer_differing), report.integer_differing[0], sources[0])
    return merged, report


def save_checkpoint_atomically(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """torch.save through a temporary file renamed into place: an interrupted write leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    return path


def add_arguments(parser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints finetuned from one model (.pt of "
                        "fairseq-train with this plugin, or of the original UnIVAL); the first one's options "
                        "(task, image size...) are the merged checkpoint's")
    parser.add_argument("--out", required=True, help="the merged checkpoint's path (.pt)")
    parser.add_argument("--weights", nargs="+", type=float, default=None, metavar="W",
                        help="one weight per checkpoint, summing to 1 (default: uniform, a model soup); for two "
                             "checkpoints one value lambda means lambda and 1 - lambda")
    parser.add_argument("--ema", action="store_true", help="merge the EMA weights stored in each checkpoint")
    parser.add_argument("--allow-unsafe-checkpoint", action="store_true",
                        help="unpickle arbitrary objects (only for files you trust; can execute code)")


def run(args) -> int:
    out = Path(args.out)
    if out.resolve() in {Path(path).resolve() for path in args.checkpoints}:
        raise SystemExit(f"unival merge: --out {out} is one of the checkpoints being merged; choose another path")
    try:
        merged, report = merge_checkpoints(args.checkpoints, args.weights, ema=args.ema,
                                           allow_unsafe=args.allow_unsafe_checkpoint)
        build_from_checkpoint(merged, source=str(out))  # the merged checkpoint must load before it is written
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"unival merge: {err}") from err
    save_checkpoint_atomically(merged, out)
    parts = " + ".join(f"{entry['weight']:g} x {entry['path']}" for entry in merged["merged_from"])
    print(f"wrote {out} = {parts}{' (EMA weights)' if args.ema else ''}: {report.interpolated} tensors "
          f"interpolated, {report.identical} equal in every checkpoint, {len(report.integer_differing)} differing "
          f"integer tensors taken from the first")
    return 0
