"""``simseg serve``: a local web page and JSON API to segment your own image with your own class names.

Run it with ``simseg serve --checkpoint PATH`` (or ``simseg serve --demo`` after ``simseg demo``) and open
http://127.0.0.1:8000/. The page (``static/``) uploads an image or picks a built-in synthetic example, sends the class
names, protocol and CRF choice to ``POST /segment``, and shows the overlay, a legend and the per-class scores.

The app is FastAPI (Starlette) served by uvicorn: a plain ASGI app that FastAPI's ``TestClient`` drives in-process,
with multipart parsing (python-multipart) and static files built in, and no front-end framework to ship.

Design:

* One model shared by all requests; segmenters only read it (each protocol runs at its own input size without
  changing the model). Model calls run in a one-thread executor, so requests are processed one at a time (the CPU
  threads go to one forward at a time), off the event loop, so the page, ``/health`` and refusals stay responsive
  while a segmentation runs.
* At most ``queue`` requests are admitted (running or waiting); one more gets 503 "busy" with ``Retry-After``.
* Each request waits at most ``timeout`` seconds, then gets 504; a job that has not started yet is cancelled.
* Class embeddings live in the :class:`~simseg.segment.Segmenter` objects, kept in a small LRU cache keyed by
  (class list, protocol, CRF, templates) inside the :class:`SegmentService` (and on disk by ``segment.py``).
* Limits: request body size (413, checked from ``Content-Length`` before anything is read, and while streaming),
  image pixel count (413 with the limit, from the image header before decoding, whether our limit or Pillow's
  decompression-bomb guard refuses it), number of classes and class-name length (400).
* Status codes: 200, 400 (bad input: image, class names, options, form), 404 (unknown path or example), 405 (wrong
  method), 413, 503, 504, and 500 for a bug (the server stays up). Every error is JSON ``{"error": "..."}`` on one
  line; the page shows it.
* The protocol a request gets when it names none is the checkpoint's recorded evaluation default (the demo model:
  ``dense`` at its 64-pixel size), else the paper's ``simseg``; the page starts with it selected.
* ``/docs`` works offline: Swagger UI from the locally installed ``swagger-ui-bundle`` package (the ``serve``
  extra), or, without it, a plain page listing the API. The OpenAPI schema (``/openapi.json``) describes
  ``POST /segment``'s form fields and its JSON answer.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (``Request``, imported lazily
# inside create_app) at runtime.
import argparse
import asyncio
import base64
import contextlib
import importlib.util
import io
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from simseg.app.options import add_cache_option, add_checkpoint_options, add_device_option, resolve_device
from simseg.classnames import TEMPLATE_SETS
from simseg.errors import ImageTooLargeError, InputError, SimSegError, one_line
from simseg.protocols import DEFAULT_PROTOCOL, PROTOCOLS

HELP = "a local web page and JSON API to segment your own images"

#: ``simseg demo``'s default output folder and where it puts the LoDA model's checkpoint.
DEMO_CHECKPOINT = Path("simseg-demo") / "loda" / "checkpoint"

#: Multipart framing and the small text fields ride on top of the image's bytes.
_FORM_SLACK_BYTES = 256 * 1024

#: A (model, class names, protocol, crf, templates) -> segmenter factory; ``Segmenter`` by default.
SegmenterFactory = Callable[[Any, list[str], str, bool, str], Callable[[Image.Image], Any]]


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for.

    Attributes:
        max_upload_bytes: largest image upload.
        max_pixels: largest image (width x height), checked from the header before decoding.
        max_classes: most class names in one request (background not counted).
        max_class_chars: longest class name (the text encoder truncates prompts at 25 tokens anyway).
        timeout_s: longest a request waits for its result, queueing included.
        queue: most requests admitted at once (one running, the rest waiting); more get "busy".
        cache_size: segmenters (class embeddings) kept in memory.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_classes: int = 100
    max_class_chars: int = 100
    timeout_s: float = 60.0
    queue: int = 4
    cache_size: int = 8

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_classes", "max_class_chars", "queue", "cache_size"):
            if getattr(self, name) < 1:
                raise InputError(f"serve limit {name}: must be at least 1, got {getattr(self, name)}")
        if not self.timeout_s > 0 or self.timeout_s == float("inf"):  # nan and inf too
            raise InputError(f"serve limit timeout: must be a positive, finite number of seconds, got {self.timeout_s}")


class RequestError(SimSegError):
    """A request refused with an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _default_factory(model: Any, class_names: list[str], protocol: str, crf: bool, templates: str,
                     cache_dir: str | None = None, params: dict | None = None) -> Callable[[Image.Image], Any]:
    from simseg.segment import Segmenter

    return Segmenter(model, class_names, protocol=protocol, crf=crf, templates=templates, cache_dir=cache_dir,
                     **(params or {}))


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _png_base64(image: Image.Image) -> str:
    return base64.b64encode(_png_bytes(image)).decode("ascii")


def parse_bool(value: str | None, name: str, default: bool) -> bool:
    """A form checkbox or API flag: true/false, on/off, 1/0, yes/no (case-insensitive); absent -> ``default``."""
    if value is None or value == "":
        return default
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise RequestError(400, f"{name}: expected true or false, got {value!r}")


class SegmentService:
    """The state behind the app: one model, the limits, the segmenter cache and the one-at-a-time executor.

    Args:
        model: a loaded model in eval mode, shared by all requests.
        limits: request limits.
        default_classes: class names the page starts with (comma-separated).
        examples: built-in example images (name, PIL image) the page can pick instead of an upload.
        cache_dir: on-disk class-embedding cache (``Segmenter``'s; None: its default).
        segmenter_factory: builds a segmenter for (model, class names, protocol, crf, templates); tests pass a
            stand-in. Default: :class:`simseg.segment.Segmenter`.
        title: what the page calls the model (e.g. the checkpoint path).
        protocol_params: per protocol name, parameters for the default segmenter (e.g. the demo model's input
            size); default: the protocols' own defaults (the paper's).
        default_protocol: the protocol of a request that names none (and the page's initial choice).
        checkpoint: the checkpoint's fingerprint (path and sha256, :func:`simseg.app.report.provenance`'s
            ``checkpoint``), stated in every answer with the software versions; empty when not given.
    """

    def __init__(
        self,
        model: Any,
        limits: ServeLimits,
        default_classes: str = "",
        examples: Sequence[tuple[str, Image.Image]] = (),
        cache_dir: str | None = None,
        segmenter_factory: SegmenterFactory | None = None,
        title: str = "",
        protocol_params: dict[str, dict] | None = None,
        default_protocol: str = DEFAULT_PROTOCOL,
        checkpoint: dict[str, Any] | None = None,
    ):
        from simseg.app.report import software_versions

        if default_protocol not in PROTOCOLS:
            raise InputError(f"protocol {default_protocol!r}: not one of {', '.join(PROTOCOLS)}")
        self.model = model
        self.default_protocol = default_protocol
        self.protocol_params = dict(protocol_params or {})
        self.limits = limits
        self.default_classes = default_classes
        self.examples = [(name, img.convert("RGB")) for name, img in examples]
        self.example_png = [_png_bytes(img) for _, img in self.examples]
        self.cache_dir = cache_dir
        self.factory = segmenter_factory
        self.title = title
        self.checkpoint = dict(checkpoint or {})
        self.versions = software_versions()
        self._segmenters: OrderedDict[tuple, Any] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simseg-serve")
        self._admitted = 0
        self._admit_lock = threading.Lock()  # loop-agnostic: TestClient threads each run their own event loop
        self.served = 0

    # ---------------------------------------------------------------- validation (cheap, on the event loop)
    def parse_classes(self, text: str | None) -> list[str]:
        """The class list of a request (background first), within the limits.

        Raises:
            RequestError: 400 for an empty, malformed or too long list.
        """
        from simseg.classnames import parse_class_list

        if text is None or not text.strip():
            raise RequestError(400, "classes: empty; type at least one class name, e.g. 'cat, dog, grass'")
        count = text.count(",") + 1  # before parsing: thousands of names are refused without touching them
        if count > self.limits.max_classes + 1:
            raise RequestError(400, f"classes: {count} names given; the limit is {self.limits.max_classes}")
        try:
            names = parse_class_list(text)
        except InputError as e:
            raise RequestError(400, str(e)) from None
        if len(names) - 1 > self.limits.max_classes:
            raise RequestError(400, f"classes: {len(names) - 1} names given; the limit is {self.limits.max_classes}")
        for name in names:
            if len(name) > self.limits.max_class_chars:
                raise RequestError(400, f"classes: name {name[:30]!r}... is {len(name)} characters long; the limit "
                                        f"is {self.limits.max_class_chars}")
        return names

    def check_image_header(self, data: bytes, name: str) -> None:
        """Refuse an empty upload (400) or one whose header says it is over the pixel limit (413), before decoding.

        An image Pillow itself refuses as a decompression bomb (over twice its own limit) is 413 too, with the
        limit. Anything PIL cannot identify is left to :func:`simseg.images.load_image`, which names the problem.
        """
        from simseg.images import pillow_refusal

        if not data:
            raise RequestError(400, f"image {name!r}: empty upload (0 bytes)")
        if len(data) > self.limits.max_upload_bytes:
            raise RequestError(413, f"image {name!r}: {len(data) / 2**20:.1f} MB exceeds the upload limit of "
                                    f"{self.limits.max_upload_bytes / 2**20:g} MB")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides, below
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
        except Image.DecompressionBombError as e:
            raise RequestError(413, pillow_refusal(f"image {name!r}", e, self.limits.max_pixels)) from None
        except Exception:  # not an image, or a broken header: load_image gives the precise message
            return
        if width * height > self.limits.max_pixels:
            raise RequestError(413, f"image {name!r}: {width}x{height} = {width * height} pixels exceeds the limit "
                                    f"of {self.limits.max_pixels}")

    # ---------------------------------------------------------------- the job (in the worker thread)
    def _segmenter(self, names: list[str], protocol: str, crf: bool, templates: str) -> Any:
        key = (tuple(names), protocol, crf, templates)
        seg = self._segmenters.get(key)
        if seg is not None:
            self._segmenters.move_to_end(key)
            return seg
        if self.factory is not None:
            seg = self.factory(self.model, names, protocol, crf, templates)
        else:
            seg = _default_factory(self.model, names, protocol, crf, templates, cache_dir=self.cache_dir,
                                   params=self.protocol_params.get(protocol))
        self._segmenters[key] = seg
        while len(self._segmenters) > self.limits.cache_size:
            self._segmenters.popitem(last=False)
        return seg

    def run_job(self, image: bytes | int, image_name: str, names: list[str], protocol: str, crf: bool,
                templates: str) -> dict:
        """Decode, segment and encode one request; runs in the single worker thread.

        Args:
            image: the uploaded bytes, or the index of a built-in example.

        Raises:
            RequestError: 400 for an unreadable image or a refused option (e.g. the CRF library missing), 413 for an
                image over the pixel limit.
        """
        from simseg.images import load_image
        from simseg.visualize import class_colors, label_image, overlay

        start = time.perf_counter()
        try:
            if isinstance(image, int):
                pil = self.examples[image][1]
            else:
                pil = load_image(image, name=f"image {image_name!r}", max_pixels=self.limits.max_pixels)
            seg = self._segmenter(names, protocol, crf, templates)
            result = seg(pil)
        except ImageTooLargeError as e:
            raise RequestError(413, str(e)) from None
        except SimSegError as e:
            raise RequestError(400, str(e)) from None
        labels = np.asarray(result.labels)
        scores = np.asarray(result.scores, dtype=np.float64)
        # the legend goes into the page (from ``found`` and ``colors``) instead: the overlay keeps the image's size
        blend = overlay(pil, labels, result.class_names, scores=scores, legend=False)
        colors = class_colors(result.class_names)
        self.served += 1
        return {
            "width": pil.width,
            "height": pil.height,
            "class_names": list(result.class_names),
            "scores": [float(s) for s in scores],
            "colors": colors.tolist(),
            "found": [{"name": name, "score": float(score)} for name, score in result.found],
            # the segmenter's info adds the prompt templates to the protocol's parameters
            "protocol": seg.protocol_info() if hasattr(seg, "protocol_info") else result.protocol,
            "details": getattr(result, "details", {}),
            "labels_png_base64": _png_base64(label_image(labels)),
            "overlay_png_base64": _png_base64(blend),
            "checkpoint": self.checkpoint,
            "versions": self.versions,
            "seconds": round(time.perf_counter() - start, 3),
        }

    # ---------------------------------------------------------------- admission and timeout (on the event loop)
    def _release(self, _future: Future) -> None:
        with self._admit_lock:
            self._admitted -= 1

    def submit(self, *args: Any) -> Future:
        """Queue a job, or refuse with 503 when ``queue`` jobs are already admitted."""
        with self._admit_lock:
            if self._admitted >= self.limits.queue:
                raise RequestError(503, f"busy: {self._admitted} requests are being processed or waiting (limit "
                                        f"{self.limits.queue}); try again in a moment", headers={"Retry-After": "2"})
            self._admitted += 1
        try:
            future = self._executor.submit(self.run_job, *args)
        except BaseException:
            self._release(None)  # type: ignore[arg-type]
            raise
        # released when the job really ends, not when its request gives up: a timed-out job still occupies the worker
        future.add_done_callback(self._release)
        return future

    async def segment(self, *args: Any) -> dict:
        """Run a job within the time limit; 504 when it takes longer (a job that has not started is cancelled)."""
        future = self.submit(*args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"timeout: the segmentation took longer than the limit of "
                                    f"{self.limits.timeout_s:g} s (fewer classes, a smaller image or the dense "
                                    f"protocol without CRF are faster)") from None

    @property
    def busy(self) -> int:
        """Requests admitted now (running or waiting)."""
        return self._admitted

    def close(self) -> None:
        """Stop the worker: waiting jobs are cancelled, a running one finishes in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------------------- the app
class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, from ``Content-Length`` before reading anything,
    and while streaming for bodies sent without it."""

    class TooLarge(Exception):
        pass

    def __init__(self, app: Any, limit: int, upload_limit: int):
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit

    async def _refuse(self, send: Any, size: int | None) -> None:
        import json

        got = f"{size / 2**20:.1f} MB" if size is not None else "more"
        body = json.dumps({"error": f"upload too large: {got} exceeds the limit of "
                                    f"{self.upload_limit / 2**20:g} MB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send, int(length))
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self.TooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except self.TooLarge:
            if not started:
                await self._refuse(send, None)


def _static_dir() -> Path:
    return Path(str(resources.files("simseg.app") / "static"))


def swagger_ui_dir() -> Path | None:
    """The folder of the locally installed Swagger UI (``swagger-ui-bundle`` package), or None without it."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() and (path / "swagger-ui.css").is_file() else None


#: ``POST /segment``'s form fields, for the OpenAPI schema (the endpoint reads the multipart form itself, with limits).
SEGMENT_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["classes"],
    "properties": {
        "image": {"type": "string", "format": "binary",
                  "description": "the image to segment (PNG, JPEG, WebP, ...); give this or 'example'"},
        "example": {"type": "integer", "minimum": 0,
                    "description": "instead of an upload: the index of a built-in example (GET /config lists them)"},
        "classes": {"type": "string", "example": "cat, dog, grass",
                    "description": "class names separated by commas; 'background' is added as index 0 unless it "
                                   "is listed first"},
        "protocol": {"type": "string", "enum": list(PROTOCOLS),
                     "description": "segmentation protocol; default: the one the checkpoint records (GET /config "
                                    "says which), else simseg"},
        "crf": {"type": "boolean", "default": True,
                "description": "dense CRF refinement (simseg protocol only); true/false, on/off, 1/0"},
        "templates": {"type": "string", "enum": list(TEMPLATE_SETS), "default": "imagenet",
                      "description": "prompt templates: the 80 ImageNet ones, or a single 'a photo of a {}.'"},
    },
}

#: ``POST /segment``'s answer, for the OpenAPI schema.
SEGMENT_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "width": {"type": "integer", "description": "image width in pixels"},
        "height": {"type": "integer", "description": "image height in pixels"},
        "class_names": {"type": "array", "items": {"type": "string"},
                        "description": "the classes by label index; index 0 is background"},
        "scores": {"type": "array", "items": {"type": "number"},
                   "description": "image-level score (cosine similarity) of each class, indexed like class_names"},
        "colors": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}},
                   "description": "the [r, g, b] each class is drawn with in the overlay"},
        "found": {"type": "array", "description": "classes present in the label map, with their scores",
                  "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                             "score": {"type": "number"}}}},
        "protocol": {"type": "object", "description": "the protocol's name and every parameter value used"},
        "details": {"type": "object", "description": "protocol details (simseg: threshold and accepted classes)"},
        "labels_png_base64": {"type": "string", "format": "byte",
                              "description": "label map as a PNG whose pixel values are class indices"},
        "overlay_png_base64": {"type": "string", "format": "byte",
                               "description": "the image with the classes painted over it (same size)"},
        "checkpoint": {"type": "object", "description": "the checkpoint that produced the answer: path and sha256"},
        "versions": {"type": "object", "description": "the software versions (Python, simseg, torch, ...)"},
        "seconds": {"type": "number", "description": "processing time of the request"},
    },
}

_ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string", "description": "what went wrong"}}}


def api_page(schema: dict[str, Any]) -> str:
    """A plain HTML page describing the API from its OpenAPI schema (``/docs`` without Swagger UI installed)."""
    from html import escape

    rows = []
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            rows.append(f"<h2><code>{escape(method.upper())} {escape(path)}</code></h2>")
            if op.get("description") or op.get("summary"):
                rows.append(f"<p>{escape(op.get('description') or op.get('summary'))}</p>")
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                props = content.get("schema", {}).get("properties", {})
                required = set(content.get("schema", {}).get("required", []))
                rows.append(f"<p>Request body: <code>{escape(media)}</code></p><table><tr><th>field</th>"
                            "<th>type</th><th>description</th></tr>")
                for name, prop in props.items():
                    kind = prop.get("format") or prop.get("type", "")
                    if prop.get("enum"):
                        kind += ": " + " | ".join(map(str, prop["enum"]))
                    label = f"{name}{' (required)' if name in required else ''}"
                    rows.append(f"<tr><td><code>{escape(label)}</code></td><td>{escape(kind)}</td>"
                                f"<td>{escape(prop.get('description', ''))}</td></tr>")
                rows.append("</table>")
            for status, response in op.get("responses", {}).items():
                rows.append(f"<p>{escape(str(status))}: {escape(response.get('description', ''))}</p>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>simseg serve: API</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}td,th{border:1px solid #ccc;"
            "padding:.2em .6em;text-align:left}table{border-collapse:collapse}</style></head><body>"
            "<h1>simseg serve: API</h1><p>The machine-readable schema is <a href='/openapi.json'>/openapi.json</a>."
            " (Interactive docs need the swagger-ui-bundle package: pip install 'simseg[serve]'.)</p>"
            + "".join(rows) + "</body></html>")


def create_app(
    model: Any,
    limits: ServeLimits | None = None,
    default_classes: str = "",
    examples: Sequence[tuple[str, Image.Image]] = (),
    cache_dir: str | None = None,
    segmenter_factory: SegmenterFactory | None = None,
    title: str = "",
    protocol_params: dict[str, dict] | None = None,
    default_protocol: str = DEFAULT_PROTOCOL,
    checkpoint: dict[str, Any] | None = None,
) -> Any:
    """The FastAPI app: the page at ``/``, ``POST /segment``, ``GET /health``, ``GET /config``, ``GET /examples/N``,
    and the API's description at ``/docs`` and ``/openapi.json``.

    Args:
        model: a loaded model (eval mode), shared by all requests.
        limits: request limits (default :class:`ServeLimits`).
        default_classes: the class names the page starts with.
        examples: built-in example images (name, PIL image) selectable instead of an upload.
        cache_dir: class-embedding cache folder (None: ``Segmenter``'s default).
        segmenter_factory: see :class:`SegmentService`.
        title: what the page calls the model.
        protocol_params: per protocol, parameters for the segmenter (see :class:`SegmentService`).
        default_protocol: the protocol of a request that names none, and the page's initial choice.
        checkpoint: the checkpoint's fingerprint every answer states (see :class:`SegmentService`).

    Returns:
        A FastAPI app; its :class:`SegmentService` is ``app.state.service``.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()
    service = SegmentService(model, limits, default_classes=default_classes, examples=examples, cache_dir=cache_dir,
                             segmenter_factory=segmenter_factory, title=title, protocol_params=protocol_params,
                             default_protocol=default_protocol, checkpoint=checkpoint)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        yield
        service.close()

    from simseg import __version__

    # /docs is served below from local files: FastAPI's default page loads Swagger UI from a CDN
    app = FastAPI(title="simseg serve", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Segment an image with your own class names (text-supervised semantic segmentation).")
    # The schema uses only OpenAPI 3.0 constructs (tested); declared 3.0 so that the Swagger UI 4 of the
    # swagger-ui-bundle package renders it (it refuses 3.1 documents).
    app.openapi_version = "3.0.3"
    app.state.service = service
    app.add_middleware(_BodyLimit, limit=limits.max_upload_bytes + _FORM_SLACK_BYTES,
                       upload_limit=limits.max_upload_bytes)
    static = _static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")
    swagger = swagger_ui_dir()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": one_line(exc, limit=None)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": one_line(f"invalid request ({problems})", limit=None)}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        # a bug in one request must not take the server down; the message still reaches the page
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {one_line(exc)}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger is None:
            return HTMLResponse(api_page(app.openapi()))
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="simseg serve: API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/health", summary="server status", description="'ok', requests admitted now, the queue limit, "
                                                              "requests served.")
    async def health() -> dict:
        return {"status": "ok", "busy": service.busy, "queue": limits.queue, "served": service.served}

    @app.get("/config", summary="what the page starts with",
             description="The model's title, default class names and protocol, the protocols and template sets, "
                         "the built-in examples' names, whether the dense CRF is available, and the limits.")
    async def config() -> dict:
        return {
            "title": title,
            "default_classes": default_classes,
            "default_protocol": service.default_protocol,
            "protocols": list(PROTOCOLS),
            "templates": list(TEMPLATE_SETS),
            "examples": [name for name, _ in service.examples],
            "crf_available": importlib.util.find_spec("pydensecrf") is not None,
            "limits": asdict(limits),
        }

    error = {"content": {"application/json": {"schema": _ERROR_SCHEMA}}}

    # the index is read here, not by FastAPI: its validation error would be a 422 in another JSON shape (and a
    # declared parameter would list that 422 in the schema), so the schema's parameter is given by hand
    @app.get("/examples/{index}.png", summary="a built-in example image (PNG)", response_class=Response,
             responses={200: {"description": "the example image", "content": {"image/png": {
                 "schema": {"type": "string", "format": "binary"}}}},
                        404: {"description": "no such example", **error}},
             openapi_extra={"parameters": [{"name": "index", "in": "path", "required": True,
                                            "description": "the example's number (GET /config lists them)",
                                            "schema": {"type": "integer", "minimum": 0}}]})
    async def example(request: Request) -> Response:
        index = request.path_params["index"]
        number = int(index) if index.isdigit() else -1
        if not 0 <= number < len(service.example_png):
            raise RequestError(404, f"example {index!r}: no such example (there are {len(service.example_png)})")
        return Response(service.example_png[number], media_type="image/png")

    @app.post(
        "/segment",
        summary="segment an image with your class names",
        description="A multipart form: an image upload (or a built-in example's index) and the class names; the "
                    "answer holds the label map, an overlay, the colours, the classes found and every score.",
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": SEGMENT_FORM_SCHEMA}}}},
        responses={
            200: {"description": "the segmentation", "content": {
                "application/json": {"schema": SEGMENT_RESPONSE_SCHEMA}}},
            400: {"description": "bad input (image, class names, options)", **error},
            413: {"description": "upload or image over the limits", **error},
            503: {"description": "busy: too many requests waiting; retry after Retry-After seconds", **error},
            504: {"description": "the request took longer than the time limit", **error},
            500: {"description": "a bug met while serving this request (the server stays up)", **error},
        },
    )
    async def segment(request: Request) -> dict:
        try:
            form = await request.form(max_files=1, max_fields=16)
        except (StarletteHTTPException, _BodyLimit.TooLarge):
            raise
        except Exception as e:  # malformed multipart body, wrong content type
            raise RequestError(400, f"cannot read the form: {e}") from None
        try:
            return await _handle(form)
        finally:
            await form.close()

    async def _handle(form: Any) -> dict:
        names = service.parse_classes(_text(form, "classes"))
        protocol = (_text(form, "protocol") or service.default_protocol).strip()
        if protocol not in PROTOCOLS:
            raise RequestError(400, f"protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        templates = (_text(form, "templates") or "imagenet").strip()
        if templates not in TEMPLATE_SETS:
            raise RequestError(400, f"templates: {templates!r} is not one of {', '.join(TEMPLATE_SETS)}")
        crf = parse_bool(_text(form, "crf"), "crf", default=True) and protocol == "simseg"
        upload = form.get("image")
        example_text = _text(form, "example")
        image: bytes | int
        if isinstance(upload, str) and upload:  # e.g. curl -F image=photo.jpg, without the @ that uploads the file
            raise RequestError(400, f"image: expected an uploaded file, got the text {upload[:60]!r} (with curl: "
                                    "-F image=@FILE)")
        if upload is not None and not isinstance(upload, str):
            name = upload.filename or "upload"
            data = await upload.read(limits.max_upload_bytes + 1)
            service.check_image_header(data, name)
            image = data
        elif example_text:
            try:
                image = int(example_text)
            except ValueError:
                raise RequestError(400, f"example: expected an example number, got {example_text!r}") from None
            if not service.examples:
                raise RequestError(400, f"example: {image} is not a built-in example: this server has none (simseg "
                                        "serve --demo has them); upload an image instead")
            if not 0 <= image < len(service.examples):
                raise RequestError(400, f"example: {image} is not a built-in example (0..{len(service.examples) - 1})")
            name = service.examples[image][0]
        else:
            raise RequestError(400, "image: no image; upload one (form field 'image') or pick a built-in example")
        return await service.segment(image, name, names, protocol, crf, templates)

    return app


def _text(form: Any, key: str) -> str | None:
    value = form.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(400, f"{key}: expected a text field, got a file")
    return value


# ------------------------------------------------------------------------------------------------------- CLI
def demo_examples(n: int = 6, seed: int = 0, size: int = 128) -> list[tuple[str, Image.Image]]:
    """Built-in examples: ``n`` scenes of the synthetic world (the one ``simseg demo`` trains on)."""
    from simseg.synthetic import generate_scenes

    return [(f"synthetic {i}: {scene.caption}", Image.fromarray(np.asarray(scene.image)))
            for i, scene in enumerate(generate_scenes(n, seed, size=size))]


def _check_can_listen(host: str, port: int) -> None:
    """Fail with one line, before the server starts, on a port out of range, taken, or an unknown address."""
    import socket

    if not 1 <= port <= 65535:
        raise InputError(f"--port: must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``simseg serve``."""
    add_checkpoint_options(parser, required=False)
    parser.add_argument("--demo", action="store_true",
                        help="serve the model 'simseg demo' trained, with its colour classes and synthetic examples")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                            "only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--classes", default=None, help="class names the page starts with (comma-separated; "
                                                         "default: the checkpoint's recorded ones, if any)")
    parser.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                        help="protocol of requests that name none, and the page's initial choice (default: the "
                             "checkpoint's recorded one, else simseg)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload in MB (default 10)")
    parser.add_argument("--max-pixels", type=int, default=ServeLimits.max_pixels,
                        help=f"largest image in pixels (default {ServeLimits.max_pixels})")
    parser.add_argument("--max-classes", type=int, default=ServeLimits.max_classes,
                        help=f"most class names per request (default {ServeLimits.max_classes})")
    parser.add_argument("--timeout", type=float, default=ServeLimits.timeout_s,
                        help=f"seconds a request may take, waiting included (default {ServeLimits.timeout_s:g})")
    parser.add_argument("--queue", type=int, default=ServeLimits.queue,
                        help=f"requests admitted at once, one running (default {ServeLimits.queue}); more get 'busy'")
    add_cache_option(parser)
    add_device_option(parser, default="cpu")


def _limits(args: argparse.Namespace) -> ServeLimits:
    """The limits of the command line, each checked under its option's name and unit (ServeLimits names its fields,
    in bytes: ``--max-upload-mb -1`` would read as -1048576 bytes, and nan or inf MB could not become bytes at all)."""
    import math

    from simseg.app.options import check_at_least

    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb * 2**20 >= 1):
        raise InputError(f"--max-upload-mb: must be a positive, finite number of MB (at least one byte), got "
                         f"{args.max_upload_mb:g}")
    for option, value in (("--max-pixels", args.max_pixels), ("--max-classes", args.max_classes),
                          ("--queue", args.queue)):
        check_at_least(option, value, 1)
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise InputError(f"--timeout: must be a positive, finite number of seconds, got {args.timeout:g}")
    return ServeLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                       max_classes=args.max_classes, timeout_s=args.timeout, queue=args.queue)


def run(args: argparse.Namespace) -> int:
    """Run ``simseg serve`` until interrupted."""
    import simseg

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise InputError(f"simseg serve needs the 'serve' extra ({e.name} is missing): pip install 'simseg[serve]'"
                         ) from None
    # looked up, not imported: python-multipart's old module name warns on import, and Starlette imports the new one
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        raise InputError("simseg serve needs the 'serve' extra (python-multipart is missing): "
                         "pip install 'simseg[serve]'")
    checkpoint = args.checkpoint
    if checkpoint is None:
        if not args.demo:
            raise InputError("give --checkpoint PATH, or --demo to serve the model 'simseg demo' trained")
        checkpoint = str(DEMO_CHECKPOINT)
        if not DEMO_CHECKPOINT.exists():
            raise InputError(f"--demo: {DEMO_CHECKPOINT} not found; run 'simseg demo' first (in this folder), or "
                             "give --checkpoint")
    limits = _limits(args)
    from simseg.app.options import describe_recorded, resolve_protocol
    from simseg.app.report import provenance, short_sha
    from simseg.checkpoint import evaluation_defaults

    device = resolve_device(args.device)
    _check_can_listen(args.host, args.port)  # before the model loads: a taken port fails at once
    recorded = evaluation_defaults(checkpoint)
    examples: list[tuple[str, Image.Image]] = []
    model = simseg.load_model(checkpoint, tokenizer=args.tokenizer, device=device)
    if args.demo:
        examples = demo_examples()
        if not recorded:  # a demo checkpoint written before checkpoints recorded their evaluation defaults
            from simseg.app.demo import recorded_evaluation

            recorded = recorded_evaluation(model.image_size)
    default_classes = args.classes or recorded.get("classes", "")
    protocol, _, used = resolve_protocol(args.protocol, {}, recorded)
    # every protocol a request may choose runs with the checkpoint's recorded parameters (e.g. the demo's 64 px)
    protocol_params = {name: dict(params) for name, params in (recorded.get("protocols") or {}).items()}
    used["params"] = protocol_params.get(protocol, {})
    if not args.classes and recorded.get("classes"):
        used["classes"] = recorded["classes"]
    note = describe_recorded(checkpoint, used, "--protocol, --classes and the page's choices")
    if note:
        print(note, flush=True)
    if default_classes:
        from simseg.classnames import parse_class_list

        parse_class_list(default_classes)  # a typo in --classes fails here, not on the page
    fingerprint = provenance(checkpoint, model=model)["checkpoint"]
    app = create_app(model, limits, default_classes=default_classes, examples=examples, cache_dir=args.cache_dir,
                     title=checkpoint, protocol_params=protocol_params, default_protocol=protocol,
                     checkpoint=fingerprint)
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address is bracketed in a URL
    print(f"simseg serve: {checkpoint} (sha256 {short_sha(fingerprint)}) on http://{host}:{args.port}/; requests "
          f"that name no protocol get {protocol} (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
