"""Image-caption sources, skip-and-count, weighted mixing, rank sharding and exact resume (simseg.data)."""

from __future__ import annotations

import csv
import io
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms as T

from simseg.data import (
    CsvSource,
    ParquetSource,
    Skipped,
    WebDatasetSource,
    build_sources,
    build_train_loader,
    source_from_spec,
)
from simseg.errors import ConfigError, InputError
from simseg.transforms import train_transform

SMALL = T.Compose([T.Resize((8, 8)), T.ToTensor()])
NOT_AN_IMAGE = b"this is not a jpeg"


def _jpeg(seed: int, size: tuple[int, int] = (20, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


class ListSource:
    """A minimal in-memory map-style source that records which rows were read."""

    def __init__(self, name: str, n: int, bad: set[int] = frozenset()) -> None:
        self.name, self.n, self.bad, self.reads = name, n, set(bad), []
        self.image = Image.fromarray(np.full((12, 12, 3), 128, np.uint8))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.reads.append(i)
        if i in self.bad:
            raise InputError(f"{self.name}[{i}]: corrupt")
        return self.image, f"{self.name} {i}"


# ---------------------------------------------------------------- CSV


def _write_csv_folder(root: Path, sep: str = ",", name: str = "train_anno.csv") -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(4):
        (root / "images" / f"{i}.jpg").write_bytes(_jpeg(i))
    (root / "images" / "corrupt.jpg").write_bytes(NOT_AN_IMAGE)
    (root / "images" / "5.jpg").write_bytes(_jpeg(5))
    (root / "images" / "6.jpg").write_bytes(_jpeg(6))
    rows = [
        [f"images/{i}.jpg", f"good caption {i}"] for i in range(4)
    ] + [
        ["images/missing.jpg", "a missing file"],
        ["images/corrupt.jpg", "a corrupt image"],
        ["images/5.jpg", "   "],
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator="\n")
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
    data = buf.getvalue().encode("utf-8") + b"images/6.jpg" + sep.encode() + b"caf\xe9 latin-1 caption\n"
    path = root / name
    path.write_bytes(data)
    return path


def test_csv_source_reads_and_flags_bad_rows(tmp_path):
    src = CsvSource(_write_csv_folder(tmp_path))
    assert len(src) == 8
    image, caption = src[2]
    assert image.mode == "RGB" and image.size == (20, 16) and caption == "good caption 2"
    for i, problem in [(4, "not found"), (5, "not a readable image"), (6, "empty caption"), (7, "UTF-8")]:
        with pytest.raises(InputError, match=problem):
            src[i]


def test_tsv_with_image_root_and_custom_columns(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(_jpeg(0))
    (tmp_path / "meta").mkdir()
    tsv = tmp_path / "meta" / "list.tsv"
    tsv.write_text("id\tfile\ttext\n0\ta.jpg\ta caption, with a comma\n", encoding="utf-8")
    src = CsvSource(tsv, image_root=tmp_path / "imgs", image_column="file", caption_column="text")
    assert src[0][1] == "a caption, with a comma"


def test_csv_missing_column_names_file_and_columns(tmp_path):
    path = tmp_path / "anno.csv"
    path.write_text("filepath,title\nx.jpg,hello\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"anno\.csv.*'image'.*\['filepath', 'title'\]"):
        CsvSource(path)
    with pytest.raises(InputError, match="not found"):
        CsvSource(tmp_path / "nope.csv")


# ---------------------------------------------------------------- parquet


def _write_parquet(path: Path, n: int = 8, row_group_size: int = 3, bad: bool = True) -> None:
    images = [_jpeg(i) for i in range(n)]
    captions = [f"parquet caption {i}" for i in range(n)]
    if bad:
        images[1] = NOT_AN_IMAGE
        captions[4] = ""
        images[6] = None
    table = pa.table({"imbytes": pa.array(images, pa.binary()), "caption": captions, "image_id": list(range(n))})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_source_row_groups_and_bad_rows(tmp_path):
    _write_parquet(tmp_path / "a.parquet")
    _write_parquet(tmp_path / "b.parquet", n=4, bad=False)
    src = ParquetSource(tmp_path, cache_row_groups=2)  # a folder: both files, in name order
    assert len(src) == 12
    assert src[7][1] == "parquet caption 7" and src[7][0].size == (20, 16)
    assert src[8 + 3][1] == "parquet caption 3"  # second file
    for i, problem in [(1, "not a readable image"), (4, "empty caption"), (6, "no image")]:
        with pytest.raises(InputError, match=problem):
            src[i]
    assert len(src._cache) <= 2  # only a few row groups are held in memory
    clone = pickle.loads(pickle.dumps(src))  # as a spawned data-loader worker receives it
    assert clone[0][1] == "parquet caption 0"


def test_parquet_hugging_face_image_struct(tmp_path):
    images = pa.array([{"bytes": _jpeg(0), "path": None}], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images, "text": ["hf caption"]}), tmp_path / "hf.parquet")
    image, caption = ParquetSource(tmp_path / "hf.parquet", image_column="image", caption_column="text")[0]
    assert image.size == (20, 16) and caption == "hf caption"


def test_parquet_missing_column(tmp_path):
    pq.write_table(pa.table({"jpg": [b"x"], "caption": ["c"]}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match=r"x\.parquet.*'imbytes'.*\['jpg', 'caption'\]"):
        ParquetSource(tmp_path / "x.parquet")


# ---------------------------------------------------------------- webdataset


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(root: Path) -> str:
    """Two img2dataset-style shards: one with bad samples, one cut short in the middle of a member."""
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for i in range(4):
            _add(tar, f"{i:09d}.jpg", _jpeg(i))
            _add(tar, f"{i:09d}.txt", f"web caption {i}".encode())
            _add(tar, f"{i:09d}.json", b"{}")
        _add(tar, "000000010.jpg", NOT_AN_IMAGE)
        _add(tar, "000000010.txt", b"corrupt image")
        _add(tar, "000000011.jpg", _jpeg(11))
        _add(tar, "000000011.txt", b"caf\xe9")  # not UTF-8
        _add(tar, "000000012.jpg", _jpeg(12))
        _add(tar, "000000012.txt", b"")
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w") as tar:
        for i in range(20, 24):
            _add(tar, f"{i:09d}.jpg", _jpeg(i, size=(64, 64)))
            _add(tar, f"{i:09d}.txt", f"web caption {i}".encode())
    data = full.getvalue()
    (root / "shard-001.tar").write_bytes(data[: len(data) * 2 // 3])  # truncated inside a member
    return str(root / "shard-{000..001}.tar")


def test_webdataset_source_skips_and_counts(tmp_path):
    src = WebDatasetSource(_write_shards(tmp_path), shuffle_buffer=1, resampled=False)
    assert len(src.shards) == 2
    items = [item for _, item in zip(range(60), src.samples())]
    captions = {c for item in items if not isinstance(item, Skipped) for c in [item[1]]}
    reasons = [item.reason for item in items if isinstance(item, Skipped)]
    assert {f"web caption {i}" for i in range(4)} <= captions
    assert "web caption 20" in captions  # samples before the cut are kept
    assert "web caption 23" not in captions
    assert captions <= {f"web caption {i}" for i in [0, 1, 2, 3, 20, 21, 22]}
    joined = "\n".join(reasons)
    for problem in ["not a readable image", "UTF-8", "empty caption"]:
        assert problem in joined
    assert any(r.startswith("webdataset:") for r in reasons)  # the truncated tar is counted too
    for item in items:
        if not isinstance(item, Skipped):
            assert item[0].mode == "RGB"


def test_webdataset_rank_split_and_errors(tmp_path):
    pattern = _write_shards(tmp_path)
    src = WebDatasetSource(pattern, shuffle_buffer=1, resampled=False)
    rank1 = [it for _, it in zip(range(12), src.samples(rank=1, world_size=2))]
    assert {it[1] for it in rank1 if not isinstance(it, Skipped)} <= {f"web caption {i}" for i in range(20, 24)}
    with pytest.raises(InputError, match="cannot be dealt"):
        next(src.samples(rank=1, world_size=2, worker=1, num_workers=2))
    with pytest.raises(InputError, match="not found"):
        WebDatasetSource(str(tmp_path / "nothing-{0..3}.tar"))
    (tmp_path / "junk.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(InputError, match="in a row gave no sample"):
        next(iter(WebDatasetSource(str(tmp_path / "junk.tar"), shuffle_buffer=1)))


def test_loader_over_webdataset_counts_skips(tmp_path):
    src = WebDatasetSource(_write_shards(tmp_path), shuffle_buffer=8, resampled=True, seed=3)
    loader = build_train_loader([src], None, batch_size=5, transform=SMALL)
    batches = [b for _, b in zip(range(6), loader)]
    assert all(b["images"].shape == (5, 3, 8, 8) and len(b["captions"]) == 5 for b in batches)
    assert sum(b["skipped"] for b in batches) > 0


# ---------------------------------------------------------------- the loader


def test_loader_on_disk_sources_with_bad_samples(tmp_path):
    csv_src = CsvSource(_write_csv_folder(tmp_path / "csv"))
    _write_parquet(tmp_path / "p.parquet")
    pq_src = ParquetSource(tmp_path / "p.parquet")
    loader = build_train_loader([csv_src, pq_src], None, batch_size=4, transform=SMALL)
    batches = [b for _, b in zip(range(8), loader)]  # 32 slots: two epochs of 16 rows, 7 of them bad
    captions = [c for b in batches for c in b["captions"]]
    assert all(c.startswith(("good caption", "parquet caption")) for c in captions)
    assert len(captions) == 32
    assert sum(b["skipped"] for b in batches) >= 7  # each epoch meets every bad row once, replacements aside
    assert batches[0]["images"].dtype == torch.float32


def test_weighted_mixing_proportions():
    a, b = ListSource("a", 40), ListSource("b", 40)
    loader = build_train_loader([a, b], [3.0, 1.0], batch_size=4, transform=SMALL, seed=1)
    captions = [c for _, batch in zip(range(20), loader) for c in batch["captions"]]  # exactly one epoch
    assert sum(c.startswith("a ") for c in captions) == 60
    assert sum(c.startswith("b ") for c in captions) == 20
    assert len({c for c in captions if c.startswith("b ")}) == 20  # the undersampled one: no repeats
    assert len({c for c in captions if c.startswith("a ")}) == 40  # the oversampled one covers all its rows


def test_mixing_map_and_streaming_sources(tmp_path):
    web = WebDatasetSource(_write_shards(tmp_path), shuffle_buffer=4)
    rows = ListSource("rows", 30)
    loader = build_train_loader([rows, web], [1.0, 3.0], batch_size=8, transform=SMALL)
    captions = [c for _, batch in zip(range(10), loader) for c in batch["captions"]]
    assert sum(c.startswith("rows ") for c in captions) == 20  # a quarter of 80 slots
    assert sum(c.startswith("web ") for c in captions) == 60


def test_ranks_are_disjoint_within_an_epoch():
    src = ListSource("s", 48)
    per_rank = []
    for rank in range(3):
        loader = build_train_loader([src], None, batch_size=4, transform=SMALL, rank=rank, world_size=3, seed=7)
        per_rank.append([c for _, b in zip(range(4), loader) for c in b["captions"]])
    seen = [set(c) for c in per_rank]
    assert all(len(s) == 16 for s in seen)
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert set().union(*seen) == {f"s {i}" for i in range(48)}


def _same(x: list[dict], y: list[dict]) -> bool:
    return all(
        torch.equal(a["images"], b["images"]) and a["captions"] == b["captions"] and a["skipped"] == b["skipped"]
        for a, b in zip(x, y, strict=True)
    )


def test_resume_is_exact_and_skips_earlier_batches():
    def caption_fn(text: str, rng: random.Random) -> str:
        return f"{text} #{rng.randrange(10**6)}"

    def loader(src, start=0, workers=0):
        return build_train_loader([src], None, batch_size=4, transform=train_transform(size=16), seed=11,
                                  start_batch=start, caption_fn=caption_fn, num_workers=workers)

    bad = {3, 17, 18}
    fresh = [b for _, b in zip(range(7), loader(ListSource("s", 20, bad)))]
    assert sum(b["skipped"] for b in fresh) >= 3  # each bad row of the first epoch was met and replaced
    resumed_src = ListSource("s", 20, bad)
    resumed = [b for _, b in zip(range(3), loader(resumed_src, start=4))]
    assert _same(fresh[4:], resumed)  # identical crops, AutoAugment ops and caption edits
    assert len(resumed_src.reads) < 3 * 4 + 5  # batches 0..3 were not built (only 3 batches + replacements read)
    # Calling the same batch twice gives identical tensors, and the caller's torch RNG is untouched.
    state = torch.get_rng_state()
    again = loader(ListSource("s", 20, bad)).dataset.batch(5)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same([fresh[5]], [again])
    # Worker processes produce the same batches, in order, with their skip counts.
    with_workers = [b for _, b in zip(range(4), loader(ListSource("s", 20, bad), start=3, workers=2))]
    assert _same(fresh[3:7], with_workers)


# ---------------------------------------------------------------- config entries


def test_source_from_spec(tmp_path):
    csv_path = _write_csv_folder(tmp_path / "c")
    _write_parquet(tmp_path / "p.parquet")
    pattern = _write_shards(tmp_path)
    specs = [
        {"type": "csv", "path": str(csv_path), "weight": 2.0},
        OmegaConf.create({"type": "parquet", "paths": [str(tmp_path / "p.parquet")]}),
        {"type": "webdataset", "urls": pattern, "resampled": False, "shuffle_buffer": 10},
    ]
    sources, weights = build_sources(specs)
    assert [type(s) for s in sources] == [CsvSource, ParquetSource, WebDatasetSource]
    assert weights == [2.0, 1.0, 1.0]
    assert sources[2].resampled is False and sources[2].shuffle_buffer == 10
    assert build_sources(specs[1:])[1] is None
    with pytest.raises(ConfigError, match="unknown type 'lmdb'"):
        source_from_spec({"type": "lmdb", "path": "x"})
    with pytest.raises(ConfigError, match="unknown key 'image_dir'"):
        source_from_spec({"type": "csv", "path": str(csv_path), "image_dir": "x"})
    with pytest.raises(ConfigError, match="missing key 'urls'"):
        source_from_spec({"type": "webdataset"})
    with pytest.raises(ConfigError, match="weight"):
        build_sources([{"type": "csv", "path": str(csv_path), "weight": -1}])
