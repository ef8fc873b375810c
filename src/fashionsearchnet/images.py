"""Safe image decoding shared by every component (importers, training, indexing, the HTTP API).

- JPEG, PNG and WebP are recognised by their content; the file name's extension is ignored.
- Pillow's decompression-bomb guard stays on, and an image over ``max_pixels`` is refused before
  its pixels are decoded.
- EXIF orientation is applied; every mode (CMYK, grayscale, palette, 16-bit, alpha) becomes RGB,
  transparent pixels composited on white.
- Empty, truncated or corrupt data raise ``ImageDecodeError`` naming the file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps

DEFAULT_MAX_PIXELS = 64_000_000  # well under Pillow's 89 Mpx bomb threshold, over any real photo
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class ImageDecodeError(ValueError):
    """The data is not an image we accept, or it cannot be decoded."""


def sniff_format(head: bytes) -> str | None:
    """Return 'JPEG', 'PNG' or 'WEBP' from the first bytes of a file, else None."""
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def load_image(source: str | os.PathLike | bytes, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (a path or the bytes of a file) into an RGB image; see the module docstring."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or "<upload>"
    else:
        label = name or str(source)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageDecodeError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageDecodeError(f"{label}: is a directory, not an image") from None
        except OSError as e:
            raise ImageDecodeError(f"{label}: cannot read ({e.strerror})") from None
    return decode_image(data, label, max_pixels)


def decode_image(data: bytes, label: str = "<image>", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    if not data:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageDecodeError(f"{label}: not a JPEG, PNG or WebP image (content starts with {data[:8]!r})")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # somebody flipped the global; we never accept truncation
        raise ImageDecodeError(f"{label}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"{label}: image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"{label}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (decompression-bomb guard)"
                )
            im.load()
            im = ImageOps.exif_transpose(im)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{label}: refused by the decompression-bomb guard ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"{label}: corrupt or truncated {fmt} data ({e})") from None
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size else 1.0
        a = (a / (hi if hi > 0 else 1.0) * 255.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def image_format(data: bytes) -> str | None:
    """MIME type of accepted image bytes, else None."""
    fmt = sniff_format(data[:16])
    return FORMATS.get(fmt) if fmt else None
