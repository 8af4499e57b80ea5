"""Every entry point reads images through simseg.images.load_image: modes, orientation and broken files."""

import io

import numpy as np
import pytest
from PIL import Image

from simseg.errors import InputError
from simseg.images import load_image


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_modes_become_rgb(tmp_path):
    grey = _save(Image.new("L", (5, 4), 128), tmp_path / "g.png")
    rgba = _save(Image.new("RGBA", (5, 4), (255, 0, 0, 0)), tmp_path / "a.png")  # fully transparent red
    cmyk = _save(Image.new("CMYK", (5, 4), (0, 255, 255, 0)), tmp_path / "c.jpg")  # red in CMYK
    deep = Image.fromarray(np.full((4, 5), 65535, dtype=np.uint16))
    deep16 = _save(deep, tmp_path / "d.png")
    for path in (grey, rgba, cmyk, deep16):
        img = load_image(path)
        assert img.mode == "RGB" and img.size == (5, 4)
    assert np.asarray(load_image(grey))[0, 0].tolist() == [128, 128, 128]
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]  # transparent -> white, not red
    r, g, b = np.asarray(load_image(cmyk))[0, 0].tolist()
    assert r > 200 and g < 60 and b < 60
    assert np.asarray(load_image(deep16))[0, 0].tolist() == [255, 255, 255]  # 16-bit range scaled, not clipped


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (6, 3), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes(), quality=100)
    out = load_image(path)
    assert out.size == (3, 6)
    assert np.asarray(out)[0, 2].mean() > 200  # the white corner moved to the top right


def test_broken_inputs_name_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(buf.getvalue()[:60])
    big = _save(Image.new("L", (200, 200)), tmp_path / "big.png")
    cases = [(empty, "empty"), (text, "not a readable image"), (trunc, "corrupt or truncated"),
             (tmp_path / "missing.jpg", "not found"), (tmp_path, "directory")]
    for path, words in cases:
        with pytest.raises(InputError, match=words) as e:
            load_image(path)
        assert str(path) in str(e.value)
    with pytest.raises(InputError, match="exceeds the limit"):
        load_image(big, max_pixels=1000)
    with pytest.raises(InputError, match="upload.png"):
        load_image(b"garbage", name="upload.png")
    assert load_image(buf.getvalue()).size == (64, 64)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG of that size without pixel data (an empty IDAT chunk): its header reads, it never decodes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixel_limit_at_its_boundary():
    """Exactly max_pixels is read, one pixel more is refused from the header; the default limit is 100 megapixels."""
    from simseg.images import DEFAULT_MAX_PIXELS

    exact = io.BytesIO()
    Image.new("RGB", (40, 25), (9, 8, 7)).save(exact, format="PNG")
    assert load_image(exact.getvalue(), max_pixels=1000).size == (40, 25)
    over = io.BytesIO()
    Image.new("RGB", (1001, 1)).save(over, format="PNG")
    with pytest.raises(InputError, match=r"1001x1 = 1001 pixels exceeds the limit of 1000"):
        load_image(over.getvalue(), max_pixels=1000)
    assert DEFAULT_MAX_PIXELS == 10000 * 10000
    with pytest.raises(InputError, match=r"10001x10000 = 100010000 pixels exceeds the limit of 100000000"):
        load_image(_png_header_only(10001, 10000), name="huge.png")
