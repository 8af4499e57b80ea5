"""``simseg serve``: the JSON API and its limits (FastAPI's TestClient), concurrency against a real uvicorn server,
and the page driven end to end in headless Chromium (Debian's chromium + chromedriver; skipped only without them)."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")

from fastapi.testclient import TestClient  # noqa: E402

from simseg.app.serve import ServeLimits, create_app, demo_examples  # noqa: E402
from simseg.synthetic import generate_scenes  # noqa: E402

CLASSES = "red, green, blue"


@pytest.fixture(scope="module")
def model(tiny_model):
    """The session's tiny model; segmenters switch its input size, so it is put back afterwards for other tests."""
    size = tiny_model.image_size
    yield tiny_model
    tiny_model.set_image_size(size)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_cache"))


def png_bytes(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    scene = generate_scenes(1, seed, size=64)[0]
    buf = io.BytesIO()
    Image.fromarray(np.asarray(scene.image)).resize((width, height)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def post(client, data: bytes | None = None, filename: str = "img.png", **fields):
    fields.setdefault("classes", CLASSES)
    fields.setdefault("crf", "false")
    files = {"image": (filename, data, "image/png")} if data is not None else None
    return client.post("/segment", data=fields, files=files)


class StandIn:
    """A segmenter stand-in following the Segmenter contract: waits ``delay`` s or on ``gate``, or raises ``fail``."""

    def __init__(self, names, delay=0.0, gate=None, fail=None):
        self.names, self.delay, self.gate, self.fail = list(names), delay, gate, fail

    def __call__(self, image):
        from simseg.segment import SegmentationResult

        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        labels = np.zeros((image.height, image.width), np.int32)
        labels[: image.height // 2] = 1
        scores = np.linspace(0.5, 0.1, len(self.names))
        return SegmentationResult(labels, self.names, scores, [(self.names[1], float(scores[1]))],
                                  {"name": "stand-in", "crf": False, "templates": "single"})


def stand_in_factory(**kwargs):
    return lambda model, names, protocol, crf, templates: StandIn(names, **kwargs)


# ------------------------------------------------------------------------------------------------------- API
def test_segment_returns_label_map_overlay_and_scores(model, cache_dir):
    client = TestClient(create_app(model, cache_dir=cache_dir))
    for protocol, crf in (("simseg", "true"), ("dense", "false")):
        r = post(client, png_bytes(48, 40), classes=CLASSES, protocol=protocol, crf=crf, templates="single")
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["width"], out["height"]) == (48, 40)
        assert out["class_names"] == ["background", "red", "green", "blue"]
        assert len(out["scores"]) == 4 and all(np.isfinite(out["scores"]))
        assert out["protocol"]["name"] == protocol and out["protocol"]["crf"] == (crf == "true")
        labels = np.asarray(decode_png(out["labels_png_base64"]))
        assert labels.shape == (40, 48) and labels.max() < 4
        assert {f["name"] for f in out["found"]} == {out["class_names"][c] for c in np.unique(labels) if c}
        overlay = decode_png(out["overlay_png_base64"])
        assert overlay.size == (48, 40) and overlay.mode == "RGB"


def test_class_embeddings_are_cached_in_a_bounded_lru(model, cache_dir):
    from simseg.segment import Segmenter

    built = []

    def factory(m, names, protocol, crf, templates):
        built.append(tuple(names))
        return Segmenter(m, names, protocol=protocol, crf=crf, templates=templates, cache_dir=cache_dir)

    client = TestClient(create_app(model, ServeLimits(cache_size=2), segmenter_factory=factory))
    image = png_bytes()
    for classes in ("red, green", "red, green", "blue", "red, green", "cat", "blue"):
        assert post(client, image, classes=classes, templates="single").status_code == 200
    # "red, green" built once and reused; "blue" evicted by "cat" (cache of 2), so built again
    assert built == [("background", "red", "green"), ("background", "blue"), ("background", "cat"),
                     ("background", "blue")]


def test_upload_over_the_size_limit_is_413(model):
    limits = ServeLimits(max_upload_bytes=20_000)
    client = TestClient(create_app(model, limits, segmenter_factory=stand_in_factory()))
    big = png_bytes(400, 400) + b"\0" * 300_000  # well over limit + form slack: refused from Content-Length
    r = post(client, big)
    assert r.status_code == 413 and "limit of" in r.json()["error"]
    noise = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")  # ~30 kB: over the upload limit, inside the body slack
    r = post(client, buf.getvalue())
    assert r.status_code == 413 and "upload limit" in r.json()["error"]
    assert client.get("/health").json()["status"] == "ok"


def test_streamed_upload_without_content_length_is_cut_off_with_413(model):
    client = TestClient(create_app(model, ServeLimits(max_upload_bytes=1000), segmenter_factory=stand_in_factory()))
    boundary = "simsegboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()

    def body():  # a generator: httpx sends it chunked, with no Content-Length to check up front
        yield head
        for _ in range(100):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/segment", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "upload too large" in r.json()["error"]


def test_image_over_the_pixel_limit_is_413_before_decoding(model):
    client = TestClient(create_app(model, ServeLimits(max_pixels=1000), segmenter_factory=stand_in_factory()))
    r = post(client, png_bytes(40, 30))  # 1200 pixels
    assert r.status_code == 413
    assert "40x30 = 1200 pixels exceeds the limit of 1000" in r.json()["error"]
    assert post(client, png_bytes(30, 30)).status_code == 200


@pytest.mark.parametrize("name", ["max_upload_bytes", "max_pixels", "max_classes", "max_class_chars", "queue",
                                  "cache_size"])
def test_limit_settings_are_at_least_one(name):
    from simseg.errors import InputError

    assert getattr(ServeLimits(**{name: 1}), name) == 1
    with pytest.raises(InputError, match=f"serve limit {name}: must be at least 1, got 0"):
        ServeLimits(**{name: 0})


def test_queue_of_one_admits_exactly_one_request(model):
    gate = threading.Event()
    app = create_app(model, ServeLimits(queue=1), segmenter_factory=stand_in_factory(gate=gate))
    client = TestClient(app)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(post(client, png_bytes())))
    thread.start()
    deadline = time.monotonic() + 10
    while app.state.service.busy < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    r = post(client, png_bytes())
    assert r.status_code == 503 and "busy: 1 requests" in r.json()["error"] and "(limit 1)" in r.json()["error"]
    gate.set()
    thread.join(10)
    assert [res.status_code for res in result] == [200]
    assert post(client, png_bytes()).status_code == 200  # the slot is free again


def _padded_png(total: int) -> bytes:
    """A valid PNG of exactly ``total`` bytes (zeros after its end chunk, which decoders ignore)."""
    data = png_bytes(40, 30)
    assert len(data) <= total
    return data + b"\0" * (total - len(data))


def test_limits_hold_exactly_at_their_boundary(model):
    """Exactly at each limit is served; one over is refused: classes, class-name length, pixels, upload bytes."""
    limits = ServeLimits(max_classes=5, max_class_chars=12, max_pixels=1200, max_upload_bytes=4000)
    client = TestClient(create_app(model, limits, segmenter_factory=stand_in_factory()))
    image = png_bytes(40, 30)  # 1200 pixels: exactly the pixel limit
    five = ", ".join(f"c{i}" for i in range(5))
    assert post(client, image, classes=five).status_code == 200
    assert post(client, image, classes="background, " + five).status_code == 200  # background is not counted
    for six in (five + ", c5", "background, " + five + ", c5"):
        r = post(client, image, classes=six)
        assert r.status_code == 400 and "names given; the limit is 5" in r.json()["error"], six
    assert post(client, image, classes="x" * 12 + ", cat").status_code == 200
    r = post(client, image, classes="x" * 13 + ", cat")
    assert r.status_code == 400 and "is 13 characters long; the limit is 12" in r.json()["error"]
    r = post(client, png_bytes(1201, 1))
    assert r.status_code == 413 and "1201x1 = 1201 pixels exceeds the limit of 1200" in r.json()["error"]
    assert post(client, _padded_png(4000)).status_code == 200
    r = post(client, _padded_png(4001))
    assert r.status_code == 413 and "exceeds the upload limit" in r.json()["error"]


def test_class_count_is_checked_before_parsing_exactly_at_its_boundary(model):
    """Lists are counted by their commas before they are parsed: up to max_classes + 1 entries (room for background)
    are parsed (so a bad entry among them is named), one more is refused by the count alone."""
    client = TestClient(create_app(model, ServeLimits(max_classes=5), segmenter_factory=stand_in_factory()))
    image = png_bytes()
    r = post(client, image, classes="c0, c1, c2, c3, c4, ")  # 6 entries, the last empty: parsed
    assert r.status_code == 400 and "empty class name at position 6" in r.json()["error"]
    r = post(client, image, classes="c0, c1, c2, c3, c4, c0")  # 6 entries, a duplicate: parsed
    assert r.status_code == 400 and "duplicate class name 'c0'" in r.json()["error"]
    for text in ("c0, c1, c2, c3, c4, c5, ", "c0, c1, c2, c3, c4, c5, c0"):  # 7 entries: counted, never parsed
        r = post(client, image, classes=text)
        assert r.status_code == 400 and r.json()["error"] == "classes: 7 names given; the limit is 5", text


def test_default_limits_at_their_boundary(model):
    """The defaults: 100 classes (background not counted) of up to 100 characters, 16 megapixels, 10 MB uploads."""
    defaults = ServeLimits()
    assert (defaults.max_classes, defaults.max_class_chars, defaults.max_pixels, defaults.max_upload_bytes) == (
        100, 100, 16_000_000, 10 * 1024 * 1024)
    client = TestClient(create_app(model, segmenter_factory=stand_in_factory()))
    hundred = ", ".join(f"c{i}" for i in range(100))
    assert post(client, png_bytes(), classes=hundred).status_code == 200
    assert post(client, png_bytes(), classes="background, " + hundred).status_code == 200
    r = post(client, png_bytes(), classes=hundred + ", c100")
    assert r.status_code == 400 and "101 names given; the limit is 100" in r.json()["error"]
    r = post(client, png_bytes(), classes="background, " + hundred + ", c100")
    assert r.status_code == 400 and "names given; the limit is 100" in r.json()["error"]
    assert post(client, png_bytes(), classes="y" * 100).status_code == 200
    assert "101 characters long" in post(client, png_bytes(), classes="y" * 101).json()["error"]
    # pixels are refused from the header: a 4000 x 4001 PNG is never decoded (and is small once compressed)
    buf = io.BytesIO()
    Image.new("RGB", (4000, 4001)).save(buf, format="PNG")
    r = post(client, buf.getvalue())
    assert r.status_code == 413 and "16004000 pixels exceeds the limit of 16000000" in r.json()["error"]


def test_body_limit_middleware_at_its_boundary():
    """The ASGI body limit: exactly ``limit`` bytes pass, one more is a 413, announced or streamed."""
    import asyncio

    from simseg.app.serve import _BodyLimit

    async def inner(scope, receive, send):
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})

    def request(size: int, announce: bool) -> int:
        chunks = [b"x" * (size // 3), b"x" * (size // 3), b"x" * (size - 2 * (size // 3))]
        messages = [{"type": "http.request", "body": c, "more_body": i < 2} for i, c in enumerate(chunks)]
        headers = [(b"content-length", str(size).encode())] if announce else []
        sent = []

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "headers": headers}
        asyncio.run(_BodyLimit(inner, limit=300, upload_limit=300)(scope, receive, send))
        return sent[0]["status"]

    for announce in (True, False):
        assert request(300, announce) == 200, announce
        assert request(301, announce) == 413, announce


@pytest.mark.parametrize(
    ("fields", "data", "status", "message"),
    [
        ({}, b"this is not an image", 400, "not a readable image"),
        ({}, b"", 400, "empty"),
        ({}, png_bytes()[:60], 400, "image 'img.png'"),  # truncated PNG
        ({}, None, 400, "no image"),
        ({"classes": ""}, png_bytes(), 400, "classes: empty"),
        ({"classes": " , "}, png_bytes(), 400, "empty class name"),
        ({"classes": "cat, dog, Cat"}, png_bytes(), 400, "duplicate"),
        ({"classes": ", ".join(f"class{i}" for i in range(5000))}, png_bytes(), 400, "5000 names given; the limit "
                                                                                      "is 100"),
        ({"classes": "x" * 500}, png_bytes(), 400, "characters long"),
        ({"protocol": "magic"}, png_bytes(), 400, "protocol: 'magic'"),
        ({"crf": "maybe"}, png_bytes(), 400, "crf: expected true or false"),
        ({"templates": "all"}, png_bytes(), 400, "templates: 'all'"),
        ({"example": "7"}, None, 400, "not a built-in example"),
        ({"example": "one"}, None, 400, "expected an example number"),
        ({"example": "0"}, None, 400, "example: 0 is not a built-in example: this server has none"),  # not 0..-1
        ({"image": "street.jpg"}, None, 400, "image: expected an uploaded file, got the text 'street.jpg'"),
    ],
)
def test_bad_input_gets_a_clear_json_error_and_the_server_stays_up(model, fields, data, status, message):
    client = TestClient(create_app(model, segmenter_factory=stand_in_factory()))
    r = post(client, data, **fields)
    assert r.status_code == status
    assert message in r.json()["error"]
    assert post(client, png_bytes()).status_code == 200


def test_non_multipart_body_and_unknown_routes_get_json_errors(model):
    client = TestClient(create_app(model, segmenter_factory=stand_in_factory()))
    r = client.post("/segment", json={"classes": "cat"})  # not a form: no fields at all
    assert r.status_code == 400 and "classes: empty" in r.json()["error"]
    r = client.get("/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_request_over_the_time_limit_is_504_and_the_next_one_is_served(model):
    client = TestClient(create_app(model, ServeLimits(timeout_s=0.3), segmenter_factory=stand_in_factory(delay=0.6)))
    start = time.monotonic()
    r = post(client, png_bytes())
    assert r.status_code == 504 and "limit of 0.3 s" in r.json()["error"]
    assert time.monotonic() - start < 0.6  # the client is answered at the limit, not when the job ends
    assert client.get("/health").json()["status"] == "ok"
    time.sleep(0.4)  # the runaway job ends
    client.app.state.service.limits = ServeLimits(timeout_s=5)
    assert post(client, png_bytes()).status_code == 200


def test_a_failing_segmenter_gives_500_json_and_the_server_stays_up(model):
    app = create_app(model, segmenter_factory=stand_in_factory(fail=RuntimeError("boom")))
    client = TestClient(app, raise_server_exceptions=False)
    r = post(client, png_bytes())
    assert r.status_code == 500 and "RuntimeError: boom" in r.json()["error"]
    assert client.get("/health").status_code == 200


def test_requests_beyond_the_queue_get_503_busy_and_the_admitted_ones_succeed(model):
    gate = threading.Event()
    app = create_app(model, ServeLimits(queue=2), segmenter_factory=stand_in_factory(gate=gate))
    service = app.state.service
    client = TestClient(app)
    results: list = [None] * 2

    def send(i):
        results[i] = post(client, png_bytes())

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while service.busy < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    r = post(client, png_bytes())
    assert r.status_code == 503 and r.json()["error"].startswith("busy") and r.headers["retry-after"] == "2"
    assert client.get("/health").json()["busy"] == 2  # the page and health stay responsive meanwhile
    gate.set()
    for t in threads:
        t.join(10)
    assert [res.status_code for res in results] == [200, 200]
    assert post(client, png_bytes()).status_code == 200


def test_an_image_over_the_pixel_limit_is_413_whoever_refuses_it(model):
    """Our check from the header, Pillow's decompression-bomb guard (over twice its own limit, raised while the header
    is read), and the decoder's check on an image whose header passed: 413 with the limit, every time."""
    from tests.test_properties import bomb_png

    client = TestClient(create_app(model, ServeLimits(max_pixels=1000), segmenter_factory=stand_in_factory()))
    for data, size in ((png_bytes(40, 30), "40x30 = 1200 pixels"), (bomb_png(20000, 20000), "400000000 pixels")):
        r = post(client, data, filename="big.png")
        error = r.json()["error"]
        assert r.status_code == 413 and error.startswith("image 'big.png': "), r.text
        assert f"{size} exceeds the limit of 1000" in error, r.text
    # past the header check (as with an image whose size only decoding reveals): load_image's own refusal maps too
    service = client.app.state.service
    from simseg.app.serve import RequestError

    with pytest.raises(RequestError) as info:
        service.run_job(png_bytes(40, 30), "late.png", ["background", "cat"], "dense", False, "single")
    assert info.value.status == 413 and "exceeds the limit of 1000" in str(info.value)


def _status_table(model):
    """Per status code the module documents, a request that gets it (each on a fresh app)."""
    from tests.test_properties import bomb_png

    def plain(**limits):
        return TestClient(create_app(model, ServeLimits(**limits), segmenter_factory=stand_in_factory()))

    def busy():
        gate = threading.Event()
        app = create_app(model, ServeLimits(queue=1), segmenter_factory=stand_in_factory(gate=gate))
        client = TestClient(app)
        first = threading.Thread(target=post, args=(client, png_bytes()))
        first.start()
        deadline = time.monotonic() + 10
        while app.state.service.busy < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            return post(client, png_bytes())
        finally:
            gate.set()
            first.join(10)

    return {
        200: [lambda: post(plain(), png_bytes())],
        400: [lambda: post(plain(), png_bytes(), classes=""), lambda: post(plain(), b"not an image"),
              lambda: post(plain(), png_bytes(), protocol="magic"), lambda: plain().post("/segment", content=b"--x",
                                                                                      headers={"content-type":
                                                                                               "multipart/form-data"})],
        404: [lambda: plain().get("/nothing"), lambda: plain().get("/examples/9.png"),
              lambda: plain().get("/examples/abc.png")],
        405: [lambda: plain().get("/segment")],
        413: [lambda: post(plain(max_upload_bytes=1000), png_bytes() + b"\0" * 400_000),
              lambda: post(plain(max_pixels=100), png_bytes(40, 30)),
              lambda: post(plain(), bomb_png(20000, 20000))],
        500: [lambda: post(TestClient(create_app(model, segmenter_factory=stand_in_factory(fail=RuntimeError("x"))),
                                      raise_server_exceptions=False), png_bytes())],
        503: [busy],
        504: [lambda: post(TestClient(create_app(model, ServeLimits(timeout_s=0.2),
                                                 segmenter_factory=stand_in_factory(delay=0.5))), png_bytes())],
    }


def test_every_status_code_the_docs_name_is_the_one_returned(model):
    import re

    from simseg.app import serve

    documented = {int(code) for code in re.findall(r"\b([2-5]\d\d)\b", serve.__doc__)}
    client = TestClient(create_app(model, segmenter_factory=stand_in_factory()))
    schema = client.get("/openapi.json").json()
    in_schema = {int(code) for op in schema["paths"].values() for method in op.values()
                 for code in method.get("responses", {}) if code.isdigit()}
    table = _status_table(model)
    assert documented == set(table), documented ^ set(table)
    assert in_schema <= documented  # no 422: a request FastAPI would refuse with it is answered as 400 or 404
    for status, requests in table.items():
        for send in requests:
            r = send()
            assert r.status_code == status, (status, r.status_code, r.text)
            if status != 200:
                error = r.json()["error"]
                assert error and "\n" not in error, r.text
    r = TestClient(create_app(model, segmenter_factory=stand_in_factory())).get("/examples/abc.png")
    assert "example 'abc': no such example" in r.json()["error"]


def test_soak_500_sequential_requests_keep_memory_and_threads_flat(model):
    """One app, 500 requests of mixed sizes, class lists (more than the segmenter cache holds) and refusals: the
    resident memory after the warm-up grows by less than a small bound, no thread is left behind."""
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("RSS is read from /proc/self/status (Linux)")

    def rss_mb() -> float:
        import gc

        gc.collect()
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    app = create_app(model, ServeLimits(cache_size=4), segmenter_factory=stand_in_factory())
    client = TestClient(app)
    images = [png_bytes(24 + 8 * i, 20 + 6 * i, seed=i) for i in range(5)]
    codes: dict[int, int] = {}

    def one(i: int) -> None:
        if i % 10 == 9:
            r = post(client, b"broken" * 10)  # a refusal now and then: its path must not leak either
        else:
            r = post(client, images[i % 5], classes=f"red, green, c{i % 7}")
        codes[r.status_code] = codes.get(r.status_code, 0) + 1

    for i in range(50):  # warm-up: caches, allocator pools, lazily imported modules
        one(i)
    start, threads = rss_mb(), threading.active_count()
    for i in range(50, 500):
        one(i)
    end = rss_mb()
    assert codes == {200: 450, 400: 50}, codes
    assert app.state.service.served == 450 and app.state.service.busy == 0
    assert len(app.state.service._segmenters) <= 4
    assert threading.active_count() <= threads
    assert end - start < 30, f"RSS grew from {start:.0f} MB to {end:.0f} MB over 450 requests"


def test_health_config_examples_and_page(model):
    app = create_app(model, default_classes="red, green", examples=demo_examples(2, seed=1, size=64),
                     segmenter_factory=stand_in_factory())
    client = TestClient(app)
    assert client.get("/health").json()["status"] == "ok"
    config = client.get("/config").json()
    assert config["default_classes"] == "red, green" and len(config["examples"]) == 2
    assert config["limits"]["max_classes"] == 100
    example = client.get("/examples/1.png")
    assert example.headers["content-type"] == "image/png" and Image.open(io.BytesIO(example.content)).size == (64, 64)
    assert client.get("/examples/5.png").status_code == 404
    r = post(client, None, example="1")
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (64, 64)
    page = client.get("/")
    assert page.status_code == 200 and 'id="segment-form"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_colour_word_classes_get_their_colour_in_the_answer(model, cache_dir):
    client = TestClient(create_app(model, cache_dir=cache_dir))
    r = post(client, png_bytes(), classes="red, dark blue, cat", protocol="dense", templates="single")
    assert r.status_code == 200, r.text
    colors = r.json()["colors"]
    assert colors[1] == [255, 0, 0] and colors[2] == [0, 0, 139] and colors[3] not in ([255, 0, 0], [0, 0, 139])


def test_a_request_without_protocol_gets_the_default_protocol(model):
    seen = []

    def factory(m, names, protocol, crf, templates):
        seen.append((protocol, crf))
        return StandIn(names)

    client = TestClient(create_app(model, segmenter_factory=factory, default_protocol="dense"))
    assert client.get("/config").json()["default_protocol"] == "dense"
    fields = {"classes": CLASSES}  # no protocol, no crf: what a script sends
    assert client.post("/segment", data=fields, files={"image": ("a.png", png_bytes(), "image/png")}).status_code == 200
    assert post(client, png_bytes(), protocol="simseg", crf="true").status_code == 200
    assert seen == [("dense", False), ("simseg", True)]
    assert TestClient(create_app(model, segmenter_factory=factory)).get("/config").json()["default_protocol"] == \
        "simseg"


def test_openapi_schema_lists_the_segment_form_fields_and_the_answer(model):
    import json

    client = TestClient(create_app(model, segmenter_factory=stand_in_factory()))
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/segment"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"image", "example", "classes", "protocol", "crf", "templates"}
    assert form["required"] == ["classes"] and form["properties"]["image"]["format"] == "binary"
    assert form["properties"]["protocol"]["enum"] == ["simseg", "dense"]
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    # the documented answer is the real one, field for field
    assert set(answer) == set(post(client, png_bytes()).json())
    assert {"400", "413", "503", "504"} <= set(op["responses"])
    # an OpenAPI 3.0 document (what the local Swagger UI renders): no 3.1-only null types
    assert schema["openapi"].startswith("3.0") and '"null"' not in json.dumps(schema)
    # every GET answers with the media type its schema documents (an example is a PNG, not JSON)
    client = TestClient(create_app(model, examples=demo_examples(1, size=32), segmenter_factory=stand_in_factory()))
    for path, operations in schema["paths"].items():
        if "get" in operations:
            r = client.get(path.replace("{index}", "0"))
            assert r.status_code == 200, (path, r.text)
            assert list(operations["get"]["responses"]["200"]["content"]) == [r.headers["content-type"]], path
    example = schema["paths"]["/examples/{index}.png"]["get"]
    assert [p["schema"]["type"] for p in example["parameters"]] == ["integer"]


def _local_urls(html: str) -> list[str]:
    import re

    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


def test_docs_page_works_offline_with_local_swagger_ui_or_a_plain_api_page(model, monkeypatch):
    from simseg.app import serve

    if serve.swagger_ui_dir() is not None:
        client = TestClient(create_app(model, segmenter_factory=stand_in_factory()))
        page = client.get("/docs")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        urls = _local_urls(page.text)
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing from a CDN
        for u in urls:
            assert client.get(u).status_code == 200, u
    monkeypatch.setattr(serve, "swagger_ui_dir", lambda: None)
    client = TestClient(create_app(model, segmenter_factory=stand_in_factory()))
    page = client.get("/docs")
    assert page.status_code == 200 and "POST /segment" in page.text
    assert all(f"<code>{field}" in page.text for field in ("image", "example", "classes", "protocol", "crf"))
    assert not [u for u in _local_urls(page.text) if u.startswith("http")]


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_serves_a_checkpoint_with_its_recorded_evaluation_defaults(tmp_path, monkeypatch, model, capsys):
    import uvicorn

    from simseg.app.cli import main
    from simseg.checkpoint import save_model

    evaluation = {"protocol": "dense", "protocols": {"dense": {"short_side": 32, "crop_size": 32, "stride": 32}},
                  "classes": "red, green"}
    ckpt = save_model(model, tmp_path / "ck", meta={"evaluation": evaluation})
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.update(app=app))
    assert main(["serve", "--checkpoint", str(ckpt), "--port", "8124"]) == 0
    out = capsys.readouterr().out
    assert (f"evaluation defaults recorded in {ckpt}: protocol dense; short_side=32, crop_size=32, stride=32; "
            "classes red, green") in out
    service = served["app"].state.service
    config = TestClient(served["app"]).get("/config").json()
    assert config["default_protocol"] == "dense" and config["default_classes"] == "red, green"
    assert service.protocol_params == {"dense": {"short_side": 32, "crop_size": 32, "stride": 32}}
    assert main(["serve", "--checkpoint", str(ckpt), "--protocol", "simseg", "--classes", "cat"]) == 0
    config = TestClient(served["app"]).get("/config").json()
    assert config["default_protocol"] == "simseg" and config["default_classes"] == "cat"


def test_cli_answers_state_the_checkpoint_and_versions_as_segment_json_does(tmp_path, monkeypatch, model, capsys):
    import json

    import uvicorn

    from simseg.app.cli import main
    from simseg.checkpoint import save_model

    ckpt = save_model(model, tmp_path / "ck")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.update(app=app))
    cache = str(tmp_path / "cache")
    assert main(["serve", "--checkpoint", str(ckpt), "--protocol", "dense", "--cache-dir", cache]) == 0
    answer = post(TestClient(served["app"]), png_bytes(), templates="single").json()
    # the start-up line names the checkpoint with its hash, the URL and the protocol of requests that name none
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("simseg serve:")]
    assert line == [(f"simseg serve: {ckpt} (sha256 {answer['checkpoint']['sha256'][:12]}) on "
                     "http://127.0.0.1:8000/; requests that name no protocol get dense (Ctrl+C stops)")]
    assert main(["serve", "--checkpoint", str(ckpt), "--host", "::1", "--port", "8125"]) == 0
    assert "on http://[::1]:8125/; requests that name no protocol get simseg" in capsys.readouterr().out
    (tmp_path / "img.png").write_bytes(png_bytes())
    assert main(["segment", str(tmp_path / "img.png"), "--classes", CLASSES, "--checkpoint", str(ckpt), "--protocol",
                 "dense", "--templates", "single", "--cache-dir", cache, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert answer["checkpoint"] == report["checkpoint"] and len(answer["checkpoint"]["sha256"]) == 64
    assert answer["versions"] == report["versions"] and answer["versions"]["simseg"]
    capsys.readouterr()


def test_cli_needs_a_checkpoint_or_a_demo_model(tmp_path, monkeypatch, capsys):
    from simseg.app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["serve"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["serve", "--demo"]) == 2
    assert "run 'simseg demo' first" in capsys.readouterr().err


def test_cli_demo_serves_the_demo_model_with_colour_classes_and_examples(tmp_path, monkeypatch, model):
    import uvicorn

    import simseg
    from simseg.app.cli import main
    from simseg.synthetic import colour_class_names

    monkeypatch.chdir(tmp_path)
    (tmp_path / "simseg-demo" / "loda" / "checkpoint").mkdir(parents=True)
    loaded, served = [], {}
    monkeypatch.setattr(simseg, "load_model", lambda path, **kw: loaded.append(path) or model)
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.update(app=app, host=host, port=port))
    assert main(["serve", "--demo", "--port", "8123", "--max-classes", "7", "--timeout", "9"]) == 0
    assert loaded == [str(Path("simseg-demo/loda/checkpoint"))]
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    config = TestClient(served["app"]).get("/config").json()
    assert config["default_classes"] == ", ".join(colour_class_names()[1:])
    assert config["default_protocol"] == "dense"  # the protocol that works for the demo model
    assert served["app"].state.service.protocol_params["dense"]["crop_size"] == model.image_size
    assert len(config["examples"]) == 6
    assert config["limits"]["max_classes"] == 7 and config["limits"]["timeout_s"] == 9


# ------------------------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server(model, cache_dir):
    """uvicorn on a free localhost port, in a background thread; yields (base URL, app)."""
    import uvicorn

    limits = ServeLimits(max_upload_bytes=int(10.3 * 2**20))  # whole bytes: 10.299999 MB, which the page rounds
    app = create_app(model, limits, default_classes=CLASSES, examples=demo_examples(3, seed=0, size=96),
                     cache_dir=cache_dir, title="tiny test model")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the OS picks the port; the bound socket goes to uvicorn, so no race for it
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)
    sock.close()


def test_50_concurrent_requests_to_a_real_server_all_succeed_or_get_busy(server):
    import httpx

    url, _ = server
    image = png_bytes(64, 64)
    responses: list = []

    def send():
        with httpx.Client(timeout=30) as c:
            responses.append(c.post(f"{url}/segment", data={"classes": CLASSES, "crf": "false"},
                                    files={"image": ("a.png", image, "image/png")}))

    threads = [threading.Thread(target=send) for _ in range(50)]  # far more than the queue of 4
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(responses) == 50
    ok = [r for r in responses if r.status_code == 200]
    busy = [r for r in responses if r.status_code == 503]
    assert len(ok) + len(busy) == 50, sorted(r.status_code for r in responses)  # never a 500, never lost
    assert len(ok) >= 4
    assert all(r.json()["error"].startswith("busy") for r in busy)
    # one model, one result: every concurrent answer is the same label map
    assert len({r.json()["labels_png_base64"] for r in ok}) == 1
    assert httpx.get(f"{url}/health").json()["busy"] == 0


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    found = _chromium()
    if found is None:
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver); not installed here")
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install 'simseg[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    # the system chromedriver, given by path: selenium never looks for (or downloads) a driver or a browser
    driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_in_headless_chromium_uploads_segments_and_shows_overlay_legend_scores(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, _ = server
    width, height = 120, 90
    image_path = tmp_path / "shapes.png"
    Image.open(io.BytesIO(png_bytes(width, height, seed=3))).save(image_path)

    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "classes").get_attribute("value") == CLASSES)  # /config loaded
    assert browser.find_element(By.ID, "limits-hint").text.startswith("Limits: 10.3 MB, ")

    # an error first: no classes -> the server's message appears on the page
    browser.find_element(By.ID, "image").send_keys(str(image_path))
    browser.find_element(By.ID, "classes").clear()
    browser.find_element(By.ID, "submit").click()
    error = wait.until(lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed()
                       else False)
    assert "HTTP 400" in error.text and "classes: empty" in error.text

    # then a real segmentation with the CRF on
    browser.find_element(By.ID, "classes").send_keys("red, green, blue, yellow")
    assert browser.find_element(By.ID, "crf").is_selected()
    browser.find_element(By.ID, "submit").click()
    size = wait.until(lambda d: d.execute_script(
        "const img = document.getElementById('overlay');"
        "return img.complete && img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null;"))
    assert size == [width, height]
    assert not browser.find_element(By.ID, "error").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#scores tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows].count("yellow") == 1 and len(rows) == 5
    assert browser.find_elements(By.CSS_SELECTOR, "#legend li")
    assert "protocol simseg, CRF on" in browser.find_element(By.ID, "protocol-info").text

    # a built-in example instead of an upload, with the dense protocol (every pixel gets its best class)
    Select(browser.find_element(By.ID, "example")).select_by_value("2")
    Select(browser.find_element(By.ID, "protocol")).select_by_value("dense")
    assert not browser.find_element(By.ID, "crf").is_enabled()
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: "96 x 96 px; protocol dense" in d.find_element(By.ID, "protocol-info").text)
    assert browser.execute_script("return document.getElementById('overlay').naturalWidth") == 96
    legend = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")]
    assert legend and all(any(name in text for name in ("background", "red", "green", "blue", "yellow"))
                          for text in legend)

    # on a 1280 x 800 laptop screen the result is in view without scrolling: the overlay and its legend
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    try:
        browser.execute_script("window.scrollTo(0, 0);")
        view = browser.execute_script("return [window.innerWidth, window.innerHeight, window.scrollY];")
        assert view == [1280, 800, 0]
        for selector in ("#overlay", "#legend li", "#submit"):
            box = browser.execute_script(
                "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                "return [r.left, r.top, r.right, r.bottom];", selector)
            assert box[0] >= 0 and box[1] >= 0 and box[2] <= 1280 and box[3] <= 800, (selector, box)
        browser.save_screenshot("/tmp/simseg_serve_screenshot.png")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # an error after a result: the earlier result goes, so that it cannot pass for the answer to this request
    browser.find_element(By.ID, "classes").clear()
    browser.find_element(By.ID, "submit").click()
    error = wait.until(lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed()
                       else False)
    assert "classes: empty" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
    assert not browser.find_element(By.ID, "overlay").is_displayed()

    # the API page renders from the local Swagger UI (the browser has no network)
    from simseg.app.serve import swagger_ui_dir

    if swagger_ui_dir() is not None:
        browser.get(url + "/docs")
        wait.until(lambda d: any("/segment" in e.text for e in d.find_elements(By.CSS_SELECTOR,
                                                                                ".opblock-summary-path")))
