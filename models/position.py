"""Relative-position buckets and grid position ids of OFA-style "disentangled" position biases.

Text uses log-bucketed 1-D distances, image patches 2-D offsets on a grid of ``bucket_size`` x
``bucket_size`` cells; both tables are indexed by these buckets to give one bias per attention head.
"""
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def token_relative_buckets(bucket_size: int, max_position: int) -> torch.LongTensor:
    """(max_position, max_position) bucket ids in [0, 2 * bucket_size - 1) for 1-D distances i - j.

    Distances shorter than half the bucket size keep their own bucket; longer ones share
    logarithmically wider buckets up to ``max_position``.
    """
    positions = torch.arange(max_position, dtype=torch.long)
    relative = positions[:, None] - positions[None, :]
    sign = torch.sign(relative)
    mid = bucket_size // 2
    near = (relative < mid) & (relative > -mid)
    distance = torch.where(near, torch.full_like(relative, mid - 1), relative.abs())
    log_distance = torch.ceil(torch.log(distance / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    log_distance = log_distance.int()
    bucket = torch.where(distance.le(mid), relative, log_distance * sign).long()
    return bucket + bucket_size - 1


def num_image_relative_buckets(bucket_size: int) -> int:
    """Number of 2-D offsets on the grid plus three for the row/column of the special position 0."""
    return (2 * bucket_size - 1) ** 2 + 3


def image_relative_buckets(bucket_size: int) -> torch.LongTensor:
    """(n + 1, n + 1) bucket ids for n = bucket_size ** 2 grid cells; index 0 is a special position."""
    num_buckets = num_image_relative_buckets(bucket_size)
    rows, cols = torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    offsets = offsets + (bucket_size - 1)
    flat = offsets[:, :, 0] * (2 * bucket_size - 1) + offsets[:, :, 1]
    size = bucket_size * bucket_size + 1
    buckets = torch.zeros(size, size, dtype=torch.long)
    buckets[1:, 1:] = flat
    buckets[0, :] = num_buckets - 3
    buckets[:, 0] = num_buckets - 2
    buckets[0, 0] = num_buckets - 1
    return buckets


def grid_position_ids(height: int, width: int, bucket_size: int, device=None) -> torch.LongTensor:
    """Row-major ids (1-based, 0 is reserved) of an height x width patch grid inside the bucket grid."""
    if height > bucket_size or width > bucket_size:
        raise ValueError(
            f"a {height}x{width} patch grid (the input resolution over the encoder's stride) does not fit the "
            f"model's {bucket_size}x{bucket_size} position grid (--image-bucket-size {bucket_size}, fixed once a "
            "model is trained): lower the input resolution (--patch-image-size, or --patch-frame-size for video, "
            "as in the model's training), or train a model with a larger --image-bucket-size"
        )
    rows = torch.arange(height, device=device)[:, None] * bucket_size
    cols = torch.arange(width, device=device)[None, :]
    return (rows + cols + 1).flatten()


def layered_relative_bias(tables: Sequence[nn.Embedding], buckets: torch.LongTensor) -> torch.Tensor:
    """(layers, ..., heads, T, S) biases of every layer's (num_buckets, heads) table at (..., T, S) bucket ids.

    One gather through the layers' tables side by side, instead of one bucket lookup per layer: the values
    are the same, and gradients still reach each layer's own table.
    """
    weight = torch.cat([table.weight for table in tables], dim=1)
    bias = F.embedding(buckets, weight).unflatten(-1, (len(tables), -1))
    return bias.movedim(-2, 0).movedim(-1, -3)
