"""Helpers shared by the task tests: a small image demo corpus, images of a chosen size, a tiny model."""
import base64
import io

import pytest
import torch
from PIL import Image

from unival.data_utils.demo_corpus import write_demo_corpus
from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults


@pytest.fixture(scope="session")
def image_corpus(tmp_path_factory):
    """A demo corpus of shape images only (every image task's TSVs), 6 / 3 / 3 images."""
    folder = tmp_path_factory.mktemp("image_corpus") / "data"
    write_demo_corpus(folder, seed=2, num_images=(6, 3, 3), modalities=("image",))
    return folder


def png_base64(width: int, height: int, colour=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def image_field():
    """(width, height[, colour]) -> a TSV image field: a one-colour PNG in base64."""
    return png_base64


def build_tiny_model(dictionary, **overrides) -> UnivalModel:
    """A seeded unival model of width 32 (ResNet stage 1 only: 32 px images give 8x8 patches)."""
    values = architecture_defaults("unival_tiny")
    values.update(encoder_embed_dim=32, decoder_embed_dim=32, encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64,
                  encoder_attention_heads=2, decoder_attention_heads=2, dropout=0.0, encoder_drop_path_rate=0.0,
                  decoder_drop_path_rate=0.0, image_bucket_size=8, image_encoder_stages=1)
    values.update(overrides)
    torch.manual_seed(0)
    return UnivalModel.from_config(UnivalConfig(**values), dictionary).eval()


@pytest.fixture(scope="session")
def tiny_model():
    """(dictionary, **model options) -> a tiny unival model in eval mode, for 32 px images."""
    return build_tiny_model
