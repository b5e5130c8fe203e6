"""Tests of the image transforms and of the box <-> location-bin conversion."""
import numpy as np
import pytest
import torch
from PIL import Image

from unival.data_utils.transforms import (bins_to_box, box_to_bins, image_transform, imagenet_mean_std, parse_box,
                                          resize_box)


def red_image(width: int = 50, height: int = 20) -> Image.Image:
    return Image.new("RGB", (width, height), (255, 0, 0))


def test_eval_transform_resizes_and_normalises():
    out = image_transform(32, train=False)(red_image())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.ones(32, 32)) and torch.allclose(out[1:], -torch.ones(2, 32, 32))


def test_imagenet_statistics():
    mean, std = imagenet_mean_std()
    out = image_transform(16, train=False, mean=mean, std=std)(red_image())
    assert torch.allclose(out[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_training_without_augment_equals_evaluation():
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (30, 40, 3), dtype=np.uint8))
    assert torch.equal(image_transform(24, train=True)(image), image_transform(24, train=False)(image))


def test_augment_keeps_shape_and_range():
    image = Image.fromarray(np.random.RandomState(1).randint(0, 255, (30, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    out = image_transform(24, train=True, augment=True)(image)
    assert out.shape == (3, 24, 24)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_grayscale_becomes_three_channels():
    assert image_transform(8, train=False)(Image.new("L", (5, 5), 255)).shape == (3, 8, 8)


def test_box_to_bins_exact():
    assert box_to_bins((10.2, 20, 300.7, 511), 512, 1000) == [20, 39, 587, 997]
    assert box_to_bins((0, 0, 512, 512), 512, 1000) == [0, 0, 999, 999]
    assert box_to_bins((12, 30, 600, 470), (640, 480), 1000) == [19, 62, 937, 978]


def test_box_bins_round_trip_within_one_bin():
    rng = np.random.RandomState(0)
    size, num_bins = 480, 1000
    for _ in range(50):
        x0, x1 = sorted(rng.uniform(0, size, 2))
        y0, y1 = sorted(rng.uniform(0, size, 2))
        box = bins_to_box(box_to_bins((x0, y0, x1, y1), size, num_bins), size, num_bins)
        assert np.abs(np.array(box) - (x0, y0, x1, y1)).max() <= size / (num_bins - 1) / 2 + 1e-9
    assert bins_to_box([0, 999, 999, 0], (640, 480), 1000) == (0.0, 480.0, 640.0, 0.0)


def test_boxes_outside_or_inverted_raise():
    with pytest.raises(ValueError, match=r"box \[-5, 0, 10, 10\] lies outside the 100x100 image"):
        box_to_bins([-5, 0, 10, 10], 100, 1000)
    with pytest.raises(ValueError, match=r"box \[0, 0, 10, 130\] lies outside the 100x120 image"):
        box_to_bins([0, 0, 10, 130], (100, 120), 1000)
    with pytest.raises(ValueError, match=r"box \[20, 0, 10, 10\]: expected x0 <= x1"):
        box_to_bins([20, 0, 10, 10], 100, 1000)
    with pytest.raises(ValueError, match="expected 4 coordinates"):
        box_to_bins([1, 2, 3], 100, 1000)


def test_box_rounding_error_at_the_edge_is_clipped():
    assert box_to_bins((-0.4, 0, 100.5, 100), 100, 1000) == [0, 0, 999, 999]


def test_resize_box():
    assert resize_box((10, 20, 30, 40), (100, 200), (50, 50)) == (5.0, 5.0, 15.0, 10.0)
    assert resize_box((10, 20, 30, 40), (100, 200), 400) == (40.0, 40.0, 120.0, 80.0)
    with pytest.raises(ValueError, match="outside"):
        resize_box((10, 20, 300, 40), (100, 200), 400)


def test_bins_to_box_rejects_bad_bins():
    with pytest.raises(ValueError, match="bin 1000 outside 0..999"):
        bins_to_box([0, 0, 1000, 5], 100, 1000)


def test_parse_box():
    assert parse_box(" 1,2,3.5,4\n") == (1.0, 2.0, 3.5, 4.0)
    with pytest.raises(ValueError, match="box '1,2,3': expected four"):
        parse_box("1,2,3")
    with pytest.raises(ValueError, match="box '1,2,x,4'"):
        parse_box("1,2,x,4")
