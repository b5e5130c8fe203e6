"""``unival convert``: exports a checkpoint (original UnIVAL or ours) to ``model.safetensors`` plus
``config.json``, a format that loads without unpickling anything."""
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

from fairseq.data import Dictionary
from safetensors.torch import load_model, save_model

from unival.checkpoint import (CheckpointError, build_from_checkpoint, is_placeholder, model_dictionary,
                               read_checkpoint, stored_task_options, stored_vocabulary)
from unival.data_utils.files import atomic_write, creation_mode, written_beside
from unival.data_utils.vocab import load_dictionary, save_dictionary
from unival.models.unival import UnivalConfig, UnivalModel

logger = logging.getLogger(__name__)

FORMAT = "unival-safetensors-1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DICTIONARY_FILE = "dict.txt"


def export_safetensors(model: UnivalModel, out_dir: Union[str, Path],
                       task_options: Optional[Dict[str, Any]] = None,
                       vocabulary: Optional[Dictionary] = None) -> Path:
    """Writes the model's weights and config into ``out_dir``, with the task options it was trained with (image
    size, frames...: what ``unival evaluate`` adopts) and its vocabulary (``dict.txt``, fairseq's format, also a
    valid ``--dict-file``) where given; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vocabulary is None and not is_placeholder(model.encoder.dictionary):
        vocabulary = model.encoder.dictionary  # the model was built with its vocabulary: it travels along
    if vocabulary is not None:
        if len(vocabulary) != len(model.encoder.dictionary):
            raise CheckpointError(f"the vocabulary has {len(vocabulary)} symbols, the model "
                                  f"{len(model.encoder.dictionary)}")
        save_dictionary(vocabulary, str(out / DICTIONARY_FILE))
    config = {"format": FORMAT, "vocab_size": len(model.encoder.dictionary),
              "model": dataclasses.asdict(model.cfg)}
    if task_options:
        config["task"] = {key: plain for key, plain in ((key, json_value(value)) for key, value in task_options.items())
                          if plain is not UNSTORED}
    # Each file is written under a temporary name, then renamed: an interrupted export leaves no half-written file.
    save_weights(model, out / WEIGHTS_FILE)
    with atomic_write(out / CONFIG_FILE) as file:
        file.write(json.dumps(config, indent=2, sort_keys=True))
    return out


def save_weights(model: UnivalModel, path: Path) -> None:
    """``save_model`` into ``path`` atomically, with the permissions of any file the process creates."""
    with written_beside(path, "wb") as (_, temporary):
        save_model(model, temporary)  # replaces the temporary file with one of its own that only its owner can read
        os.chmod(temporary, creation_mode())
    os.replace(temporary, path)


UNSTORED = object()


def json_value(value: Any) -> Any:
    """``value`` as JSON holds it (lists of plain values included), or ``UNSTORED``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        items = [json_value(item) for item in value]
        return UNSTORED if any(item is UNSTORED for item in items) else items
    return UNSTORED


def read_config(folder: Union[str, Path]) -> Dict[str, Any]:
    config_path = Path(folder) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a folder written by `unival convert`")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: unknown format {config.get('format')!r} (expected {FORMAT})")
    return config


def stored_folder_task_options(folder: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The task options a converted model was trained with; None for folders converted without them."""
    return read_config(folder).get("task")


def stored_folder_vocabulary(folder: Union[str, Path]) -> Optional[Dictionary]:
    """The vocabulary a converted model was trained with (its ``dict.txt``); None for folders without one."""
    path = Path(folder) / DICTIONARY_FILE
    return load_dictionary(str(path)) if path.is_file() else None


def load_safetensors(folder: Union[str, Path], dictionary: Optional[Dictionary] = None) -> UnivalModel:
    """Builds the model exported by :func:`export_safetensors` (in eval mode)."""
    folder = Path(folder)
    config = read_config(folder)
    cfg = UnivalConfig(**config["model"])
    dictionary = model_dictionary(dictionary, stored_folder_vocabulary(folder), config["vocab_size"], str(folder),
                                  holder=str(folder / DICTIONARY_FILE))
    model = UnivalModel.from_config(cfg, dictionary)
    missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    return model.eval()


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="checkpoint to convert (.pt of the original UnIVAL or of unival)")
    parser.add_argument("--out", required=True, help="folder to write model.safetensors and config.json into")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights stored in the checkpoint")
    parser.add_argument("--allow-unsafe-checkpoint", action="store_true",
                        help="unpickle arbitrary objects (only for files you trust; can execute code)")


def run(args) -> int:
    try:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise NotADirectoryError(f"--out {args.out} is a file: give a folder to write {WEIGHTS_FILE}, "
                                     f"{CONFIG_FILE} and {DICTIONARY_FILE} into")
        state = read_checkpoint(args.checkpoint, allow_unsafe=args.allow_unsafe_checkpoint)
        model, _ = build_from_checkpoint(state, ema=args.ema, source=args.checkpoint)
        vocabulary = stored_vocabulary(state, args.checkpoint)
        out = export_safetensors(model, args.out, stored_task_options(state), vocabulary)
    except (ValueError, OSError) as error:
        print(f"unival convert: error: {error}", file=sys.stderr)
        return 2
    count = sum(p.numel() for p in model.parameters())
    written = [out / WEIGHTS_FILE, out / CONFIG_FILE] + ([out / DICTIONARY_FILE] if vocabulary is not None else [])
    print(f"wrote {', '.join(map(str, written))} ({count / 1e6:.1f}M parameters)")
    return 0
