"""Reading pretrained backbone weights from a local file, shared by the image, video and audio encoders."""
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor


def read_state_dict(file: Path) -> Dict[str, Tensor]:
    """The tensors of a weights file: safetensors, or a torch file (weights only) holding a state dict
    directly or under "model" (PANN) or "state_dict" (Kinetics 3D-ResNets)."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(file))
    state = torch.load(file, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state
