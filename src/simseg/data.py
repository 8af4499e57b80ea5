"""Image-caption training data: three sources, mixing by size or weight, skip-and-count, and a resumable batch loader.

Sources yield ``(image, caption)`` pairs, the image an RGB ``PIL.Image`` (decoded only when the sample is used):

- :class:`CsvSource`: a folder of images and a CSV/TSV listing ``image`` and ``caption`` (the original's
  ``train_anno.csv`` layout). Map-style: ``len(src)``, ``src[i]``.
- :class:`ParquetSource`: parquet files whose rows hold encoded image bytes and a caption. Map-style, reading one
  row group at a time (a small LRU keeps the last few).
- :class:`WebDatasetSource`: tar shards as img2dataset writes them (``{key}.jpg`` + ``{key}.txt``, and a
  ``{shard}_stats.json`` beside each shard), from local paths, brace patterns or any URL webdataset's ``gopen`` opens.
  Streaming: each epoch deals the shards out to ranks and loader workers; read by a resumable stream.

Mixing, as the original: with no ``weight`` given, the sources are concatenated and each one's share of every batch is
proportional to its size (CC3M is ~21 % of CC3M + CC12M). For map-style sources this is exact: every pair once per
epoch, in the order of ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` over the
concatenation (``torch.randperm`` seeded with ``seed + epoch``, dealt ``rank::world_size``). A webdataset source's
size is the sum of its shards' ``successes`` in img2dataset's ``*_stats.json`` files, or the ``num_samples`` the user
gives; its share of the batch slots is exact to one sample, the samples themselves come from its stream. Explicit
per-source ``weight`` values override the sizes.

Bad samples are skipped and counted; the count is what was lost. A map-style sample that cannot be read (missing or
corrupt image, empty or non-UTF-8 caption) raises :class:`~simseg.errors.InputError` from ``src[i]``; the loader
replaces it with a seeded random draw and counts ONE lost sample (a replacement that is bad too is drawn again, not
counted again: nothing else was scheduled there). A streamed sample without its image or caption member, or with a
corrupt one, is one lost sample; a truncated shard loses the samples after the cut (its stats say how many; without
stats, the one cut sample); a shard that is missing is an error unless ``allow_missing_shards`` is set, then its
samples (from its stats) are lost each time its turn comes. Every batch reports its lost samples, in all and per
source.

Determinism, the contract resume relies on. For map-style sources batch ``b`` of rank ``r`` is a pure function of
``(seed, r, world_size, b)``: a bad sample is replaced by a draw seeded by its slot; the crop, AutoAugment and caption
edits of the sample at position ``p`` are seeded by ``(seed, r, b, p)``. ``start_batch=k`` therefore starts at batch
``k`` without touching the ``k`` earlier ones, whatever ``num_workers`` is.

Streams are exact too. Stream ``j`` of rank ``r`` (``j = b % num_workers`` for batch ``b``; one stream without
workers) reads, in epoch ``e``, the shards ``perm_e[r * W + j :: world_size * W]`` (``perm_e`` a permutation of the
shard list seeded by ``(seed, e)``; ``W`` the number of workers), each shard in its own order: its samples pass a
shuffle buffer seeded by ``(seed, e, r, j, shard)`` that is emptied at the end of the shard. The stream's position
is ``(epoch, shard, offset)``; every batch carries the positions after it, the trainer saves the last ones per rank
and stream with each checkpoint, and a resumed stream re-reads at most its current shard (replaying the buffer to
the offset, without decoding) and continues with exactly the samples an uninterrupted run would have seen. A position
that no longer fits the data (shards added or removed, another world size or worker count) is logged and replaced
by a fresh stream seeded by the resume step.

``shuffle=False`` (``data.shuffle=false``) reads everything in source order: map-style rows in their order, dealt
``rank::world_size``; shards in their listed order without a shuffle buffer.
"""

from __future__ import annotations

import bisect
import csv
import glob
import gzip
import hashlib
import io
import itertools
import json
import logging
import math
import os
import random
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from simseg.errors import ConfigError, InputError, one_line
from simseg.images import load_image

logger = logging.getLogger(__name__)

#: Sample extensions webdataset shards may use for the image (img2dataset writes ``jpg``).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

#: Skip messages logged at WARNING per loader (per worker); the rest go to DEBUG, the counts reach every batch.
_WARN_SKIPS = 20


@dataclass(frozen=True)
class Skipped:
    """Samples a streaming source could not use, and why (the loader counts ``count`` lost samples).

    ``count`` is 1 for one bad sample; a truncated or missing shard reports all the samples it lost in one marker.
    """

    reason: str
    count: int = 1


Sample = tuple[Image.Image, str]

def _check_caption(value: Any, where: str) -> str:
    """A caption as a non-empty string, or InputError naming the sample."""
    if value is None:
        raise InputError(f"{where}: no caption")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where}: caption is not valid UTF-8") from None
    else:
        value = str(value)
        try:
            # CSVs are read with errors="surrogateescape": an undecodable byte survives as a lone surrogate.
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{where}: caption is not valid UTF-8") from None
    value = value.strip()
    if not value:
        raise InputError(f"{where}: empty caption")
    return value


class _StringTable:
    """Many strings in one byte buffer plus offsets.

    A list of millions of Python strings is touched by reference counting in every forked data-loader worker, which
    copies the pages; two numpy arrays are not.
    """

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8", errors="surrogateescape") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._data[self._offsets[i] : self._offsets[i + 1]].tobytes().decode("utf-8", errors="surrogateescape")


class CsvSource:
    """A folder of images listed with their captions in a CSV or TSV file.

    Args:
        csv_path: the CSV (``,``) or TSV (``.tsv``/``.tab``: tab) file, with a header row.
        image_root: folder the image paths are relative to; defaults to the CSV's folder. Absolute paths are kept.
        image_column: header of the image path column.
        caption_column: header of the caption column.
        sep: field separator; by default chosen from the file extension.

    Raises:
        InputError: the file is missing, empty, malformed, or lacks one of the two columns.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        sep: str | None = None,
    ) -> None:
        path = Path(csv_path)
        if not path.is_file():
            raise InputError(f"{path}: CSV file not found")
        if sep is None:
            sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        self.path = path
        self.image_root = Path(image_root) if image_root is not None else path.parent
        images: list[str] = []
        captions: list[str] = []
        # utf-8-sig drops a BOM; surrogateescape keeps a row with a bad byte readable so only that caption is skipped.
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, delimiter=sep)
            try:
                header = [h.strip() for h in next(reader, [])]
                if not header:
                    raise InputError(f"{path}: empty file (expected a header with '{image_column}' and "
                                     f"'{caption_column}')")
                missing = [c for c in (image_column, caption_column) if c not in header]
                if missing:
                    raise InputError(f"{path}: no column {', '.join(repr(c) for c in missing)}; the file has columns "
                                     f"{header} (separator {sep!r})")
                ii, ci = header.index(image_column), header.index(caption_column)
                for row in reader:
                    if not any(cell.strip() for cell in row):
                        continue  # a blank line (or one of spaces only): no sample, so not a bad one
                    images.append(row[ii] if ii < len(row) else "")
                    captions.append(row[ci] if ci < len(row) else "")
            except csv.Error as e:
                raise InputError(f"{path}: malformed CSV at line {reader.line_num} ({e})") from None
        self._images = _StringTable(images)
        self._captions = _StringTable(captions)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> Sample:
        """The i-th (image, caption); InputError for a missing/corrupt image or a bad caption."""
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: index {i} out of range for {len(self)} rows")
        rel = self._images[i]
        where = f"{self.path} row {i + 1}"
        caption = _check_caption(self._captions[i], where)
        if not rel.strip():
            raise InputError(f"{where}: empty image path")
        return load_image(self.image_root / rel), caption

    def __repr__(self) -> str:
        return f"CsvSource({str(self.path)!r}, {len(self)} rows)"


def _expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike], suffix: str) -> list[Path]:
    """Files from paths, glob patterns and folders (all ``*suffix`` files inside), in a stable order."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text))
            if not matches:
                raise InputError(f"{text}: no file matches this pattern")
            out += [Path(m) for m in matches]
        elif Path(text).is_dir():
            found = sorted(Path(text).glob(f"*{suffix}"))
            if not found:
                raise InputError(f"{text}: folder holds no {suffix} file")
            out += found
        elif Path(text).is_file():
            out.append(Path(text))
        else:
            raise InputError(f"{text}: file not found")
    if not out:
        raise InputError(f"no {suffix} file given")
    return out


class ParquetSource:
    """Parquet files whose rows hold an encoded image and its caption (e.g. the retrieval ``valid.parquet``).

    Rows are addressed globally across files. Reading row ``i`` reads its whole row group (the unit parquet
    compresses) and keeps the last ``cache_row_groups`` of them, so nothing close to the whole file is in memory.
    Random access over many row groups re-reads them: for data sets far larger than memory prefer webdataset.

    Args:
        paths: parquet files, glob patterns or folders of ``*.parquet``.
        image_column: column of encoded image bytes (or a Hugging Face ``{"bytes", "path"}`` image struct).
        caption_column: column of captions (string, or binary holding UTF-8).
        cache_row_groups: how many decoded row groups to keep.

    Raises:
        InputError: a file is missing or not parquet, or lacks one of the two columns.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        image_column: str = "imbytes",
        caption_column: str = "caption",
        cache_row_groups: int = 4,
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.files = _expand_paths(paths, ".parquet")
        self.image_column = image_column
        self.caption_column = caption_column
        self.cache_row_groups = max(1, cache_row_groups)
        self._groups: list[tuple[int, int]] = []  # (file index, row group index) of each non-empty row group
        offsets = [0]
        for fi, f in enumerate(self.files):
            try:
                pf = pq.ParquetFile(f)
            except (OSError, pa.ArrowException) as e:
                raise InputError(f"{f}: not a readable parquet file ({one_line(e)})") from None
            names = pf.schema_arrow.names
            missing = [c for c in (image_column, caption_column) if c not in names]
            if missing:
                raise InputError(f"{f}: no column {', '.join(repr(c) for c in missing)}; the file has columns {names} "
                                 "(the source's image_column / caption_column name others)")
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if n:
                    self._groups.append((fi, g))
                    offsets.append(offsets[-1] + n)
        self._offsets = offsets
        self._handles: dict[int, Any] = {}
        self._cache: OrderedDict[int, Any] = OrderedDict()

    def __getstate__(self) -> dict:
        # Open files and cached tables stay in the process that made them (data-loader workers reopen lazily).
        state = self.__dict__.copy()
        state["_handles"], state["_cache"] = {}, OrderedDict()
        return state

    def __len__(self) -> int:
        return self._offsets[-1]

    def _row_group(self, gi: int) -> Any:
        table = self._cache.get(gi)
        if table is not None:
            self._cache.move_to_end(gi)
            return table
        import pyarrow as pa
        import pyarrow.parquet as pq

        fi, g = self._groups[gi]
        try:
            if fi not in self._handles:
                self._handles[fi] = pq.ParquetFile(self.files[fi])
            table = self._handles[fi].read_row_group(g, columns=[self.image_column, self.caption_column])
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{self.files[fi]}: row group {g} unreadable ({one_line(e)})") from None
        self._cache[gi] = table
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return table

    def __getitem__(self, i: int) -> Sample:
        """The i-th (image, caption); InputError for a corrupt image or a bad caption."""
        if not 0 <= i < len(self):
            raise IndexError(f"parquet source: index {i} out of range for {len(self)} rows")
        gi = bisect.bisect_right(self._offsets, i) - 1
        j = i - self._offsets[gi]
        table = self._row_group(gi)
        fi, g = self._groups[gi]
        where = f"{self.files[fi]} row group {g} row {j}"
        caption = _check_caption(table.column(self.caption_column)[j].as_py(), where)
        data = table.column(self.image_column)[j].as_py()
        if isinstance(data, dict):  # Hugging Face datasets store images as a {"bytes", "path"} struct
            data = data.get("bytes")
        if data is None:
            raise InputError(f"{where}: no image")
        if not isinstance(data, (bytes, bytearray)):
            raise InputError(f"{where}: column '{self.image_column}' holds {type(data).__name__}, not image bytes")
        return load_image(data, name=where), caption

    def __repr__(self) -> str:
        return f"ParquetSource({len(self.files)} files, {len(self)} rows)"


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy's SeedSequence hashing: nearby keys give unrelated streams)."""
    # Each key as exactly two 32-bit words, after the key count, so different key tuples never share an entropy list.
    words = [len(keys)] + [w for k in keys for w in (int(k) % (1 << 63) & 0xFFFFFFFF, int(k) % (1 << 63) >> 32)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


# Distinct purposes get distinct seeds even for equal keys.
_EPOCH, _SOURCE_PERM, _REPLACE, _SAMPLE, _STREAM_CHOICE, _STREAM, _SHARD_ORDER, _SHARD_BUFFER, _RESAMPLE, _FALLBACK = \
    range(1, 11)


# ------------------------------------------------------------------------------------------------ tar shards
class _TarError(Exception):
    """A shard that ends before its end-of-archive marker, or holds a header that is not tar."""


def _open_shard(url: str) -> BinaryIO:
    """A binary stream of a shard: a local file, or anything webdataset's ``gopen`` opens (http, pipe:, ...)."""
    if _is_local(url):
        return open(url, "rb")
    from webdataset import gopen

    return gopen(url, "rb")


def _pax_fields(data: bytes) -> dict[str, str]:
    """The ``key=value`` records of a pax extended header (``"<len> <key>=<value>\\n"`` each)."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        key, _, value = data[space + 1: pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream, read sequentially.

    Our own reader rather than ``tarfile``'s stream mode, because that one ends silently when a shard is cut inside
    or right after a header: here a shard that stops before its end-of-archive marker raises :class:`_TarError`,
    so a truncation is always seen (and its lost samples counted).
    """
    pending_name: str | None = None
    offset = 0
    while True:
        header = stream.read(tarfile.BLOCKSIZE)
        if not header:
            raise _TarError(f"cut short at byte {offset} (no end-of-archive marker)")
        if len(header) < tarfile.BLOCKSIZE:
            raise _TarError(f"cut inside a header at byte {offset}")
        if header.count(0) == tarfile.BLOCKSIZE:
            return  # end-of-archive marker
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise _TarError(f"not a tar header at byte {offset} ({e})") from None
        offset += tarfile.BLOCKSIZE
        padded = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        data = stream.read(padded)
        if len(data) < info.size:
            raise _TarError(f"cut inside member {info.name!r} at byte {offset + len(data)}")
        offset += len(data)
        data = data[: info.size]
        if info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            pending_name = _pax_fields(data).get("path", pending_name)
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            pending_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            yield (pending_name or info.name), data
            pending_name = None
        else:  # folders, links, global pax headers: no sample data
            pending_name = None


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the file name, the rest the extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _iter_shard(url: str, status: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The samples of one shard, as raw ``{"__key__", "__url__", ext: bytes}`` dicts, streamed. When the shard ends,
    ``status["count"]`` holds how many were yielded and ``status["error"]`` what ended it early (None when it was
    complete). A sample whose members were being read when the shard broke off is dropped (one of the lost ones).

    Raises:
        FileNotFoundError: a local shard that does not exist.
    """
    status.update(count=0, error=None)
    current: dict[str, Any] | None = None
    try:
        with _open_shard(url) as raw:
            buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
            stream: BinaryIO = gzip.GzipFile(fileobj=buffered) if buffered.peek(2)[:2] == b"\x1f\x8b" else buffered
            for name, data in _tar_members(stream):
                key, ext = _split_name(name)
                if key.split("/")[-1].startswith(".") or not ext:
                    continue  # hidden or extension-less members are not sample data
                if current is None or current["__key__"] != key:
                    if current is not None:
                        status["count"] += 1
                        yield current
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
        if current is not None:
            status["count"] += 1
            yield current
    except FileNotFoundError:
        if _is_local(url):
            raise
        status["error"] = "not found"
    except (_TarError, OSError, EOFError, ValueError) as e:  # gzip.BadGzipFile is an OSError
        status["error"] = f"truncated ({e})" if isinstance(e, _TarError) else f"unreadable ({type(e).__name__}: {e})"


def _stats_successes(url: str) -> int | None:
    """img2dataset's count of written samples of a local shard (``<shard>_stats.json`` beside it), or None."""
    if not _is_local(url):
        return None
    path = Path(url)
    stem = path.name.split(".")[0]
    stats = path.with_name(f"{stem}_stats.json")
    try:
        value = json.loads(stats.read_text(encoding="utf-8")).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _decode_tar_sample(sample: Mapping[str, Any]) -> Sample | Skipped:
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    try:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise InputError(f"{where}: no image member ({'/'.join(IMAGE_EXTENSIONS)})")
        if "txt" not in sample:
            raise InputError(f"{where}: no caption member (.txt)")
        caption = _check_caption(sample.get("txt"), f"{where}.txt")
        return load_image(sample[ext], name=f"{where}.{ext}"), caption
    except InputError as e:
        return Skipped(str(e))


class WebDatasetSource:
    """Tar shards of ``{key}.jpg`` + ``{key}.txt`` samples (img2dataset's output), streamed.

    Args:
        urls: a URL string (brace patterns such as ``shards/{00000..00331}.tar`` and ``::``-separated lists are
            expanded), or a list of them. Local paths, ``pipe:`` commands and any scheme webdataset's ``gopen``
            opens (http, https, gs, s3 via pipe, ...).
        shuffle_buffer: samples held by the per-shard shuffle buffer (1 or 0: a shard is read in its order). The
            buffer holds undecoded bytes and is emptied at the end of each shard, so a stream's position is a shard
            and an offset (see the module docstring).
        resampled: draw shards at random with replacement (open_clip's option for multi-epoch streaming; every rank
            and stream draws with its own seed). If False (the default, as the original's every-pair-once epochs),
            each epoch deals a seeded permutation of the shards out to ranks and streams.
        seed: mixed into every stream's seed, to vary shard order between experiments.
        num_samples: the source's size, for mixing by size when its shards have no img2dataset ``*_stats.json``
            (which give it otherwise).
        allow_missing_shards: a listed shard that is not there is an error unless this is True; then its samples
            (known from its stats) are counted as lost each time its turn comes.

    Raises:
        InputError: no URL given, none of the local shards exists, or one is missing without
            ``allow_missing_shards``.
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        seed: int = 0,
        num_samples: int | None = None,
        allow_missing_shards: bool = False,
    ) -> None:
        from webdataset.shardlists import expand_urls

        items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
        shards = [s for item in items for s in expand_urls(str(item))]
        if not shards:
            raise InputError("webdataset: no shard URL given")
        missing = [s for s in shards if _is_local(s) and not Path(s).is_file()]
        if missing and len(missing) == len(shards):
            raise InputError(f"{missing[0]}: shard not found (none of the {len(shards)} shards exists)")
        if missing and not allow_missing_shards:
            raise InputError(f"{missing[0]}: shard not found ({len(missing)} of {len(shards)} shards missing); set "
                             "allow_missing_shards: true on this source to count their samples as lost and go on")
        if missing:
            logger.warning("webdataset: %d of %d shards not found (first: %s); their samples are counted as lost",
                           len(missing), len(shards), missing[0])
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise InputError(f"webdataset {shards[0]}: num_samples must be a positive integer, got {num_samples!r}")
        self.shards = shards
        self.missing = frozenset(missing)
        self.shuffle_buffer = int(shuffle_buffer)
        self.resampled = bool(resampled)
        self.seed = int(seed)
        self.allow_missing_shards = bool(allow_missing_shards)
        self.shard_sizes: list[int | None] = [_stats_successes(s) for s in shards]
        known = all(n is not None for n in self.shard_sizes)
        #: The source's size: ``num_samples`` when given, else the sum of the shards' stats (None: unknown).
        self.num_samples: int | None = num_samples if num_samples is not None else (
            sum(self.shard_sizes) if known else None)  # type: ignore[arg-type]
        self.fingerprint = hashlib.sha256("\n".join(shards).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"WebDatasetSource({self.shards[0]!r}, {len(self.shards)} shards)"

    def shard_order(self, epoch: int, rank: int = 0, world_size: int = 1, stream: int = 0, num_streams: int = 1,
                    seed: int = 0, shuffle: bool = True) -> list[int]:
        """Indices of the shards stream ``stream`` of rank ``rank`` reads in ``epoch``, in order.

        Raises:
            InputError: fewer shards than ranks x streams (without ``resampled``).
        """
        n, slots = len(self.shards), world_size * num_streams
        me = rank * num_streams + stream
        if self.resampled:
            rng = random.Random(_derive_seed(self.seed, seed, _RESAMPLE, epoch, rank, stream))
            return [rng.randrange(n) for _ in range(max(1, -(-n // slots)))]
        order = list(range(n))
        if shuffle:
            random.Random(_derive_seed(self.seed, seed, _SHARD_ORDER, epoch)).shuffle(order)
        mine = order[me::slots]
        if not mine:
            raise InputError(f"webdataset: {n} shards cannot be dealt to {world_size} rank(s) x {num_streams} "
                             "loader worker(s); add shards, use fewer workers, or set resampled: true")
        return mine

    def position_problem(self, position: Mapping[str, Any], rank: int, world_size: int, stream: int,
                         num_streams: int) -> str | None:
        """Why a saved stream position cannot be continued here (None when it can)."""
        if position.get("fingerprint") != self.fingerprint:
            return "the shard list differs from the one the position was saved with (shards added or removed)"
        saved = (position.get("rank"), position.get("world_size"), position.get("stream"), position.get("num_streams"))
        if saved != (rank, world_size, stream, num_streams):
            return (f"saved for rank {saved[0]} of {saved[1]}, stream {saved[2]} of {saved[3]}; now rank {rank} of "
                    f"{world_size}, stream {stream} of {num_streams}")
        return None

    def samples(self, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1, seed: int = 0,
                start: Mapping[str, Any] | None = None, shuffle: bool = True) -> "ShardStream":
        """The endless stream of (image, caption) pairs and :class:`Skipped` markers of one rank and stream.

        Args:
            rank: this process's rank; world_size: number of ranks.
            worker: the stream's index among the rank's ``num_workers`` streams (one per loader worker).
            seed: the stream seed (the loader derives it from its seed and the source's index).
            start: a position saved from a stream of the same arguments (``stream.position``): continue there.
            shuffle: False reads the shards in their listed order and each shard in its order.

        Raises:
            InputError: ``start`` does not fit this source (see :meth:`position_problem`).
        """
        if start is not None:
            problem = self.position_problem(start, rank, world_size, worker, num_workers)
            if problem:
                raise InputError(f"{self!r}: cannot continue the saved stream position: {problem}")
        return ShardStream(self, rank, world_size, worker, max(1, num_workers), seed, start, shuffle)

    def __iter__(self) -> Iterator[Sample]:
        """Valid (image, caption) pairs of rank 0, stream 0, skipping bad ones (the loader uses :meth:`samples`)."""
        for item in self.samples():
            if not isinstance(item, Skipped):
                yield item


class ShardStream:
    """An iterator over one stream of a :class:`WebDatasetSource`, yielding samples and :class:`Skipped` markers.

    ``position`` is where the next item comes from: ``{"epoch", "shard", "offset", ...}``, a plain dict (JSON), so a
    checkpoint can store it and :meth:`WebDatasetSource.samples` continue from it.
    """

    def __init__(self, source: WebDatasetSource, rank: int, world_size: int, stream: int, num_streams: int, seed: int,
                 start: Mapping[str, Any] | None, shuffle: bool):
        self.source = source
        self.rank, self.world_size, self.stream, self.num_streams = rank, world_size, stream, num_streams
        self.seed, self.shuffle = seed, shuffle
        self.epoch = int(start["epoch"]) if start else 0
        self.shard = int(start["shard"]) if start else 0
        self.offset = int(start["offset"]) if start else 0
        self._order: list[int] | None = None
        self._items: Iterator[Any] | None = None
        self._dead = 0  # shards in a row that gave no sample at all
        self._last_error, self._last_url = "none", ""

    @property
    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard": self.shard, "offset": self.offset, "fingerprint": self.source.fingerprint,
                "rank": self.rank, "world_size": self.world_size, "stream": self.stream,
                "num_streams": self.num_streams}

    def __iter__(self) -> "ShardStream":
        return self

    def _shard_items(self, index: int) -> Iterator[Any]:
        """The items of one shard in this stream's order: raw samples through the seeded buffer, then one Skipped
        marker for what the shard lost (cut short, unreadable or missing)."""
        url = self.source.shards[index]
        expected = self.source.shard_sizes[index]
        status: dict[str, Any] = {"count": 0, "error": None}
        raw: Iterator[dict[str, Any]] = iter(()) if url in self.source.missing else _iter_shard(url, status)
        if url in self.source.missing:
            status["error"] = "not found"
        rng = random.Random(_derive_seed(self.source.seed, self.seed, _SHARD_BUFFER, self.epoch, self.rank,
                                         self.stream, self.shard))
        try:
            yield from _buffer_shuffle(raw, self.source.shuffle_buffer if self.shuffle else 1, rng)
        except FileNotFoundError:
            if not self.source.allow_missing_shards:
                raise InputError(f"{url}: shard not found (removed while training?); set allow_missing_shards: "
                                 "true on this source to count its samples as lost and go on") from None
            status["error"] = "not found"
        self._last_url = url
        if status["count"]:
            self._dead = 0
        else:
            self._dead += 1
            self._last_error = status["error"] or "no sample in the shard"
        error, got = status["error"], status["count"]
        if error is not None:
            lost = max(expected - got, 0) if expected is not None else (0 if error == "not found" else 1)
            known = "from its stats" if expected is not None else "its size is unknown without img2dataset stats"
            yield Skipped(f"webdataset {url}: {error}; {lost} sample(s) lost ({known})", lost)
        elif expected is not None and got < expected:
            yield Skipped(f"webdataset {url}: {got} samples where its stats say {expected}", expected - got)

    def __next__(self) -> Sample | Skipped:
        limit = 2 * len(self.source.shards) + 10
        while True:
            if self._items is None:
                if self._order is None:
                    self._order = self.source.shard_order(self.epoch, self.rank, self.world_size, self.stream,
                                                          self.num_streams, self.seed, self.shuffle)
                if self.shard >= len(self._order):
                    self.epoch, self.shard, self.offset, self._order = self.epoch + 1, 0, 0, None
                    continue
                # A guard against spinning forever on unreadable shards (wrong URL, network down).
                if self._dead >= limit:
                    raise InputError(f"webdataset: {limit} shards in a row gave no sample (last: {self._last_url}); "
                                     f"last error: {self._last_error}")
                self._items = self._shard_items(self._order[self.shard])
                # resuming inside a shard: replay its order up to the offset, without decoding anything
                for _ in range(self.offset):
                    if next(self._items, None) is None:
                        break
            item = next(self._items, None)
            if item is None:
                self._items, self.shard, self.offset = None, self.shard + 1, 0
                continue
            self.offset += 1
            return item if isinstance(item, Skipped) else _decode_tar_sample(item)


def _buffer_shuffle(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Items through a shuffle buffer of ``size`` (webdataset's scheme: fill, then emit a random one and put the
    next in its place), emptied at the end in random order. ``size`` <= 1: the items in order."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(len(buffer))
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


# ------------------------------------------------------------------------------------------------ config entries
def _plain_spec(spec: Any) -> dict[str, Any]:
    """A config entry (dict or OmegaConf node) as a plain dict with plain lists inside."""
    if type(spec).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        spec = OmegaConf.to_container(spec, resolve=True)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"data source: expected a mapping with a 'type', got {type(spec).__name__}")
    return dict(spec)


def source_from_spec(spec: Mapping[str, Any]) -> Any:
    """Build a source from a config entry.

    Examples: ``{"type": "csv", "path": "cc3m/train_anno.csv", "image_root": "cc3m/images"}``,
    ``{"type": "parquet", "paths": ["a.parquet"], "weight": 2.0}``,
    ``{"type": "webdataset", "urls": "cc12m/{00000..01242}.tar", "num_samples": 10000000}``.
    ``weight`` is accepted here and read by the caller (see :func:`build_sources`).

    Raises:
        ConfigError: the type or a key is unknown, or a required key is missing.
    """
    spec = _plain_spec(spec)
    kind = spec.get("type")
    if kind is None:
        raise ConfigError(f"data source {spec}: missing 'type' (one of {sorted(_SPEC_KEYS)})")
    if kind not in _SPEC_KEYS:
        raise ConfigError(f"data source: unknown type {kind!r} (one of {sorted(_SPEC_KEYS)})")
    cls, required, optional = _SPEC_KEYS[kind]
    unknown = sorted(set(spec) - {"type", "weight"} - required - optional)
    if unknown:
        raise ConfigError(f"data source of type {kind!r}: unknown key {unknown[0]!r} "
                          f"(allowed: {sorted(required | optional | {'type', 'weight'})})")
    absent = sorted(required - set(spec))
    if absent:
        raise ConfigError(f"data source of type {kind!r}: missing key {absent[0]!r}")
    kwargs = {k: v for k, v in spec.items() if k not in ("type", "weight")}
    for key in ("paths", "urls"):  # the other keys' value types are checked with the config (simseg.schema)
        if key in kwargs:
            items = kwargs[key] if isinstance(kwargs[key], (list, tuple)) else [kwargs[key]]
            if not items or not all(isinstance(v, os.PathLike) or (isinstance(v, str) and v.strip()) for v in items):
                raise ConfigError(f"data source of type {kind!r}: {key} {kwargs[key]!r} is not allowed (must be a "
                                  f"{key[:-1].replace('url', 'URL')} or a list of them)")
    sep = kwargs.get("sep")
    if sep is not None and not (isinstance(sep, str) and len(sep) == 1):
        raise ConfigError(f"data source of type {kind!r}: sep {sep!r} is not allowed (must be one character, e.g. "
                          "',' or '\\t')")
    if "path" in kwargs:
        kwargs["csv_path"] = kwargs.pop("path")
    if kind == "tsv":  # tab-separated whatever the file is called (csv: the separator of the file's extension)
        kwargs.setdefault("sep", "\t")
    return cls(**kwargs)


_SPEC_KEYS: dict[str, tuple[type, set[str], set[str]]] = {
    "csv": (CsvSource, {"path"}, {"image_root", "image_column", "caption_column", "sep"}),
    "tsv": (CsvSource, {"path"}, {"image_root", "image_column", "caption_column", "sep"}),
    "parquet": (ParquetSource, {"paths"}, {"image_column", "caption_column", "cache_row_groups"}),
    "webdataset": (WebDatasetSource, {"urls"},
                   {"shuffle_buffer", "resampled", "seed", "num_samples", "allow_missing_shards"}),
}


def build_sources(specs: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[float] | None]:
    """Sources and their weights from a list of config entries; weights None when no entry sets one (the loader then
    mixes by size, as the original).

    Raises:
        ConfigError: as :func:`source_from_spec`, or a weight that is not a positive number.
    """
    if not specs:
        raise ConfigError("data.train: no data source given (a list of {type: csv|parquet|webdataset, ...})")
    specs = [_plain_spec(s) for s in specs]
    sources = [source_from_spec(s) for s in specs]
    if all(s.get("weight") is None for s in specs):
        return sources, None
    weights = []
    for s in specs:
        w = s.get("weight", 1.0)
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not w > 0:
            raise ConfigError(f"data source {s.get('type')!r}: weight must be a positive number, got {w!r}")
        weights.append(float(w))
    return sources, weights


def _is_streaming(source: Any) -> bool:
    return hasattr(source, "samples") and not hasattr(source, "__len__")


def source_size(source: Any) -> int | None:
    """A source's number of samples: ``len`` of a map-style source, ``num_samples`` of a stream (None: unknown)."""
    if _is_streaming(source):
        n = getattr(source, "num_samples", None)
        return int(n) if n is not None else None
    return len(source)


# ------------------------------------------------------------------------------------------------ the loader
class TrainBatches(torch.utils.data.IterableDataset):
    """The endless, seeded stream of training batches of one rank (see the module docstring for the contract).

    Use :func:`build_train_loader`; :meth:`batch` builds any batch directly (map-style sources only, or with the
    caller's streams).
    """

    def __init__(
        self,
        sources: Sequence[Any],
        weights: Sequence[float] | None,
        batch_size: int,
        transform: Callable[[Image.Image], torch.Tensor],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_batch: int = 0,
        caption_fn: Callable[[str, random.Random], str] | None = None,
        max_skips: int = 1000,
        shuffle: bool = True,
        stream_positions: Mapping[int, Mapping[int, Mapping[str, Any]]] | None = None,
    ) -> None:
        super().__init__()
        if not sources:
            raise InputError("training data: no source given")
        if weights is not None and len(weights) != len(sources):
            raise InputError(f"training data: {len(weights)} weights for {len(sources)} sources")
        if weights is not None and any(not w > 0 for w in weights):
            raise InputError(f"training data: weights must be positive, got {list(weights)}")
        if batch_size < 1 or not 0 <= rank < world_size or start_batch < 0:
            raise InputError(f"training data: bad batch_size={batch_size}, rank={rank}, world_size={world_size} "
                             f"or start_batch={start_batch}")
        self.sources = list(sources)
        self.batch_size = batch_size
        self.transform = transform
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.start_batch = start_batch
        self.caption_fn = caption_fn
        self.max_skips = max_skips
        self.shuffle = bool(shuffle)
        self.stream_positions = {int(k): {int(i): dict(p) for i, p in v.items()}
                                 for k, v in (stream_positions or {}).items()}
        self.map_ids = [i for i, s in enumerate(self.sources) if not _is_streaming(s)]
        self.stream_ids = [i for i, s in enumerate(self.sources) if _is_streaming(s)]
        lengths = {i: len(self.sources[i]) for i in self.map_ids}
        for i, n in lengths.items():
            if n == 0:
                raise InputError(f"training data: source {self.sources[i]!r} is empty")
        if weights is None:
            weights = self._size_weights()
        w = [float(x) for x in weights]
        self.weights = w
        total = sum(w)
        self.shares = [x / total for x in w]
        self.map_fraction = sum(w[i] for i in self.map_ids) / total
        stream_w = [w[i] for i in self.stream_ids]
        # Conditional shares for the nested split of the streamed slots: stream k against the streams after it.
        self._stream_split = [stream_w[k] / sum(stream_w[k:]) for k in range(len(stream_w))]
        # Virtual epoch: as many slots as samples in all map-style sources, shared out by weight.
        n_total = sum(lengths.values())
        w_map = sum(w[i] for i in self.map_ids)
        self.lengths = [lengths[i] for i in self.map_ids]
        self.virtual = [max(1, round(n_total * w[i] / w_map)) for i in self.map_ids] if self.map_ids else []
        self.virtual_offsets = np.concatenate([[0], np.cumsum(self.virtual)]).astype(np.int64)
        self.epoch_size = int(self.virtual_offsets[-1])
        self.per_rank = self.epoch_size // world_size
        if self.map_ids and self.per_rank == 0:
            raise InputError(f"training data: {self.epoch_size} samples cannot be shared by {world_size} ranks")
        self._perm_cache: dict[tuple, np.ndarray] = {}
        self._skips_logged = 0

    def _size_weights(self) -> list[float]:
        """Weights proportional to the sources' sizes (the original's concatenation); one source needs no size."""
        sizes = [source_size(s) for s in self.sources]
        if len(self.sources) == 1:
            return [1.0]
        unknown = [s for s, n in zip(self.sources, sizes) if n is None]
        if unknown:
            raise InputError(f"training data: the size of {unknown[0]!r} is unknown (its shards have no img2dataset "
                             "*_stats.json): give it num_samples: N, or give every source a weight")
        if any(n == 0 for n in sizes):
            raise InputError(f"training data: source {self.sources[sizes.index(0)]!r} is empty")
        return [float(n) for n in sizes]  # type: ignore[arg-type]

    def mixing(self) -> list[dict[str, Any]]:
        """Each source's size (None: unknown), weight and share of the batch slots, for the run log."""
        return [{"source": repr(s), "size": source_size(s), "weight": w, "share": share}
                for s, w, share in zip(self.sources, self.weights, self.shares)]

    # --- map-style slots: pure functions of (seed, rank, world_size, slot) ---

    def _permutation(self, key: tuple, n: int) -> np.ndarray:
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 8:  # only the current epoch's permutations are in use
                self._perm_cache.clear()
            if key[0] == _EPOCH:
                # torch's DistributedSampler(shuffle=True, seed=seed) at set_epoch(epoch): randperm seeded seed + epoch
                g = torch.Generator()
                g.manual_seed(self.seed + key[1])
                perm = torch.randperm(n, generator=g).numpy()
            else:
                perm = np.random.default_rng(_derive_seed(self.seed, *key)).permutation(n)
            perm = perm.astype(np.int32 if n < 2**31 else np.int64)
            self._perm_cache[key] = perm
        return perm

    def _slot_index(self, slot: int) -> tuple[int, int]:
        """(map source number, row) of this rank's ``slot``-th map-style sample."""
        epoch, q = divmod(slot, self.per_rank)
        g = q * self.world_size + self.rank  # DistributedSampler's indices[rank::world_size]
        v = int(self._permutation((_EPOCH, epoch), self.epoch_size)[g]) if self.shuffle else g
        m = int(np.searchsorted(self.virtual_offsets, v, side="right")) - 1
        j = v - int(self.virtual_offsets[m])
        if self.virtual[m] == self.lengths[m]:
            return m, j  # sized by its length: the concatenation's own rows, each once per epoch
        # A source over- or undersampled by its weight: each repetition is a fresh permutation of its rows.
        rep, r = divmod(j, self.lengths[m])
        if not self.shuffle:
            return m, r
        return m, int(self._permutation((_SOURCE_PERM, m, epoch, rep), self.lengths[m])[r])

    def _replacement_index(self, slot: int, attempt: int) -> tuple[int, int]:
        """A random (source, row) replacing a bad sample, seeded by its slot and attempt (weights preserved)."""
        rng = random.Random(_derive_seed(self.seed, _REPLACE, self.rank, slot, attempt))
        v = rng.randrange(self.epoch_size)
        m = int(np.searchsorted(self.virtual_offsets, v, side="right")) - 1
        return m, rng.randrange(self.lengths[m])

    def _note_skip(self, reason: str) -> None:
        self._skips_logged += 1
        level = logging.WARNING if self._skips_logged <= _WARN_SKIPS else logging.DEBUG
        logger.log(level, "skipped a training sample: %s", reason)
        if self._skips_logged == _WARN_SKIPS:
            logger.warning("further skipped samples are logged at DEBUG level; batches still count them")

    def _map_sample(self, slot: int) -> tuple[Sample, int, int]:
        """The sample of a slot, the map source its scheduled sample came from, and 1 if that one was lost."""
        m, row = self._slot_index(slot)
        scheduled = m
        for attempt in range(self.max_skips + 1):
            if attempt:
                m, row = self._replacement_index(slot, attempt)
            source = self.sources[self.map_ids[m]]
            try:
                image, caption = source[row]
                if isinstance(image, (bytes, bytearray)):
                    image = load_image(image, name=f"{source!r}[{row}]")
                return (image, _check_caption(caption, f"{source!r}[{row}]")), scheduled, int(attempt > 0)
            except InputError as e:
                self._note_skip(str(e) if not attempt else f"{e} (a replacement draw; drawn again)")
        raise InputError(f"training data: {self.max_skips} bad samples in a row (last from {source!r}); "
                         "is the data set broken?")

    def _stream_sample(self, stream: Iterator[Sample | Skipped]) -> tuple[Sample, int]:
        lost = 0
        for _ in range(self.max_skips + 1):
            item = next(stream)
            if not isinstance(item, Skipped):
                return item, lost
            lost += item.count
            self._note_skip(item.reason)
        raise InputError(f"training data: {self.max_skips} bad streamed samples in a row; is the data set broken?")

    def _map_slots(self, index: int) -> int:
        """Map-style slots in batches before ``index`` (floor of a running share, so exact on average)."""
        return math.floor(index * self.batch_size * self.map_fraction + 1e-9)

    def _stream_counts(self, index: int) -> list[int]:
        """How many samples each streaming source gives batch ``index``: a nested split of the streamed slots by the
        sources' shares, each level a floor of a running share, so every source is within one sample of its share
        at every batch (and a pure function of ``index``)."""
        lo = index * self.batch_size - self._map_slots(index)
        hi = (index + 1) * self.batch_size - self._map_slots(index + 1)
        counts = []
        for share in self._stream_split[:-1]:
            a, b = math.floor(lo * share + 1e-9), math.floor(hi * share + 1e-9)
            counts.append(b - a)
            lo, hi = lo - a, hi - b
        if self._stream_split:
            counts.append(hi - lo)
        return counts

    def _prepare(self, image: Image.Image, caption: str, index: int, position: int) -> tuple[torch.Tensor, str]:
        seed = _derive_seed(self.seed, _SAMPLE, self.rank, index, position)
        # torchvision transforms draw from torch's global generator: seed it per sample, and restore the caller's
        # state afterwards (with num_workers=0 this runs in the training process).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tensor = self.transform(image)
        if self.caption_fn is not None:
            caption = self.caption_fn(caption, random.Random(seed))
        return tensor, caption

    def batch(self, index: int, streams: Sequence[Iterator[Sample | Skipped]] | None = None) -> dict[str, Any]:
        """Batch number ``index`` of this rank.

        Args:
            index: batch number (0-based, counted from the start of training).
            streams: one sample iterator per streaming source (from their ``samples`` method); required only when
                there are streaming sources.

        Returns:
            ``{"images": (B, 3, H, W), "captions": [...], "skipped": n, "skipped_by_source": [n per source]}``, and
            with streams ``"positions"``: ``{source index: position after this batch}`` of the streams that have one.
        """
        first, last = self._map_slots(index), self._map_slots(index + 1)
        samples: list[Sample] = []
        lost = [0] * len(self.sources)
        for slot in range(first, last):
            sample, m, n = self._map_sample(slot)
            samples.append(sample)
            lost[self.map_ids[m]] += n
        out: dict[str, Any] = {}
        if self.stream_ids and last - first < self.batch_size:
            if streams is None:
                raise ValueError("TrainBatches.batch: streaming sources need their streams")
            for k, n_k in enumerate(self._stream_counts(index)):
                for _ in range(n_k):
                    sample, n = self._stream_sample(streams[k])
                    samples.append(sample)
                    lost[self.stream_ids[k]] += n
            out["positions"] = {i: s.position for i, s in zip(self.stream_ids, streams) if hasattr(s, "position")}
        images, captions = [], []
        for position, (image, caption) in enumerate(samples):
            tensor, caption = self._prepare(image, caption, index, position)
            images.append(tensor)
            captions.append(caption)
        return {"images": torch.stack(images), "captions": captions, "skipped": sum(lost), "skipped_by_source": lost,
                **out}

    def _open_streams(self, stream: int, num_streams: int) -> list[Iterator[Sample | Skipped]]:
        """This rank's stream ``stream`` of every streaming source: continued from its saved position when there is
        one that fits, else started (a position that no longer fits: a fresh stream seeded by the start batch)."""
        saved = self.stream_positions.get(stream, {})
        streams = []
        for i in self.stream_ids:
            source = self.sources[i]
            seed = _derive_seed(self.seed, _STREAM, i)
            start = saved.get(i)
            if start is not None:
                check = getattr(source, "position_problem", None)
                problem = check(start, self.rank, self.world_size, stream, num_streams) if check else \
                    "this source cannot continue a saved position"
                if problem:
                    logger.warning("%r: the saved position of rank %d stream %d cannot be continued (%s): a fresh "
                                   "stream seeded by the resume step %d is used instead", source, self.rank, stream,
                                   problem, self.start_batch)
                    seed, start = _derive_seed(self.seed, _FALLBACK, i, self.start_batch), None
            elif self.start_batch > stream:
                # This stream built batches before the start (its first one is batch `stream`) but nothing says
                # where it stopped: it cannot continue exactly.
                logger.warning("%r: no saved position for rank %d stream %d: a fresh stream seeded by the resume "
                               "step %d is used", source, self.rank, stream, self.start_batch)
                seed = _derive_seed(self.seed, _FALLBACK, i, self.start_batch)
            streams.append(source.samples(self.rank, self.world_size, stream, num_streams, seed=seed, start=start,
                                          shuffle=self.shuffle))
        return streams

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Batch b is built from stream b % num_workers, whichever worker builds it: worker w builds batches
        # start+w, start+w+W, ... (the DataLoader returns workers' outputs round-robin, so in order).
        stream = (self.start_batch + worker) % num_workers
        streams = self._open_streams(stream, num_workers)
        for index in itertools.count(self.start_batch + worker, num_workers):
            out = self.batch(index, streams)
            if self.stream_ids:
                out["stream"] = stream
            yield out


def build_train_loader(
    sources: Sequence[Any],
    weights: Sequence[float] | None,
    batch_size: int,
    transform: Callable[[Image.Image], torch.Tensor],
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    start_batch: int = 0,
    caption_fn: Callable[[str, random.Random], str] | None = None,
    pin_memory: bool = False,
    max_skips: int = 1000,
    shuffle: bool = True,
    stream_positions: Mapping[int, Mapping[int, Mapping[str, Any]]] | None = None,
) -> torch.utils.data.DataLoader:
    """An endless loader of training batches for one rank, mixing sources by size (or by weight).

    Args:
        sources: map-style sources (``len``, ``src[i] -> (image, caption)``, InputError for a bad sample) and/or
            streaming ones (:class:`WebDatasetSource`).
        weights: sampling weight per source; None: in proportion to the sources' sizes (the original's
            concatenation: map-style sources exactly once per epoch; a stream's size from its stats or
            ``num_samples``, required when there are several sources).
        batch_size: samples per batch on this rank (always exactly this many).
        transform: PIL image -> tensor, e.g. :func:`simseg.transforms.train_transform`; its torch randomness is
            seeded per sample.
        rank: this process's rank; world_size: number of ranks (map-style epochs are dealt out disjointly).
        seed: the run's data seed.
        num_workers: DataLoader worker processes (0: build batches in this process).
        start_batch: index of the first batch to yield (the step to resume from); earlier batches are not built.
        caption_fn: ``caption_fn(text, rng) -> text``, e.g. :class:`simseg.transforms.CaptionAugmenter`.
        pin_memory: pin the image tensors (for GPU training).
        max_skips: bad samples in a row after which the data set is declared broken (InputError).
        shuffle: False reads every source in its order (no epoch permutation, no shard shuffling).
        stream_positions: ``{stream: {source index: position}}`` saved from the batches of an earlier run (each
            batch's ``"stream"`` and ``"positions"``): the streams continue exactly there.

    Returns:
        An iterable of ``{"images": FloatTensor (B, 3, H, W), "captions": list[str], "skipped": int,
        "skipped_by_source": list[int]}`` (and with streaming sources ``"stream"``, ``"positions"``), where
        ``skipped`` counts the samples lost while filling that batch. ``loader.dataset.batch(i)`` builds batch ``i``
        directly.
    """
    dataset = TrainBatches(sources, weights, batch_size, transform, rank=rank, world_size=world_size, seed=seed,
                           start_batch=start_batch, caption_fn=caption_fn, max_skips=max_skips, shuffle=shuffle,
                           stream_positions=stream_positions)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
