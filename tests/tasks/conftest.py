"""Helpers shared by the task tests: a small image demo corpus, images of a chosen size, a tiny model."""
import base64
import io

import pytest
from PIL import Image
from task_files import build_tiny_model

from unival.data_utils.demo_corpus import write_demo_corpus


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


@pytest.fixture(scope="session")
def tiny_model():
    """(dictionary, **model options) -> a tiny unival model in eval mode, for 32 px images."""
    return build_tiny_model
