"""Zero-shot image-text retrieval on Flickr30K / MSCOCO (``simseg eval-retrieval``).

The data is ``<data-root>/<name>/valid.parquet``: one row per caption (columns ``imbytes``, ``caption``,
``image_id``, ``id``), so an image repeats over its ~5 captions. A folder of images described by a CSV / JSON /
JSON-lines file (``image`` path relative to that file, ``caption``, optional ``image_id`` and ``id``) works the same.

The protocol of the paper: a SQUARE ``Resize((324, 324))`` (the image is squashed, aspect ratio not kept: the
original's ``resize`` transform), ``CenterCrop(288)``, ImageNet normalisation, LoDA-pooled (masked) L2-normalised
embeddings, images de-duplicated by ``image_id`` before encoding. ``resize_mode="short"`` resizes the short side to
324 instead (aspect ratio kept), an option; :func:`protocol_info` states which one produced a number. I2T R@K counts an
image when any of its captions is among its top K texts; T2I R@K counts a caption when its image is among its top K
images; RSUM is the sum of the six recalls, all in percent. Examples::

    simseg eval-retrieval --dataset f30k --data-root data --checkpoint simseg.vit-b.pth --out runs/f30k
    torchrun --nproc_per_node 8 -m simseg eval-retrieval --dataset coco --data-root data --checkpoint ckpt/

Under ``torchrun`` distinct image ``i`` and caption ``j`` are encoded by ranks ``i % world_size`` and
``j % world_size``; the embeddings are gathered so every rank computes the same metrics and rank 0 reports them.

Ties (similarities within 1e-6) are broken against the query: a true match ranks below every non-match with the
same score, so a degenerate model whose embeddings are all equal scores 0, never a lucky recall from the data order,
and the numbers do not depend on batch size or world size through float rounding.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simseg.errors import InputError, one_line
from simseg.images import load_image, to_rgb
from simseg.protocols import RetrievalParams

#: The paper's evaluation transform: resized to 324 x 324 (square), centre crop 288 (the ViT's input size).
DEFAULT_RESIZE_SIZE = RetrievalParams.resize_size
DEFAULT_CROP_SIZE = RetrievalParams.crop_size
DEFAULT_RESIZE_MODE = RetrievalParams.resize_mode

#: Columns of the original release's ``valid.parquet`` files.
PARQUET_COLUMNS = ("imbytes", "caption", "image_id", "id")

#: Similarities closer than this are ties (float rounding noise from batching must not decide a rank).
DEFAULT_TIE_TOLERANCE = 1e-6

#: The tie rule, as stated in reports.
TIE_RULE = (f"a true match ranks below every non-match whose score is within {DEFAULT_TIE_TOLERANCE:g} of it "
            "(ties count against the query)")


@dataclass(frozen=True)
class Pair:
    """One caption row: an image (encoded bytes, a file path, or a PIL image) and one of its captions.

    Attributes:
        caption_id: unique id of the caption (the parquet ``id`` column; the row number for CSV/JSON without ``id``).
        image_id: id shared by every caption of the same image.
        caption: the caption text (validated when the pairs are indexed, so readers may yield bad values).
        image: encoded image bytes, a path, or a PIL image; None when the row has no image data.
        where: where the row comes from, for messages (``file, row N``).
    """

    caption_id: Hashable
    image_id: Hashable
    caption: Any
    image: Any
    where: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Readers


def _open_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is in the "data" extra
        raise InputError(f"{path}: reading parquet files needs pyarrow (pip install 'simseg[data]')") from None
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet files
        raise InputError(f"{path}: not a readable parquet file ({one_line(e)})") from None


def parquet_num_rows(path: str | os.PathLike) -> int:
    """Number of rows of a parquet file, read from its footer (no data is decoded)."""
    return _open_parquet(Path(path)).metadata.num_rows


def read_parquet_pairs(path: str | os.PathLike, batch_rows: int = 1024) -> Iterator[Pair]:
    """Iterate the caption rows of a ``valid.parquet`` file, ``batch_rows`` rows decoded at a time.

    The file is never read whole: pyarrow decodes one record batch at a time, so a 25,000-caption MSCOCO file
    needs the memory of ``batch_rows`` rows.

    Raises:
        InputError: the file is missing, is not parquet, or lacks one of the columns ``imbytes``, ``caption``,
            ``image_id``, ``id`` (all missing ones are named).
    """
    path = Path(path)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    pf = _open_parquet(path)
    names = list(pf.schema_arrow.names)
    missing = [c for c in PARQUET_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(names) or 'none'})")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=list(PARQUET_COLUMNS)):
        cols = {name: batch.column(name).to_pylist() for name in PARQUET_COLUMNS}
        for imbytes, caption, image_id, caption_id in zip(*(cols[c] for c in PARQUET_COLUMNS), strict=True):
            yield Pair(caption_id, image_id, caption, imbytes, f"{path}, row {row}")
            row += 1


def _read_text(path: Path) -> str:
    """A caption file's text: UTF-8, a byte-order mark dropped; undecodable bytes are an error naming the line (a
    caption is never silently changed)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None


def _table_records(path: Path) -> tuple[list[str], Iterator[dict]]:
    """(column names, records) of a CSV, JSON (a list of objects) or JSON-lines file. Windows line ends and blank
    lines are accepted."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        raise InputError(f"{path}: unknown caption file type {suffix!r} (expected .parquet, .csv, .json, .jsonl)")
    text = _read_text(path)  # caption files are small next to their images: read whole
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # skips blank lines; takes \r\n inside quotes
        fields = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = fields
        return fields, iter(reader)
    try:
        if suffix == ".jsonl":
            records = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}: line {number}: invalid JSON ({e.msg})") from None
        else:
            records = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{path}: expected a list of objects with keys image, caption[, image_id, id]")
    fields = sorted({key for r in records for key in r})
    return fields, iter(records)


def read_table_pairs(path: str | os.PathLike) -> Iterator[Pair]:
    """Iterate the caption rows of a CSV, JSON or JSON-lines file describing a folder of images.

    Columns (keys): ``image`` (a path, relative to the file's folder unless absolute), ``caption``, and optionally
    ``image_id`` (default: the image path as written) and ``id`` (caption id; default: the row number, from 0).

    Raises:
        InputError: the file is missing or unreadable, or lacks ``image`` / ``caption`` (in its header, or in a
            JSON record, which is then named by its row number), or a record whose image, image_id or id is not a
            string (ids may be integers).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    fields, records = _table_records(path)
    missing = [c for c in ("image", "caption") if c not in fields]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(fields) or 'none'})")
    base = path.parent
    for row, record in enumerate(records):
        where = f"{path}, row {row}"
        absent = [c for c in ("image", "caption") if c not in record]
        if absent:
            raise InputError(f"{where}: missing {', '.join(absent)}")
        image = record["image"]
        if not isinstance(image, str):  # a JSON number, list, null: a malformed file, not one bad image
            raise InputError(f"{where}: image must be a path (a string), got {_shown(image)}")
        image_path = base / image if image else None
        image_id = record.get("image_id")
        if image_id is None or image_id == "":
            image_id = image
        caption_id = record.get("id")
        if caption_id is None or caption_id == "":
            caption_id = row
        for key, value in (("image_id", image_id), ("id", caption_id)):
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise InputError(f"{where}: {key} must be a string or an integer, got {_shown(value)}")
        yield Pair(caption_id, image_id, record["caption"], image_path, where)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def read_pairs(source: str | os.PathLike, batch_rows: int = 1024) -> Iterator[Pair]:
    """Iterate the caption rows of a parquet, CSV, JSON or JSON-lines file, or of ``<folder>/valid.parquet``."""
    path = Path(source)
    if path.is_dir():
        path = path / "valid.parquet"
    if path.suffix.lower() == ".parquet":
        return read_parquet_pairs(path, batch_rows=batch_rows)
    return read_table_pairs(path)


# ----------------------------------------------------------------------------------------------------------------
# Validation and de-duplication


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _image_digest(image: Any) -> bytes:
    """Content hash of an image reference; unreadable files hash to a marker naming the path."""
    if image is None:
        return _digest(b"")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _digest(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        try:
            return _digest(Path(image).read_bytes())
        except OSError:
            return _digest(f"unreadable:{Path(image).resolve()}".encode())
    # a PIL image (held-out splits built in memory)
    return _digest(f"{image.mode}{image.size}".encode() + image.tobytes())


class PairIndex:
    """Validates caption rows as they stream by and assigns each distinct ``image_id`` an index (first-seen order).

    Only hashes of the images are kept, never their bytes, so indexing a whole file needs little memory.
    """

    def __init__(self, source: str = "<pairs>"):
        self.source = source
        self.image_ids: list[Hashable] = []
        self.captions: list[str] = []
        self.caption_ids: list[Hashable] = []
        self.text_to_image: list[int] = []
        self._image_index: dict[Hashable, int] = {}
        self._image_ref: list[Any] = []  # first path of each image (paths are compared before hashing)
        self._image_digest: list[bytes | None] = []
        self._caption_where: dict[Hashable, str] = {}

    @property
    def num_rows(self) -> int:
        return len(self.captions)

    def _same_image(self, index: int, image: Any) -> bool:
        first = self._image_ref[index]
        if isinstance(first, Path) and isinstance(image, Path) and first == image:
            return True  # same file: no need to read it again for every caption
        if self._image_digest[index] is None:
            self._image_digest[index] = _image_digest(first)
        return _image_digest(image) == self._image_digest[index]

    def add(self, pair: Pair) -> int | None:
        """Validate one row and record its caption; return the image's index when the image is new, else None.

        Raises:
            InputError: missing ids, an empty or non-string caption (named by its caption id), a caption id seen
                before, or an ``image_id`` whose image differs from that of its earlier rows.
        """
        where = pair.where or self.source
        if pair.caption_id is None:
            raise InputError(f"{where}: missing caption id")
        if pair.image_id is None:
            raise InputError(f"{where}: caption id {pair.caption_id!r} has no image_id")
        if not isinstance(pair.caption, str):
            raise InputError(f"{where}: caption id {pair.caption_id!r}: caption is not a string "
                             f"(got {type(pair.caption).__name__})")
        if not pair.caption.strip():
            raise InputError(f"{where}: caption id {pair.caption_id!r}: empty caption")
        if pair.caption_id in self._caption_where:
            raise InputError(f"{where}: duplicate caption id {pair.caption_id!r} "
                             f"(first at {self._caption_where[pair.caption_id]})")
        self._caption_where[pair.caption_id] = where
        new = None
        index = self._image_index.get(pair.image_id)
        if index is None:
            index = new = len(self.image_ids)
            self._image_index[pair.image_id] = index
            self.image_ids.append(pair.image_id)
            if isinstance(pair.image, (str, os.PathLike)):
                self._image_ref.append(Path(pair.image))
                self._image_digest.append(None)  # hashed only if another row names a different file
            else:
                self._image_ref.append(None)
                self._image_digest.append(_image_digest(pair.image))
        elif not self._same_image(index, pair.image if not isinstance(pair.image, str) else Path(pair.image)):
            raise InputError(f"{where}: image_id {pair.image_id!r} carries different image data than its earlier rows "
                             f"(caption id {pair.caption_id!r})")
        self.captions.append(pair.caption)
        self.caption_ids.append(pair.caption_id)
        self.text_to_image.append(index)
        return new


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> dict[str, float]:
    """Image-to-text and text-to-image recall at K, in percent, computed chunk by chunk.

    Similarity is the dot product (cosine for L2-normalised embeddings). At most ``chunk_size`` x max(I, T)
    similarities exist at once, so a 5,000 x 25,000 evaluation never holds the full matrix.

    Definitions:
        - ``I2T_R@K``: percent of images for which at least one of their captions is among the K most similar texts.
        - ``T2I_R@K``: percent of captions whose image is among the K most similar images.
        - ``RSUM``: the sum of all the recalls.

    Ties: a true match ranks below every non-match with an equal score (ties count against the query). The rank of
    a query's best true match is the number of non-matches scoring at least as high; the query counts at K when
    that rank is below K. This makes the result independent of the order of the data. Scores closer than
    ``tie_tolerance`` count as equal: float rounding differs with batch composition (padding, number of ranks),
    and identical captions or images of different ids would otherwise rank by rounding noise; a tolerance of
    1e-6 on cosine similarities makes the numbers the same for any batch size and world size.

    Args:
        image_emb: (I, D) image embeddings.
        text_emb: (T, D) text embeddings.
        text_to_image: (T,) index of each caption's image in ``image_emb``.
        ks: the K values.
        chunk_size: queries scored at once.
        tie_tolerance: score differences up to this count as ties (0: exact comparison).

    Returns:
        ``{"I2T_R@1", ..., "T2I_R@1", ..., "RSUM"}`` as plain floats.

    Raises:
        ValueError: shapes disagree, an index is out of range, an image has no caption, or an embedding is not
            finite (NaN scores would never rank above the match and would inflate the recall).
    """
    if image_emb.dim() != 2 or text_emb.dim() != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"expected (I, D) and (T, D) embeddings, got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    device = image_emb.device
    targets = torch.as_tensor(text_to_image, dtype=torch.long).to(device)
    if targets.shape != (num_texts,):
        raise ValueError(f"text_to_image must have shape ({num_texts},), got {tuple(targets.shape)}")
    if num_images == 0 or num_texts == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    if int(targets.min()) < 0 or int(targets.max()) >= num_images:
        raise ValueError(f"text_to_image holds indices outside [0, {num_images})")
    if bool((torch.bincount(targets, minlength=num_images) == 0).any()):
        raise ValueError("every image needs at least one caption")
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    if chunk_size < 1 or not ks or min(ks) < 1:
        raise ValueError(f"chunk_size and every K must be >= 1, got chunk_size={chunk_size}, ks={tuple(ks)}")
    image_emb = image_emb.float()
    text_emb = text_emb.to(device=device, dtype=torch.float32)
    if not (bool(torch.isfinite(image_emb).all()) and bool(torch.isfinite(text_emb).all())):
        raise ValueError("embeddings contain NaN or infinite values")

    # I2T: per image, the number of other images' captions scoring >= its best caption.
    i2t_rank = torch.empty(num_images, dtype=torch.long, device=device)
    for start in range(0, num_images, chunk_size):
        stop = min(start + chunk_size, num_images)
        scores = image_emb[start:stop] @ text_emb.T  # (c, T)
        positive = targets.unsqueeze(0) == torch.arange(start, stop, device=device).unsqueeze(1)
        best = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        i2t_rank[start:stop] = ((scores >= best - tie_tolerance) & ~positive).sum(dim=1)
    # T2I: per caption, the number of other images scoring >= its own image.
    t2i_rank = torch.empty(num_texts, dtype=torch.long, device=device)
    for start in range(0, num_texts, chunk_size):
        stop = min(start + chunk_size, num_texts)
        scores = text_emb[start:stop] @ image_emb.T  # (c, I)
        own = scores.gather(1, targets[start:stop].unsqueeze(1))
        t2i_rank[start:stop] = (scores >= own - tie_tolerance).sum(dim=1) - 1  # minus the own image itself

    metrics: dict[str, float] = {}
    for name, rank in (("I2T", i2t_rank), ("T2I", t2i_rank)):
        for k in ks:
            metrics[f"{name}_R@{k}"] = 100.0 * int((rank < k).sum()) / rank.numel()
    metrics["RSUM"] = float(sum(metrics.values()))
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def eval_transform(
    mean: Sequence[float],
    std: Sequence[float],
    resize_size: int = DEFAULT_RESIZE_SIZE,
    crop_size: int = DEFAULT_CROP_SIZE,
    resize_mode: str = DEFAULT_RESIZE_MODE,
):
    """The paper's retrieval transform: ``Resize((resize_size, resize_size))`` (bilinear; ``resize_mode="short"``:
    the short side only), ``CenterCrop(crop_size)``, ``ToTensor``, ``Normalize``.

    Raises:
        InputError: the crop is larger than the resize, or an unknown ``resize_mode``.
    """
    from simseg.transforms import RESIZE_MODES
    from simseg.transforms import eval_transform as image_eval_transform

    if crop_size > resize_size:
        raise InputError(f"crop size {crop_size} is larger than the resize size {resize_size}")
    if resize_mode not in RESIZE_MODES:
        raise InputError(f"resize mode {resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
    return image_eval_transform(size=crop_size, mode="center_crop", resize=resize_size, mean=mean, std=std,
                                resize_mode=resize_mode)


def protocol_info(model: Any, resize_size: int = DEFAULT_RESIZE_SIZE, crop_size: int = DEFAULT_CROP_SIZE,
                  resize_mode: str = DEFAULT_RESIZE_MODE) -> dict[str, Any]:
    """The retrieval protocol that produced a number, as reports and training logs record it: every transform
    with its parameters (the resize mode among them), the input size, the pooling, padding, similarity, de-duplication
    and tie rule."""
    resize = ({"name": "resize", "size": [resize_size, resize_size], "mode": "square", "interpolation": "bilinear"}
              if resize_mode == "square" else
              {"name": "resize", "size": resize_size, "mode": "short", "interpolation": "bilinear"})
    return {
        "name": "retrieval",
        "resize_mode": resize_mode,
        "transforms": [
            resize,
            {"name": "center_crop", "size": crop_size},
            {"name": "to_tensor"},
            {"name": "normalize", "mean": list(model.mean), "std": list(model.std)},
        ],
        "input_size": crop_size,
        "pooling": {"method": getattr(model, "pooling", None), "variant": "masked (evaluation)",
                    "image_topk": getattr(model, "image_topk", None), "text_topk": getattr(model, "text_topk", None),
                    "normalize": "L2"},
        "text_padding": "longest",
        "similarity": "cosine",
        "dedup": "images de-duplicated by image_id before encoding",
        "ties": TIE_RULE,
    }


def _decode(image: Any, name: str):
    """A PIL RGB image from a row's image reference; InputError naming the image when it cannot be read."""
    if image is None:
        raise InputError(f"{name}: no image data")
    if isinstance(image, (bytes, bytearray, memoryview, str, os.PathLike)):
        return load_image(image, name=name)
    return to_rgb(image)  # a PIL image: converted as a file of that mode is (16-bit scaled, transparency on white)


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _gather_rows(indices: list[int], rows: list[torch.Tensor], total: int, dim: int) -> torch.Tensor:
    """Assemble per-rank (indices, embeddings) into one (total, dim) CPU tensor in global order."""
    from simseg.distributed import all_gather_object

    local = torch.cat(rows) if rows else torch.empty(0, dim)
    out = torch.zeros(total, dim)
    filled = torch.zeros(total, dtype=torch.bool)
    for shard_indices, shard in all_gather_object((indices, local)):
        if shard_indices:
            idx = torch.as_tensor(shard_indices, dtype=torch.long)
            out[idx] = shard.float()
            filled[idx] = True
    if not bool(filled.all()):  # a bug in the sharding, never the user's data
        raise RuntimeError(f"{int((~filled).sum())} of {total} embeddings missing after the gather")
    return out


def evaluate_retrieval(
    model: Any,
    source: str | os.PathLike | Iterable[Pair],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    skip_bad: bool = False,
    resize_size: int | None = None,
    crop_size: int | None = None,
    resize_mode: str = DEFAULT_RESIZE_MODE,
    chunk_size: int = 1024,
    ks: Sequence[int] = (1, 5, 10),
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    num_workers: int = 2,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Zero-shot image-text retrieval of a model on a caption file or on in-memory pairs.

    Rows stream through a :class:`PairIndex` (validation, de-duplication by ``image_id``); each distinct image is
    decoded and encoded once, as soon as it is first seen, by the rank that owns it; then the captions are encoded
    in batches, sharded the same way. The embeddings are gathered and every rank computes the same metrics.

    Args:
        model: a :class:`simseg.model.SimSegModel` (``tokenize``, ``encode_text``, ``encode_image``, ``mean``,
            ``std``); it is put in eval mode for the call, and each of its modules gets its own mode back afterwards.
        source: a ``.parquet`` / ``.csv`` / ``.json`` / ``.jsonl`` file, a folder holding ``valid.parquet``, or an
            iterable of :class:`Pair` (e.g. a held-out split during training).
        batch_size: images and captions encoded at once.
        device: where inputs are sent (default: the model's device).
        skip_bad: an unreadable image is always reported and counted, and its captions left out; when False the
            call raises :class:`InputError` after the whole source was read, listing the bad images.
        resize_size, crop_size: the transform (resize, centre crop). The crop is the network's input size; it
            defaults to the model's native size and may be any multiple of its patch size: the model runs at that size
            with its position embedding resampled per call (never rebuilt or changed: an optimizer may hold its
            parameters). The resize defaults to the paper's ratio, ``round(crop * 324 / 288)``.
        resize_mode: ``"square"`` (the paper's: resize to (resize, resize)) or ``"short"`` (short side).
        chunk_size: queries scored at once by :func:`retrieval_metrics`.
        ks: recall cut-offs.
        tie_tolerance: see :func:`retrieval_metrics`.
        num_workers: threads decoding images.
        rank, world_size: this process's shard (default: from torch.distributed, or 0 / 1).
        progress: show tqdm progress bars (on rank 0).

    Returns:
        The metrics of :func:`retrieval_metrics` plus ``num_rows``, ``num_images``, ``num_captions`` (evaluated),
        ``num_bad_images``, ``num_captions_dropped``, ``bad_images`` (``{"image_id", "error"}``), ``seconds``.

    Raises:
        InputError: malformed input (see :class:`PairIndex`), or unreadable images without ``skip_bad``.
    """
    from simseg.distributed import all_gather_object, get_rank, get_world_size
    from simseg.progress import progress_bar

    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    model_size = getattr(model, "image_size", None)
    crop_size = int(crop_size if crop_size is not None else model_size or DEFAULT_CROP_SIZE)
    patch = getattr(model, "patch_size", None)
    if patch is not None and crop_size % int(patch):
        raise ValueError(f"crop size {crop_size} is not a multiple of the model's patch size {patch}")
    if patch is None and model_size is not None and crop_size != model_size:
        raise ValueError(f"crop size {crop_size} differs from the model's input size {model_size} (a model without "
                         f"a patch size runs at image_size={model_size} only)")
    if resize_size is None:
        resize_size = round(crop_size * DEFAULT_RESIZE_SIZE / DEFAULT_CROP_SIZE)
    start_time = time.perf_counter()
    transform = eval_transform(model.mean, model.std, resize_size, crop_size, resize_mode)

    total_rows = None
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        pairs: Iterable[Pair] = read_pairs(source)
        path = Path(source) / "valid.parquet" if Path(source).is_dir() else Path(source)
        if not path.is_file():  # before a progress line is shown
            raise InputError(f"{path}: file not found")
        if path.suffix.lower() == ".parquet":
            total_rows = parquet_num_rows(path)
    else:
        name, pairs = "<pairs>", source
    index = PairIndex(name)
    show = progress and rank == 0

    # every module's own mode, restored as it was: model.train() would also switch modules the caller keeps in eval
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    if any(training for _, training in modes):
        model.eval()
    try:
        image_rows: list[int] = []
        image_embs: list[torch.Tensor] = []
        bad: list[dict] = []
        pending: list[tuple[int, Hashable, Any]] = []

        def load(item: tuple[int, Hashable, Any]) -> torch.Tensor | InputError:
            _, image_id, image = item
            try:
                return transform(_decode(image, f"{name}: image_id {image_id!r}"))
            except InputError as e:
                return e

        def flush(pool: ThreadPoolExecutor, bar: Any) -> None:
            loaded = list(pool.map(load, pending))
            keep = []
            for (i, image_id, _), result in zip(pending, loaded, strict=True):
                if isinstance(result, InputError):
                    bad.append({"index": i, "image_id": image_id, "error": str(result)})
                    bar.write(f"bad image {image_id!r}: {result}", file=sys.stderr)
                else:
                    keep.append((i, result))
            pending.clear()
            if keep:
                with torch.inference_mode():
                    emb = model.encode_image(torch.stack([t for _, t in keep]).to(device))
                image_rows.extend(i for i, _ in keep)
                image_embs.append(emb.float().cpu())

        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            bar = progress_bar(pairs, total=total_rows, desc=f"images {Path(name).parent.name or name}", unit="row",
                               disable=not show)
            for pair in bar:
                new = index.add(pair)
                if new is not None and new % world_size == rank:
                    pending.append((new, pair.image_id, pair.image))
                    if len(pending) >= batch_size:
                        flush(pool, bar)
            flush(pool, bar)
            bar.close()
        if not index.image_ids:
            raise InputError(f"{name}: no caption rows")

        bad = sorted((b for shard in all_gather_object(bad) for b in shard), key=lambda b: b["index"])
        bad_set = {b["index"] for b in bad}
        if bad and not skip_bad:
            listed = ", ".join(repr(b["image_id"]) for b in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise InputError(f"{name}: {len(bad)} unreadable image(s) (image_id {listed}); "
                             f"first: {bad[0]['error']}; pass --skip-bad to evaluate without them")

        # Images that could not be read leave the evaluation with their captions; the rest are renumbered densely.
        kept_images = [i for i in range(len(index.image_ids)) if i not in bad_set]
        if not kept_images:
            raise InputError(f"{name}: no readable image")
        new_index = {old: new for new, old in enumerate(kept_images)}
        text_rows = [t for t, i in enumerate(index.text_to_image) if i not in bad_set]
        text_to_image = torch.tensor([new_index[index.text_to_image[t]] for t in text_rows], dtype=torch.long)

        # Captions: this rank's share, sorted by length so each batch pads little.
        mine = sorted(range(rank, len(text_rows), world_size), key=lambda j: len(index.captions[text_rows[j]]))
        text_embs: list[torch.Tensor] = []
        bar = progress_bar(total=len(mine), desc="captions" + (" (rank 0's share)" if world_size > 1 else ""),
                           unit="cap", disable=not show)
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            tokens = model.tokenize([index.captions[text_rows[j]] for j in chunk], padding="longest")
            with torch.inference_mode():
                emb = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
            text_embs.append(emb.float().cpu())
            bar.update(len(chunk))
        bar.close()

        dim = image_embs[0].shape[1] if image_embs else (text_embs[0].shape[1] if text_embs else 0)
        dim = max(all_gather_object(dim))
        local_rows = [new_index[i] for i in image_rows]
        images = _gather_rows(local_rows, image_embs, len(kept_images), dim)
        texts = _gather_rows(mine, text_embs, len(text_rows), dim)
    finally:
        for module, training in modes:
            module.training = training

    metrics = retrieval_metrics(images.to(device), texts.to(device), text_to_image.to(device), ks=ks,
                                chunk_size=chunk_size, tie_tolerance=tie_tolerance)
    metrics.update(
        num_rows=index.num_rows,
        num_images=len(kept_images),
        num_captions=len(text_rows),
        num_bad_images=len(bad),
        num_captions_dropped=index.num_rows - len(text_rows),
        bad_images=[{"image_id": _jsonable(b["image_id"]), "error": b["error"]} for b in bad],
        seconds=time.perf_counter() - start_time,
    )
    return metrics


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
