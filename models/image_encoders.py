"""Image backbones: any timm ResNet, cut after its first ``num_stages`` stages, as a patch-feature extractor.

The original UnIVAL's default image encoder (OFA's ResNet, stages 1-3) is the same network as timm's ResNet
with three stages, and its parameter names match timm's, so released weights load into it directly.
"""
import logging
from pathlib import Path
from typing import Optional

import timm
import torch.nn as nn
from torch import Tensor

from unival.models.weights import read_state_dict

logger = logging.getLogger(__name__)


class ResNetBackbone(nn.Module):
    """ResNet stem and stages 1..num_stages: (B, 3, H, W) image -> (B, C, H / stride, W / stride) features."""

    def __init__(self, name: str = "resnet101", num_stages: int = 4, drop_path_rate: float = 0.0,
                 weights_path: Optional[str] = None):
        super().__init__()
        if not 1 <= num_stages <= 4:
            raise ValueError(f"a ResNet has stages 1 to 4; got --image-encoder-stages {num_stages}")
        try:
            # Residual branches start live (the original's ResNet does not zero its last BatchNorm as timm would).
            full = timm.create_model(name, pretrained=False, drop_path_rate=drop_path_rate, zero_init_last=False)
        except RuntimeError as err:
            raise ValueError(f"unknown image encoder {name!r}: expected a timm ResNet such as resnet50") from err
        if not all(hasattr(full, f"layer{i}") for i in range(1, 5)):
            raise ValueError(f"image encoder {name!r} is not a timm ResNet (it has no layer1..layer4)")
        self.conv1, self.bn1, self.act1, self.maxpool = full.conv1, full.bn1, full.act1, full.maxpool
        self.num_stages = num_stages
        for i in range(1, num_stages + 1):
            setattr(self, f"layer{i}", getattr(full, f"layer{i}"))
        stage_info = [info for info in full.feature_info if info["module"] == f"layer{num_stages}"][0]
        self.num_channels = stage_info["num_chs"]
        self.stride = stage_info["reduction"]
        if weights_path:
            self.load_weights(weights_path)

    def load_weights(self, path: str) -> None:
        """Loads a timm/torchvision ResNet state dict (.pth/.pt or .safetensors); stages cut away are ignored."""
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"image encoder weights not found: {file} (--image-encoder-path)")
        state = read_state_dict(file)
        kept_prefixes = ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, self.num_stages + 1))
        kept = {k: v for k, v in state.items() if k.startswith(kept_prefixes)}
        missing, unexpected = self.load_state_dict(kept, strict=False)
        if missing or unexpected:
            raise ValueError(f"{file} does not fit a {self.num_stages}-stage ResNet: "
                             f"missing {missing[:5]}... unexpected {unexpected[:5]}...")
        logger.info("loaded image encoder weights from %s (%d tensors, %d ignored)", file, len(kept),
                    len(state) - len(kept))

    def forward(self, images: Tensor) -> Tensor:
        # float32 pixels into a network cast to float16/bfloat16 (fairseq-generate --fp16) take its type
        x = self.maxpool(self.act1(self.bn1(self.conv1(images.to(self.conv1.weight.dtype)))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x
