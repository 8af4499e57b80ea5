"""Image-caption training data: three sources, weighted mixing, skip-and-count, and a resumable batch loader.

Sources yield ``(image, caption)`` pairs, the image an RGB ``PIL.Image`` (decoded only when the sample is used):

- :class:`CsvSource`: a folder of images and a CSV/TSV listing ``image`` and ``caption`` (the original's
  ``train_anno.csv`` layout). Map-style: ``len(src)``, ``src[i]``.
- :class:`ParquetSource`: parquet files whose rows hold encoded image bytes and a caption. Map-style, reading one
  row group at a time (a small LRU keeps the last few).
- :class:`WebDatasetSource`: tar shards as img2dataset writes them (``{key}.jpg`` + ``{key}.txt``), from local paths,
  brace patterns or any URL webdataset opens. Streaming: split by rank and worker, shuffled with a buffer, resampled
  for multi-epoch runs.

A bad sample (missing or corrupt image, truncated tar member, empty or non-UTF-8 caption) is skipped and counted:
map-style sources raise :class:`~simseg.errors.InputError` from ``src[i]`` and the loader draws a replacement;
streaming sources yield a :class:`Skipped` marker. Every batch reports how many samples it skipped.

:func:`build_train_loader` mixes sources by weight and yields exactly ``batch_size`` samples per rank, forever.

Determinism, the contract resume relies on. For map-style sources batch ``b`` of rank ``r`` is a pure function of
``(seed, r, world_size, b)``: each epoch is a seeded permutation of a virtual index space (every source's share
of it set by its weight) dealt out across ranks, so ranks are disjoint within an epoch; a bad sample is replaced by
a draw seeded by its slot; the crop, AutoAugment and caption edits of the sample at position ``p`` are seeded by
``(seed, r, b, p)``. ``start_batch=k`` therefore starts at batch ``k`` without touching the ``k`` earlier ones, and a
resumed run sees exactly the batches an uninterrupted one would, whatever ``num_workers`` is.

Streaming sources cannot seek: on resume they start a fresh stream seeded by ``(seed, rank, worker, start_batch)``,
so a resumed run sees the same *distribution* of data, not the same samples (as open_clip does with resampled
shards). How many slots of a batch come from map-style versus streaming sources is still a pure function of the
batch index.
"""

from __future__ import annotations

import bisect
import csv
import glob
import itertools
import logging
import math
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from simseg.errors import ConfigError, InputError
from simseg.images import load_image

logger = logging.getLogger(__name__)

#: Sample extensions webdataset shards may use for the image (img2dataset writes ``jpg``).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

#: Skip messages logged at WARNING per loader (per worker); the rest go to DEBUG, the counts reach every batch.
_WARN_SKIPS = 20


@dataclass(frozen=True)
class Skipped:
    """A sample a streaming source could not use, and why (the loader counts it)."""

    reason: str


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
                    if not row:
                        continue  # a blank line
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
                raise InputError(f"{f}: not a readable parquet file ({e})") from None
            names = pf.schema_arrow.names
            missing = [c for c in (image_column, caption_column) if c not in names]
            if missing:
                raise InputError(f"{f}: no column {', '.join(repr(c) for c in missing)}; the file has columns {names}")
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
            raise InputError(f"{self.files[fi]}: row group {g} unreadable ({e})") from None
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


class WebDatasetSource:
    """Tar shards of ``{key}.jpg`` + ``{key}.txt`` samples (img2dataset's output), streamed.

    Args:
        urls: a URL string (brace patterns such as ``shards/{00000..00331}.tar`` and ``::``-separated lists are
            expanded), or a list of them. Local paths, ``pipe:`` commands and any scheme webdataset's ``gopen``
            opens (http, https, gs, s3 via pipe, ...).
        shuffle_buffer: samples held in the shuffle buffer (1 or 0: no sample shuffling).
        resampled: draw shards at random with replacement, forever (open_clip's choice for multi-epoch streaming;
            every rank and worker draws with its own seed). If False, each epoch deals the shards out across ranks
            and workers (``shards[rank::world_size][worker::num_workers]``) in a seeded order, so each needs one.
        seed: mixed into every stream's seed, to vary shard order between experiments.

    Raises:
        InputError: no URL given, or none of the local shards exists.
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        shuffle_buffer: int = 1000,
        resampled: bool = True,
        seed: int = 0,
    ) -> None:
        from webdataset.shardlists import expand_urls

        items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
        shards = [s for item in items for s in expand_urls(str(item))]
        if not shards:
            raise InputError("webdataset: no shard URL given")
        missing = [s for s in shards if _is_local(s) and not Path(s).is_file()]
        if missing and len(missing) == len(shards):
            raise InputError(f"{missing[0]}: shard not found (none of the {len(shards)} shards exists)")
        if missing:
            # img2dataset leaves gaps where a whole shard failed: go on with the others, but say so.
            logger.warning("webdataset: %d of %d shards not found (first: %s); using the others",
                           len(missing), len(shards), missing[0])
        absent = set(missing)
        self.shards = [s for s in shards if s not in absent]
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.seed = seed

    def __repr__(self) -> str:
        return f"WebDatasetSource({len(self.shards)} shards, resampled={self.resampled})"

    def _shard_urls(self, rng: random.Random, rank: int, world_size: int, worker: int, num_workers: int,
                    progress: dict[str, int]) -> Iterator[dict[str, str]]:
        """Shard URLs forever, as webdataset's ``{"url": ...}`` dicts; stops a stream whose shards all fail."""
        if self.resampled:
            mine = self.shards
        else:
            mine = self.shards[rank::world_size][worker::num_workers]
            if not mine:
                raise InputError(f"webdataset: {len(self.shards)} shards cannot be dealt to {world_size} rank(s) x "
                                 f"{num_workers} worker(s); add shards or use resampled=True")
        dead_limit = 2 * len(mine) + 10
        while True:
            order = [rng.choice(mine) for _ in range(len(mine))] if self.resampled else rng.sample(mine, len(mine))
            for url in order:
                # A guard against spinning forever on unreadable shards (wrong URL, network down).
                if progress["shards_without_sample"] >= dead_limit:
                    raise InputError(f"webdataset: {dead_limit} shards in a row gave no sample (last: {url}); "
                                     f"last error: {progress.get('last_error', 'none')}")
                progress["shards_without_sample"] += 1
                yield {"url": url}

    def samples(self, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
                seed: int = 0) -> Iterator[Sample | Skipped]:
        """An endless stream of (image, caption) pairs and :class:`Skipped` markers for one rank and worker.

        Args:
            rank: this process's rank; world_size: number of ranks.
            worker: this data-loader worker's index; num_workers: number of workers per rank (at least 1).
            seed: stream seed (the loader derives it from its seed, the rank, the worker and the start batch).
        """
        import webdataset as wds

        errors: list[Exception] = []
        progress: dict[str, Any] = {"shards_without_sample": 0}

        def handler(exn: Exception) -> bool:
            # webdataset reports truncated tars, unreadable shards and broken members here; count, then go on.
            errors.append(exn)
            progress["last_error"] = repr(exn)[:300]
            return True

        rng = random.Random(_derive_seed(self.seed, seed, rank, worker, 101))
        raw = wds.tarfile_samples(self._shard_urls(rng, rank, world_size, worker, num_workers, progress),
                                  handler=handler)

        def counted(stream: Iterator[dict]) -> Iterator[dict]:
            for sample in stream:
                progress["shards_without_sample"] = 0
                yield sample

        stream = counted(raw)
        if self.shuffle_buffer > 1:
            stream = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(stream)
        for sample in stream:
            while errors:
                yield Skipped(f"webdataset: {errors.pop(0)}")
            yield _decode_tar_sample(sample)
        while errors:  # unreachable with an endless shard list, kept for finite custom subclasses
            yield Skipped(f"webdataset: {errors.pop(0)}")

    def __iter__(self) -> Iterator[Sample]:
        """Valid (image, caption) pairs of rank 0, worker 0, skipping bad ones (the loader uses :meth:`samples`)."""
        for item in self.samples():
            if not isinstance(item, Skipped):
                yield item


def _decode_tar_sample(sample: Mapping[str, Any]) -> Sample | Skipped:
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    try:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise InputError(f"{where}: no image member ({'/'.join(IMAGE_EXTENSIONS)})")
        caption = _check_caption(sample.get("txt"), f"{where}.txt")
        return load_image(sample[ext], name=f"{where}.{ext}"), caption
    except InputError as e:
        return Skipped(str(e))


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

    Examples: ``{"type": "csv", "path": "cc3m/train_anno.csv", "image_root": "cc3m/images", "weight": 1.0}``,
    ``{"type": "parquet", "paths": ["a.parquet"]}``, ``{"type": "webdataset", "urls": "cc12m/{00000..01242}.tar"}``.
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
    if "path" in kwargs:
        kwargs["csv_path"] = kwargs.pop("path")
    return cls(**kwargs)


_SPEC_KEYS: dict[str, tuple[type, set[str], set[str]]] = {
    "csv": (CsvSource, {"path"}, {"image_root", "image_column", "caption_column", "sep"}),
    "tsv": (CsvSource, {"path"}, {"image_root", "image_column", "caption_column", "sep"}),
    "parquet": (ParquetSource, {"paths"}, {"image_column", "caption_column", "cache_row_groups"}),
    "webdataset": (WebDatasetSource, {"urls"}, {"shuffle_buffer", "resampled", "seed"}),
}


def build_sources(specs: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[float] | None]:
    """Sources and their weights from a list of config entries; weights None when no entry sets one.

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


def _derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy's SeedSequence hashing: nearby keys give unrelated streams)."""
    # Each key as exactly two 32-bit words, after the key count, so different key tuples never share an entropy list.
    words = [len(keys)] + [w for k in keys for w in (int(k) % (1 << 63) & 0xFFFFFFFF, int(k) % (1 << 63) >> 32)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


# Distinct purposes get distinct seeds even for equal keys.
_EPOCH, _SOURCE_PERM, _REPLACE, _SAMPLE, _STREAM_CHOICE, _STREAM = 1, 2, 3, 4, 5, 6


def _is_streaming(source: Any) -> bool:
    return hasattr(source, "samples") and not hasattr(source, "__len__")


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
        self.map_ids = [i for i, s in enumerate(self.sources) if not _is_streaming(s)]
        self.stream_ids = [i for i, s in enumerate(self.sources) if _is_streaming(s)]
        lengths = {i: len(self.sources[i]) for i in self.map_ids}
        for i, n in lengths.items():
            if n == 0:
                raise InputError(f"training data: source {self.sources[i]!r} is empty")
        if weights is None:
            # Map-style sources alone: plain concatenation (each sample once per epoch). With streams: equal shares.
            weights = [float(lengths[i]) if not self.stream_ids else 1.0 for i in range(len(self.sources))]
        w = [float(x) for x in weights]
        total = sum(w)
        self.map_fraction = sum(w[i] for i in self.map_ids) / total
        self.stream_weights = [w[i] for i in self.stream_ids]
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

    # --- map-style slots: pure functions of (seed, rank, world_size, slot) ---

    def _permutation(self, key: tuple, n: int) -> np.ndarray:
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 8:  # only the current epoch's permutations are in use
                self._perm_cache.clear()
            dtype = np.int32 if n < 2**31 else np.int64
            perm = np.random.default_rng(_derive_seed(*key)).permutation(n).astype(dtype)
            self._perm_cache[key] = perm
        return perm

    def _slot_index(self, slot: int) -> tuple[int, int]:
        """(map source number, row) of this rank's ``slot``-th map-style sample."""
        epoch, q = divmod(slot, self.per_rank)
        v = int(self._permutation((self.seed, _EPOCH, epoch), self.epoch_size)[q * self.world_size + self.rank])
        m = int(np.searchsorted(self.virtual_offsets, v, side="right")) - 1
        j = v - int(self.virtual_offsets[m])
        # A source oversampled by its weight repeats: each repetition is a fresh permutation of its rows.
        rep, r = divmod(j, self.lengths[m])
        return m, int(self._permutation((self.seed, _SOURCE_PERM, m, epoch, rep), self.lengths[m])[r])

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

    def _map_sample(self, slot: int) -> tuple[Sample, int]:
        m, row = self._slot_index(slot)
        for attempt in range(self.max_skips + 1):
            if attempt:
                m, row = self._replacement_index(slot, attempt)
            source = self.sources[self.map_ids[m]]
            try:
                image, caption = source[row]
                if isinstance(image, (bytes, bytearray)):
                    image = load_image(image, name=f"{source!r}[{row}]")
                return (image, _check_caption(caption, f"{source!r}[{row}]")), attempt
            except InputError as e:
                self._note_skip(str(e))
        raise InputError(f"training data: {self.max_skips} bad samples in a row (last from {source!r}); "
                         "is the data set broken?")

    def _stream_sample(self, stream: Iterator[Sample | Skipped]) -> tuple[Sample, int]:
        for skipped in range(self.max_skips + 1):
            item = next(stream)
            if not isinstance(item, Skipped):
                return item, skipped
            self._note_skip(item.reason)
        raise InputError(f"training data: {self.max_skips} bad streamed samples in a row; is the data set broken?")

    def _map_slots(self, index: int) -> int:
        """Map-style slots in batches before ``index`` (floor of a running share, so exact on average)."""
        return math.floor(index * self.batch_size * self.map_fraction + 1e-9)

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
        """Batch number ``index`` of this rank: ``{"images": (B, 3, H, W), "captions": [...], "skipped": n}``.

        Args:
            index: batch number (0-based, counted from the start of training).
            streams: one sample iterator per streaming source (from their ``samples`` method); required only when
                there are streaming sources.
        """
        first, last = self._map_slots(index), self._map_slots(index + 1)
        samples: list[Sample] = []
        skipped = 0
        for slot in range(first, last):
            sample, n = self._map_sample(slot)
            samples.append(sample)
            skipped += n
        n_stream = self.batch_size - (last - first)
        if n_stream:
            if streams is None:
                raise ValueError("TrainBatches.batch: streaming sources need their streams")
            rng = random.Random(_derive_seed(self.seed, _STREAM_CHOICE, self.rank, index))
            for k in rng.choices(range(len(self.stream_ids)), weights=self.stream_weights, k=n_stream):
                sample, n = self._stream_sample(streams[k])
                samples.append(sample)
                skipped += n
        images, captions = [], []
        for position, (image, caption) in enumerate(samples):
            tensor, caption = self._prepare(image, caption, index, position)
            images.append(tensor)
            captions.append(caption)
        return {"images": torch.stack(images), "captions": captions, "skipped": skipped}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        streams = [
            self.sources[i].samples(self.rank, self.world_size, worker, num_workers,
                                    seed=_derive_seed(self.seed, _STREAM, i, self.start_batch))
            for i in self.stream_ids
        ]
        # Worker w builds batches start+w, start+w+W, ...; the DataLoader returns workers' outputs round-robin,
        # so the trainer receives them in order.
        for index in itertools.count(self.start_batch + worker, num_workers):
            yield self.batch(index, streams)


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
) -> torch.utils.data.DataLoader:
    """An endless loader of training batches for one rank, mixing sources by weight.

    Args:
        sources: map-style sources (``len``, ``src[i] -> (image, caption)``, InputError for a bad sample) and/or
            streaming ones (:class:`WebDatasetSource`).
        weights: sampling weight per source; None: map-style sources in proportion to their sizes (each sample
            once per epoch), or equal shares when a streaming source is present.
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

    Returns:
        An iterable of ``{"images": FloatTensor (B, 3, H, W), "captions": list[str], "skipped": int}``, where
        ``skipped`` counts the bad samples passed over to fill that batch. ``loader.dataset.batch(i)`` builds
        batch ``i`` directly.
    """
    dataset = TrainBatches(sources, weights, batch_size, transform, rank=rank, world_size=world_size, seed=seed,
                           start_batch=start_batch, caption_fn=caption_fn, max_skips=max_skips)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
