"""Loading the media a TSV field names: base64 bytes (OFA's format) or a path relative to a media folder,
with errors that name the row and the reason."""
import base64
import binascii
import io
import os
from typing import Optional

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
MAX_PATH = 4096  # longer fields are base64 images, never file names


class MediaError(ValueError):
    """A media field that cannot be loaded; the message names where it came from and why."""


def located(source: Optional[str], message: str) -> str:
    return f"{source}: {message}" if source else message


def looks_like_path(field: str) -> bool:
    return field.lower().endswith(IMAGE_EXTENSIONS) or "/" in field or os.sep in field


def resolve_media_path(field: str, data_dir: Optional[str] = None) -> str:
    """``field`` as a path: absolute as is, otherwise relative to ``data_dir`` (or the working folder)."""
    if os.path.isabs(field) or not data_dir:
        return field
    return os.path.join(data_dir, field)


def base64_bytes(field: str) -> Optional[bytes]:
    """Bytes of a base64 field (URL-safe as OFA writes it, or standard; padding optional), None if not base64."""
    text = field.translate(URLSAFE_TO_STANDARD)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def file_bytes(path: str, source: Optional[str] = None) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as err:
        raise MediaError(located(source, f"cannot read {path}: {err}")) from err


def media_bytes(field: str, data_dir: Optional[str] = None, source: Optional[str] = None) -> bytes:
    """Bytes that a TSV media field stands for: the file it names, or its base64 decoding.

    A field that names an existing file (relative to ``data_dir`` unless absolute) is read as that file;
    otherwise it must be base64. A field that is neither and looks like a path (an image extension or a
    ``/``) is reported as a missing file, with the path it resolved to.
    """
    field = field.strip()
    if not field:
        raise MediaError(located(source, "empty media field"))
    path = resolve_media_path(field, data_dir)
    if len(field) <= MAX_PATH and os.path.isfile(path):
        return file_bytes(path, source)
    data = base64_bytes(field)
    if data is not None:
        return data
    if looks_like_path(field):
        raise MediaError(located(source, f"file not found: {os.path.abspath(path)} (field {field!r})"))
    raise MediaError(located(source, f"neither valid base64 nor an existing file ({os.path.abspath(path)}): "
                                     f"{shortened(field)}"))


def shortened(field: str, keep: int = 40) -> str:
    return repr(field) if len(field) <= keep else f"{field[:keep]!r}... ({len(field)} characters)"


def load_image(field: str, data_dir: Optional[str] = None, source: Optional[str] = None) -> Image.Image:
    """The RGB image of a TSV field (base64 or path), fully decoded so that a truncated file fails here.

    ``source`` (``"train.tsv:12"``) starts every error message; :class:`MediaError` otherwise.
    """
    data = media_bytes(field, data_dir, source)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(located(source, f"not a readable image ({type(err).__name__}: {err}); "
                                         f"field {shortened(field.strip())}")) from err
