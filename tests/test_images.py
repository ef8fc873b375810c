import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fashionsearchnet.images import ImageDecodeError, decode_image, image_format, load_image
from conftest import jpeg_bytes


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(w=100_000, h=100_000) -> bytes:
    """A valid-looking PNG that claims w×h pixels: kilobytes on disk, gigabytes decoded."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    idat = zlib.compress(row * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty.jpg: empty file \(0 bytes\)"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes((200, 200), (10, 200, 30), quality=95)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut.jpg: corrupt or truncated JPEG"):
        load_image(p)


def test_text_renamed_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, I am not a picture")
    with pytest.raises(ImageDecodeError, match=r"notes.jpg: not a JPEG, PNG or WebP image"):
        load_image(p)


def test_decompression_bomb_png(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(bomb_png())
    assert p.stat().st_size < 100_000
    with pytest.raises(ImageDecodeError, match=r"bomb.png: .*(decompression-bomb|exceeds the limit)"):
        load_image(p)


def test_pixel_limit_is_configurable():
    data = jpeg_bytes((100, 100))
    assert load_image(data).size == (100, 100)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 5,000"):
        load_image(data, max_pixels=5000)


def test_cmyk_jpeg_becomes_rgb():
    im = load_image(jpeg_bytes((16, 16), (0, 255, 255, 0), mode="CMYK"))
    assert im.mode == "RGB"
    r, g, b = im.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60  # C=0 M=Y=100% is red


def test_grayscale_and_16bit_png():
    im = load_image(jpeg_bytes((8, 8), 128, mode="L", fmt="PNG"))
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (128, 128, 128)
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(buf, "PNG")
    im16 = load_image(buf.getvalue())
    assert im16.mode == "RGB" and im16.getpixel((0, 0))[0] == 255


def test_palette_with_transparency_on_white():
    im = Image.new("P", (8, 8), 0)
    im.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    im.putpixel((0, 0), 1)
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0)
    out = load_image(buf.getvalue())
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)  # transparent red -> white background
    assert out.getpixel((0, 0)) == (0, 0, 255)


def test_exif_orientation_applied():
    im = load_image(exif_rotated_jpeg())
    assert im.size == (20, 40)  # rotated to portrait
    top = im.getpixel((10, 5))
    assert top[2] > 150 and top[0] < 100  # the blue half is now on top


def test_content_not_extension(tmp_path):
    p = tmp_path / "really_webp.png"
    p.write_bytes(jpeg_bytes((10, 10), (0, 255, 0), fmt="WEBP"))
    assert load_image(p).size == (10, 10)
    assert image_format(p.read_bytes()) == "image/webp"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        load_image(tmp_path / "none.jpg")
    with pytest.raises(ImageDecodeError, match="is a directory"):
        load_image(tmp_path)


def test_rgba_composited_on_white():
    im = decode_image(jpeg_bytes((4, 4), (255, 0, 0, 0), mode="RGBA", fmt="PNG"))
    assert im.getpixel((0, 0)) == (255, 255, 255)
