"""Video backbones: the original's 3D ResNeXt (Kinetics weights of Hara et al.), torchvision's video ResNets and a
light frame-wise 2-D ResNet, as (B, 3, T, H, W) clip -> (B, C, T', H', W') feature extractors, with the tokens and
position ids they give.
"""
import logging
import re
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.models import video as tv_video

from unival.models.image_encoders import ResNetBackbone
from unival.models.position import grid_position_ids
from unival.models.weights import read_state_dict

logger = logging.getLogger(__name__)

RESNEXT_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
RESNEXT_PLANES = (128, 256, 512, 1024)
# Prefixes of a checkpoint that are not part of a backbone: the classifier (and its pooling, when saved).
CLASSIFIER_PREFIXES = ("fc.", "avgpool.")
DATA_PARALLEL_PREFIX = "module."
# Frame-wise 2-D ResNets: "frames_" + a timm ResNet name, optionally "_s" + the number of stages kept.
FRAME_WISE_NAME = re.compile(r"frames_(?P<resnet>.+?)(?:_s(?P<stages>\d+))?")
MAX_FRAMES = 64


class ResNeXtBottleneck(nn.Module):
    """1x1x1 reduce, grouped 3x3x3 (carrying the stride), 1x1x1 expand to ``planes * 2``, plus the shortcut."""

    expansion = 2

    def __init__(self, in_channels: int, planes: int, cardinality: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        width = cardinality * (planes // 32)
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, kernel_size=3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNeXt3D(nn.Module):
    """3D ResNeXt (cardinality 32, shortcut type B) of Hara et al., without its classifier.

    Parameter names are those of ``resnext-101-kinetics.pth`` and of the original's ``embed_videos``.
    """

    def __init__(self, depth: int = 101, cardinality: int = 32):
        super().__init__()
        if depth not in RESNEXT_LAYERS:
            raise ValueError(f"3D ResNeXt depth {depth}: expected one of {sorted(RESNEXT_LAYERS)}")
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (planes, blocks) in enumerate(zip(RESNEXT_PLANES, RESNEXT_LAYERS[depth])):
            stride = 1 if index == 0 else 2
            setattr(self, f"layer{index + 1}", resnext_stage(in_channels, planes, blocks, cardinality, stride))
            in_channels = planes * ResNeXtBottleneck.expansion
        self.num_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, video: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(video))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnext_stage(in_channels: int, planes: int, blocks: int, cardinality: int, stride: int) -> nn.Sequential:
    """One stage of bottlenecks; the first changes width and stride, with a 1x1x1 conv + BN shortcut."""
    out_channels = planes * ResNeXtBottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm3d(out_channels))
    layers = [ResNeXtBottleneck(in_channels, planes, cardinality, stride, downsample)]
    layers += [ResNeXtBottleneck(out_channels, planes, cardinality) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class FrameResNet(ResNetBackbone):
    """A 2-D ResNet run on every frame: (B, 3, T, H, W) clip -> (B, C, T, H / stride, W / stride) features."""

    def forward(self, video: Tensor) -> Tensor:
        batch, steps = video.shape[0], video.shape[2]
        features = super().forward(video.transpose(1, 2).flatten(0, 1))
        return features.unflatten(0, (batch, steps)).transpose(1, 2)


class TimeEmbedding(nn.Module):
    """Adds a learned vector per time step to (B, C, T, H, W) features.

    Video position ids repeat the spatial grid at every time step (as the original's), so without this the
    encoder could not order the frames of a frame-wise backbone, and a shape moving left would look like
    one moving right.
    """

    def __init__(self, num_channels: int, max_steps: int):
        super().__init__()
        # Unit scale, as the features it is added to (ReLU'd BatchNorm outputs, std about 1 at initialisation):
        # with BERT's std 0.02 the frames would look alike until Adam had grown the table.
        self.weight = nn.Parameter(torch.randn(max_steps, num_channels))

    def forward(self, features: Tensor) -> Tensor:
        steps = features.size(2)
        if steps > self.weight.size(0):
            raise ValueError(f"{steps} frames: the frame-wise video encoder's time embedding has "
                             f"{self.weight.size(0)} steps (use fewer --num-frames)")
        return features + self.weight[:steps].t()[None, :, :, None, None]


class FrameWiseNetwork(nn.Sequential):
    """A timm ResNet's first ``num_stages`` stages on every frame, then a time embedding; time is kept."""

    def __init__(self, resnet: str, num_stages: int = 4, max_frames: int = MAX_FRAMES):
        super().__init__()
        self.frames = FrameResNet(resnet, num_stages)
        self.time_embedding = TimeEmbedding(self.frames.num_channels, max_frames)
        self.num_channels = self.frames.num_channels


def frame_wise_network(name: str) -> Callable[[], nn.Module]:
    """Builder of ``frames_<timm resnet>[_s<stages>]`` (e.g. ``frames_resnet18_s3``: stages 1-3, stride 16)."""
    match = FRAME_WISE_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown video encoder {name!r}: expected one of {', '.join(VIDEO_NETWORKS)} or "
                         "frames_<timm resnet>[_s<stages 1-4>] (e.g. frames_resnet18_s3)")
    stages = int(match["stages"] or 4)
    if not 1 <= stages <= 4:
        raise ValueError(f"video encoder {name!r}: a ResNet has stages 1 to 4, not {stages}")
    return partial(FrameWiseNetwork, match["resnet"], stages)


# name -> builder of a network whose children, minus the classifier, run in order on the clip.
#
# Output grids (T', H', W'), measured: the ResNeXt reduces time by 16 (max-pool and stages 2-4 each stride 2 in
# time) and space by 32: 8 frames at 224 px -> (1, 7, 7) = 49 tokens, 16 frames at 384 px -> (1, 12, 12) = 144.
# The original collapses time through these strides alone; its forward has no pooling (the average pool is
# commented out). torchvision's r3d_18 / r2plus1d_18 reduce time by 8 and space by 16: 8 frames at 224 px ->
# (1, 14, 14) = 196 tokens, 16 frames at 384 px -> (2, 24, 24) = 1152. The frame-wise ``frames_*`` networks (built
# by ``frame_wise_network``) keep every frame and reduce space by the ResNet's stride: frames_resnet18_s3 on 4
# frames at 64 px -> (4, 4, 4) = 64 tokens.
VIDEO_NETWORKS: Dict[str, Callable[[], nn.Module]] = {
    "resnext50": partial(ResNeXt3D, depth=50),
    "resnext101": partial(ResNeXt3D, depth=101),
    "r3d_18": partial(tv_video.r3d_18, weights=None),
    "r2plus1d_18": partial(tv_video.r2plus1d_18, weights=None),
}


class VideoBackbone(nn.Module):
    """A video network without its classifier: (B, 3, T, H, W) clip -> (B, C, T', H', W') features.

    The network's modules are registered directly on this module, so its state-dict keys are the network's
    own (``conv1.weight``, ``layer1.0.conv1.weight``... for the ResNeXt, as the original's ``embed_videos``;
    ``frames.conv1.weight``... and ``time_embedding.weight`` for a frame-wise ResNet).
    ``keep_time`` (the original's behaviour) returns the time steps the strides leave: one for the ResNeXt up
    to 16 frames, more for longer clips or the torchvision networks (8 frames per step), every frame for the
    frame-wise networks. Without it the time axis is averaged to one step whatever the clip length.
    """

    float32_noted = False  # needs_float32_gradients has logged its reason in this process

    def __init__(self, name: str = "resnext101", weights_path: Optional[str] = None, keep_time: bool = True):
        super().__init__()
        builder = VIDEO_NETWORKS[name] if name in VIDEO_NETWORKS else frame_wise_network(name)
        try:
            network = builder()
        except ValueError as err:  # a frame-wise name whose ResNet timm does not know
            raise ValueError(f"unknown video encoder {name!r}: {err}") from err
        for child_name, child in network.named_children():
            if child_name + "." not in CLASSIFIER_PREFIXES:
                self.add_module(child_name, child)
        self.name = name
        self.keep_time = keep_time
        self.frame_wise = isinstance(network, FrameWiseNetwork)
        self.num_channels = getattr(network, "num_channels", None) or network.fc.in_features
        if weights_path:
            self.load_weights(weights_path)

    def load_weights(self, path: str) -> None:
        """Loads a state dict (.pth/.pt or .safetensors), also the Kinetics layout ``{"state_dict":
        {"module.conv1.weight": ...}}``; the classifier is ignored, any other mismatch raises. A frame-wise
        network also takes a 2-D timm/torchvision ResNet's weights (ImageNet), keeping its own time embedding."""
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"video encoder weights not found: {file} (--video-encoder-path)")
        state = backbone_state_dict(read_state_dict(file))
        optional = set()
        if self.frame_wise and not any(key.startswith("frames.") for key in state):
            state = frame_resnet_state_dict(state, self.frames.num_stages)
            optional = {"time_embedding.weight"}
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a tensor of the wrong shape
            raise ValueError(f"{file} does not fit video encoder {self.name}: {err}") from err
        missing = [key for key in missing if key not in optional]
        if missing or unexpected:
            raise ValueError(f"{file} does not fit video encoder {self.name}: {len(missing)} missing keys "
                             f"{shown(missing)}, {len(unexpected)} unexpected keys {shown(unexpected)}")
        logger.info("loaded video encoder %s weights from %s (%d tensors)", self.name, file, len(state))

    def forward(self, video: Tensor) -> Tensor:
        if self.needs_float32_gradients(video):
            with torch.autocast("cpu", enabled=False):
                return self.run(video.float())
        # float32 frames into a network cast to float16/bfloat16 (fairseq-generate --fp16) take its type
        return self.run(video.to(next(self.parameters()).dtype))

    def run(self, x: Tensor) -> Tensor:
        for module in self.children():
            x = module(x)
        return x if self.keep_time else x.mean(dim=2, keepdim=True)

    def needs_float32_gradients(self, video: Tensor) -> bool:
        """Whether this forward must leave CPU bfloat16 autocast: oneDNN's bfloat16 weight gradient of a 3-D
        convolution with a temporal kernel is wrong on the CPU when the clip is short in time (a time axis of 2
        under a kernel of 3, of 2-4 under 5 or 7: relative errors of 1 to 1e36, inf and NaN, and heap corruption
        that can abort the process; measured with torch 2.14.1). Forward outputs and input gradients are right, so
        inference keeps bfloat16; the frame-wise networks are 2-D and unaffected."""
        needed = (not self.frame_wise and video.device.type == "cpu" and torch.is_grad_enabled()
                  and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                  and any(p.requires_grad for p in self.parameters()))
        if needed and not VideoBackbone.float32_noted:
            logger.info("bfloat16 autocast on the CPU: the video encoder %s trains in float32 (oneDNN's bfloat16 "
                        "3-D convolution weight gradients are wrong for short clips)", self.name)
            VideoBackbone.float32_noted = True
        return needed


def shown(keys: List[str], limit: int = 10) -> str:
    return str(keys) if len(keys) <= limit else f"{keys[:limit]} and {len(keys) - limit} more"


def backbone_state_dict(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``state`` without DataParallel's ``module.`` prefix and without the classifier."""
    stripped = {key[len(DATA_PARALLEL_PREFIX):] if key.startswith(DATA_PARALLEL_PREFIX) else key: value
                for key, value in state.items()}
    return {key: value for key, value in stripped.items() if not key.startswith(CLASSIFIER_PREFIXES)}


def frame_resnet_state_dict(state: Dict[str, Tensor], num_stages: int) -> Dict[str, Tensor]:
    """A 2-D ResNet's state dict as a frame-wise network's: under ``frames.``, without the stages it cuts."""
    cut = tuple(f"layer{i}." for i in range(num_stages + 1, 5))
    return {f"frames.{key}": value for key, value in state.items() if not (cut and key.startswith(cut))}


def video_tokens(features: Tensor) -> Tensor:
    """(B, C, T', H', W') features -> (B, T' * H' * W', C) tokens, time-major then row-major (as the original)."""
    return features.flatten(2).transpose(1, 2)


def video_position_ids(time_steps: int, height: int, width: int, bucket_size: int, device=None) -> Tensor:
    """(T' * H' * W',) ids in the video position table (``bucket_size ** 2 + 1`` rows, 0 reserved).

    Ids are the image grid's (row * bucket_size + col + 1); every time step repeats them, as in the original,
    so tokens of different time steps share their spatial ids and only a time embedding could tell them apart.
    """
    return grid_position_ids(height, width, bucket_size, device=device).repeat(time_steps)

