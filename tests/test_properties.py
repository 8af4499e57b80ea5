"""Whatever comes in, a clear error or a valid answer: random and damaged bytes as images, random strings as class
lists, through :func:`simseg.images.load_image`, :func:`simseg.segment.segment` and the server (hypothesis).

Random bytes are almost never an image, so most examples start from a real image of some format and mode and damage
it (bytes changed, the file cut short): that reaches every decoder's error paths. Example counts are bounded so the
module runs in seconds.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from simseg.classnames import BACKGROUND, parse_class_list
from simseg.errors import ImageTooLargeError, InputError, SimSegError
from simseg.images import load_image


def _encode(fmt: str, mode: str, size: tuple[int, int] = (20, 14), **kw) -> bytes:
    rng = np.random.default_rng(len(fmt) + len(mode))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


#: Real images of every kind a user may upload: formats, modes, an animation.
SEEDS = [_encode("PNG", m) for m in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16")] + [
    _encode("JPEG", "RGB"), _encode("JPEG", "L"), _encode("JPEG", "CMYK"), _encode("GIF", "P"), _encode("BMP", "RGB"),
    _encode("TIFF", "RGB"), _encode("TIFF", "F"), _encode("WEBP", "RGB"), _encode("PNG", "RGB", size=(1, 40)),
    _encode("GIF", "P", save_all=True, append_images=[Image.new("P", (20, 14), 3)]),
]


@st.composite
def image_bytes(draw) -> bytes:
    """Random bytes, or a real image with some bytes changed and/or cut short (the header is hit half the time)."""
    how = draw(st.sampled_from(["random", "edited", "cut", "edited and cut", "intact"]))
    if how == "random":
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if "edited" in how:
        header = draw(st.booleans())
        limit = min(len(data), 64) if header else len(data)
        for pos, value in draw(st.lists(st.tuples(st.integers(0, limit - 1), st.integers(0, 255)), min_size=1,
                                        max_size=6)):
            data[pos] = value
    if "cut" in how:
        data = data[:draw(st.integers(0, len(data) - 1))]
    return bytes(data)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` but that holds one row: what a decompression bomb looks like to
    every check made from the header, before any pixel is decoded."""
    import struct
    import zlib

    raw = zlib.compress(b"\0" * (width + 1), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def _assert_clear(error: SimSegError, name: str) -> None:
    text = str(error)
    assert text.startswith(f"{name}: ") and "\n" not in text and len(text) < 400, text


@settings(max_examples=300, deadline=None)
@given(image_bytes())
def test_load_image_gives_an_rgb_image_or_one_line_naming_the_source(data):
    try:
        img = load_image(data, name="upload.bin")
    except InputError as e:
        _assert_clear(e, "upload.bin")
        return
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
    assert np.asarray(img).shape == (img.height, img.width, 3)


# ------------------------------------------------------------------------------------------------ class lists
names_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
#: Class lists as users type them: words, commas, spaces, "background", case variants, any unicode.
class_text = st.one_of(
    names_text,
    st.lists(st.sampled_from(["cat", "Cat", "dog", "background", "", " ", "grass", "sky ", "\u00e9t\u00e9", "狗",
                              "[UNK]", "{}", "\u200b", "a\tb"]), max_size=6).map(",".join),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(class_text, st.lists(names_text, max_size=5)))
@example(["", *[f"class {i} " + "x" * 100 for i in range(4)]])  # an empty name in a list too long to quote
def test_a_class_list_is_valid_or_refused_in_one_line(classes):
    try:
        names = parse_class_list(classes)
    except InputError as e:
        _assert_clear(e, "class list")
        return
    assert names[0] == BACKGROUND and len(names) >= 2
    assert all(n and n == n.strip() for n in names)
    assert len({n.lower() for n in names}) == len(names)
    assert BACKGROUND not in [n.lower() for n in names[1:]]


# ------------------------------------------------------------------------------------------------ segment()
#: Small protocol settings: the same code paths, a fraction of the time.
FAST = {"simseg": {"input_size": 32}, "dense": {"short_side": 32, "crop_size": 32, "stride": 16}}


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text-cache"))


def _check_result(result, width: int, height: int) -> None:
    labels = np.asarray(result.labels)
    assert labels.shape == (height, width)
    assert labels.min() >= 0 and labels.max() < len(result.class_names)
    assert result.class_names[0] == BACKGROUND
    assert len(result.scores) == len(result.class_names) and np.all(np.isfinite(result.scores))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=image_bytes(), protocol=st.sampled_from(["simseg", "dense"]), crf=st.booleans())
def test_segment_random_bytes_gives_a_label_map_of_the_image_or_a_clear_error(model, cache_dir, data, protocol, crf):
    from simseg.segment import segment

    try:
        image = load_image(data, name="upload.bin")
    except InputError:
        image = None
    try:
        result = segment(model, data, "cat, dog", protocol=protocol, crf=crf and protocol == "simseg",
                         templates="single", cache_dir=cache_dir, **FAST[protocol])
    except InputError as e:
        assert image is None, f"a readable image was refused: {e}"
        _assert_clear(e, "<image bytes>")
        return
    assert image is not None
    _check_result(result, image.width, image.height)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(classes=class_text, protocol=st.sampled_from(["simseg", "dense"]))
def test_segment_with_random_class_names_gives_a_valid_label_map_or_a_clear_error(model, cache_dir, classes,
                                                                                    protocol):
    from simseg.segment import segment

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = segment(model, image, classes, protocol=protocol, crf=protocol == "simseg", templates="single",
                             cache_dir=cache_dir, **FAST[protocol])
        except InputError as e:
            _assert_clear(e, "class list")
            return
    _check_result(result, 28, 20)
    assert result.class_names == parse_class_list(classes)
    texts = [str(w.message) for w in caught]
    for text in texts:  # one line each, naming the class
        assert text.startswith("class ") and "\n" not in text, text
    tok = model.tokenizer
    for name in result.class_names[1:]:  # a name the vocabulary cannot spell, or keeps nothing of, is warned about
        pieces = tok.wordpieces(name)
        if not pieces or "[UNK]" in pieces:
            assert any(t.startswith(f"class {name!r}:") for t in texts), (name, pieces, texts)


# ------------------------------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def client(model, cache_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    from fastapi.testclient import TestClient

    from simseg.app.serve import ServeLimits, create_app

    app = create_app(model, ServeLimits(max_pixels=40_000), cache_dir=cache_dir, protocol_params=FAST,
                     default_protocol="dense")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _decode_png(b64: str) -> np.ndarray:
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=image_bytes(), classes=class_text, protocol=st.sampled_from(["simseg", "dense"]))
def test_server_answers_random_uploads_with_a_label_map_or_a_json_error(client, data, classes, protocol):
    r = client.post("/segment", data={"classes": classes, "protocol": protocol, "crf": "false",
                                      "templates": "single"},
                    files={"image": ("upload.bin", data, "application/octet-stream")})
    assert r.status_code in (200, 400, 413), (r.status_code, r.text)
    body = r.json()
    if r.status_code != 200:
        assert body["error"] and "\n" not in body["error"], body
        return
    labels = _decode_png(body["labels_png_base64"])
    assert labels.shape == (body["height"], body["width"])
    assert labels.max() < len(body["class_names"]) and body["class_names"][0] == BACKGROUND
    image = load_image(data, max_pixels=40_000)  # what the server read
    assert (image.width, image.height) == (body["width"], body["height"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 400), height=st.integers(1, 400))
def test_server_answers_413_with_the_limit_for_every_image_over_the_pixel_limit(client, width, height):
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    r = client.post("/segment", data={"classes": "cat", "crf": "false"},
                    files={"image": ("big.png", buf.getvalue(), "image/png")})
    if width * height > 40_000:
        assert r.status_code == 413 and "exceeds the limit of 40000" in r.json()["error"], r.text
    else:
        assert r.status_code == 200, r.text


def test_pillows_own_bomb_guard_is_a_413_with_the_limit_too(client):
    # over twice Pillow's MAX_IMAGE_PIXELS: Pillow refuses it while reading the header, before our check
    r = client.post("/segment", data={"classes": "cat", "crf": "false"},
                    files={"image": ("bomb.png", bomb_png(20000, 20000), "image/png")})
    assert r.status_code == 413, r.text
    assert "image 'bomb.png': image of 400000000 pixels exceeds the limit of 40000" in r.json()["error"]
    with pytest.raises(ImageTooLargeError, match="exceeds the limit of 40000"):
        load_image(bomb_png(20000, 20000), max_pixels=40_000)
