"""Tests of loading images from TSV fields: base64 (URL-safe or standard) or paths, and the errors."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from unival.data_utils.media import MediaError, load_image


def pattern_image(mode: str = "RGB") -> Image.Image:
    pixels = np.zeros((6, 8, 3), dtype=np.uint8)
    pixels[:, :4] = (200, 10, 30)
    pixels[:, 4:] = (5, 90, 250)
    pixels[2, 3] = (7, 7, 7)
    return Image.fromarray(pixels).convert(mode)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_is_pattern(image: Image.Image):
    assert image.mode == "RGB" and image.size == (8, 6)
    assert np.array_equal(np.asarray(image), np.asarray(pattern_image()))


def test_urlsafe_base64_field():
    assert_is_pattern(load_image(base64.urlsafe_b64encode(png_bytes(pattern_image())).decode()))


def test_standard_base64_with_slash_and_no_padding():
    data = png_bytes(pattern_image()) + b"\xff\xfe"  # trailing bytes after IEND are ignored by PIL
    while True:  # make the standard encoding contain '/' and need padding
        field = base64.b64encode(data).decode()
        if "/" in field and field.endswith("="):
            break
        data += b"\xfb"
    assert_is_pattern(load_image(field.rstrip("=")))


def test_relative_absolute_and_bare_paths(tmp_path):
    (tmp_path / "images").mkdir()
    pattern_image().save(tmp_path / "images" / "a.png")
    pattern_image().save(tmp_path / "b.jpg", quality=100)
    (tmp_path / "img0001").write_bytes(png_bytes(pattern_image()))
    assert_is_pattern(load_image("images/a.png", data_dir=str(tmp_path)))
    assert_is_pattern(load_image(str(tmp_path / "images" / "a.png"), data_dir="/elsewhere"))
    assert_is_pattern(load_image("img0001", data_dir=str(tmp_path)))
    assert load_image("b.jpg", data_dir=str(tmp_path)).size == (8, 6)


def test_modes_converted_to_rgb():
    for mode in ("L", "RGBA", "P"):
        image = load_image(base64.b64encode(png_bytes(pattern_image(mode))).decode())
        assert image.mode == "RGB" and image.size == (8, 6)


def test_missing_file_names_source_and_resolved_path(tmp_path):
    with pytest.raises(MediaError) as info:
        load_image("images/missing.png", data_dir=str(tmp_path), source="train.tsv:7")
    assert str(info.value).startswith("train.tsv:7: file not found: ")
    assert str(tmp_path / "images" / "missing.png") in str(info.value)
    assert isinstance(info.value, ValueError)


def test_invalid_base64_names_source():
    with pytest.raises(MediaError, match=r"^train.tsv:3: neither valid base64 nor an existing file"):
        load_image("not base64 at all!", source="train.tsv:3")


def test_base64_of_non_image_names_source():
    field = base64.b64encode(b"just some text, not an image").decode()
    with pytest.raises(MediaError, match=r"^valid.tsv:9: not a readable image \(UnidentifiedImageError"):
        load_image(field, source="valid.tsv:9")


def test_truncated_png_fails_when_loading(tmp_path):
    data = png_bytes(Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)))
    truncated = data[: len(data) // 2]
    with pytest.raises(MediaError, match=r"^train.tsv:5: not a readable image"):
        load_image(base64.b64encode(truncated).decode(), source="train.tsv:5")
    (tmp_path / "t.png").write_bytes(truncated)
    with pytest.raises(MediaError, match=r"^train.tsv:6: not a readable image"):
        load_image("t.png", data_dir=str(tmp_path), source="train.tsv:6")


def test_empty_field():
    with pytest.raises(MediaError, match=r"^train.tsv:2: empty media field$"):
        load_image("  ", source="train.tsv:2")
