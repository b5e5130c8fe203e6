"""Image transforms (resize to the square patch size, normalise) and the box <-> location-bin conversion of
grounding, with validation of boxes where they enter."""
from typing import Callable, Sequence, Tuple, Union

from PIL import Image
from torchvision import transforms

HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
Size = Union[int, Tuple[float, float]]  # a square side, or (width, height)
# Annotation tools round box edges: a box up to this many pixels outside the image is clipped, not refused.
BOX_TOLERANCE = 1.0


def imagenet_mean_std() -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) of ImageNet, for ``--imagenet-default-mean-and-std``; the default is 0.5/0.5."""
    return IMAGENET_MEAN_STD


def image_transform(patch_image_size: int, train: bool, mean: Sequence[float] = HALF_MEAN_STD[0],
                    std: Sequence[float] = HALF_MEAN_STD[1], augment: bool = False) -> Callable:
    """PIL image -> FloatTensor (3, S, S): resized to S x S (bicubic, aspect not kept, as OFA), normalised.

    ``augment`` (training only) adds a random crop of 90-100% of the area and a light colour jitter; OFA's
    caption finetuning uses none. It moves content, so grounding (boxes) must not use it.
    """
    size = (patch_image_size, patch_image_size)
    if train and augment:
        geometry = [transforms.RandomResizedCrop(size, scale=(0.9, 1.0),
                                                 interpolation=transforms.InterpolationMode.BICUBIC),
                    transforms.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1)]
    else:
        geometry = [transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC)]
    return transforms.Compose([rgb, *geometry, transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])


def rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def width_height(size: Size) -> Tuple[float, float]:
    return (size, size) if isinstance(size, (int, float)) else (size[0], size[1])


def checked_box(box: Sequence[float], image_size: Size) -> Tuple[float, float, float, float]:
    """``box`` (x0, y0, x1, y1) as floats, clipped to the image; ValueError for a box that is not one."""
    if len(box) != 4:
        raise ValueError(f"box {list(box)}: expected 4 coordinates x0,y0,x1,y1")
    x0, y0, x1, y1 = (float(c) for c in box)
    width, height = width_height(image_size)
    if not (x0 <= x1 and y0 <= y1):
        raise ValueError(f"box {list(box)}: expected x0 <= x1 and y0 <= y1")
    if x0 < -BOX_TOLERANCE or y0 < -BOX_TOLERANCE or x1 > width + BOX_TOLERANCE or y1 > height + BOX_TOLERANCE:
        raise ValueError(f"box {list(box)} lies outside the {width:g}x{height:g} image")
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))


def parse_box(text: str) -> Tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (the refcoco TSV column) -> four floats; ValueError naming the text otherwise."""
    parts = text.strip().split(",")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"box {text!r}: expected four comma-separated numbers x0,y0,x1,y1")
    return values


def resize_box(box: Sequence[float], orig_size: Size, new_size: Size) -> Tuple[float, float, float, float]:
    """A box of an image of ``orig_size`` in the coordinates of that image resized to ``new_size``
    (sizes are (width, height), or one side for squares)."""
    x0, y0, x1, y1 = checked_box(box, orig_size)
    (width, height), (new_width, new_height) = width_height(orig_size), width_height(new_size)
    sx, sy = new_width / width, new_height / height
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def box_to_bins(box: Sequence[float], image_size: Size, num_bins: int) -> list:
    """Location bins of a box in an image of ``image_size``: k = round(c / S * (num_bins - 1)) per coordinate."""
    x0, y0, x1, y1 = checked_box(box, image_size)
    width, height = width_height(image_size)
    return [round(c / side * (num_bins - 1)) for c, side in ((x0, width), (y0, height), (x1, width), (y1, height))]


def bins_to_box(bins: Sequence[int], image_size: Size, num_bins: int) -> Tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) that four location bins stand for in an image of ``image_size``."""
    if len(bins) != 4:
        raise ValueError(f"bins {list(bins)}: expected 4")
    for k in bins:
        if not 0 <= int(k) < num_bins:
            raise ValueError(f"bin {k} outside 0..{num_bins - 1}")
    width, height = width_height(image_size)
    scale = (width, height, width, height)
    return tuple(int(k) / (num_bins - 1) * side for k, side in zip(bins, scale))

