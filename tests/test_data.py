"""Image-caption sources, skip-and-count, weighted mixing, rank sharding and exact resume (simseg.data)."""

from __future__ import annotations

import csv
import io
import json
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

from simseg.config import load_config, to_dict
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



def test_csv_with_a_byte_order_mark_windows_line_ends_and_blank_lines_reads_as_a_clean_one(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg(0))
    (tmp_path / "clean.csv").write_text('image,caption\na.jpg,a red circle\na.jpg,"two\nlines"\n', encoding="utf-8")
    (tmp_path / "windows.csv").write_bytes(
        '\ufeffimage ,caption\r\n\r\na.jpg,a red circle\r\n  \r\na.jpg,"two\nlines"\r\n\r\n'.encode("utf-8"))
    clean, windows = CsvSource(tmp_path / "clean.csv"), CsvSource(tmp_path / "windows.csv")
    assert len(windows) == len(clean) == 2  # blank lines are no samples, not bad ones
    assert [windows[i][1] for i in range(2)] == [clean[i][1] for i in range(2)] == ["a red circle", "two\nlines"]

def test_tsv_with_image_root_and_custom_columns(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(_jpeg(0))
    (tmp_path / "meta").mkdir()
    tsv = tmp_path / "meta" / "list.tsv"
    tsv.write_text("id\tfile\ttext\n0\ta.jpg\ta caption, with a comma\n", encoding="utf-8")
    src = CsvSource(tsv, image_root=tmp_path / "imgs", image_column="file", caption_column="text")
    assert src[0][1] == "a caption, with a comma"


def test_a_tsv_source_is_tab_separated_whatever_its_file_is_called(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg(0))
    listing = tmp_path / "pairs.txt"
    listing.write_text("image\tcaption\na.jpg\ta caption, with a comma\n", encoding="utf-8")
    src = source_from_spec({"type": "tsv", "path": str(listing)})
    assert len(src) == 1 and src[0][1] == "a caption, with a comma"


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
    with pytest.raises(InputError, match=r"x\.parquet.*'imbytes'.*\['jpg', 'caption'\] \(the source's image_column / "
                                         r"caption_column name others\)$"):  # the default is the original's name
        ParquetSource(tmp_path / "x.parquet")


# ---------------------------------------------------------------- webdataset


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path: Path, samples, stats: int | None = None) -> Path:
    """A tar shard of (key, image bytes or None, caption bytes or None) samples, img2dataset's ``*_stats.json``
    beside it when ``stats`` is given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, image, caption in samples:
            if image is not None:
                _add(tar, f"{key}.jpg", image)
            if caption is not None:
                _add(tar, f"{key}.txt", caption)
    path.write_bytes(buf.getvalue())
    if stats is not None:
        stem = path.name.split(".")[0]
        (path.parent / f"{stem}_stats.json").write_text(json.dumps({"count": stats + 3, "successes": stats}))
    return path


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
    assert any("shard-001.tar: truncated" in r for r in reasons)  # the truncated tar is counted too
    for item in items:
        if not isinstance(item, Skipped):
            assert item[0].mode == "RGB"


def test_webdataset_shards_are_dealt_by_rank_and_worker(tmp_path):
    for k in range(8):
        _write_shard(tmp_path / f"s-{k}.tar", [(f"{k}-{i}", _jpeg(i), f"shard {k} sample {i}".encode())
                                              for i in range(2)])
    src = WebDatasetSource(str(tmp_path / "s-{0..7}.tar"), shuffle_buffer=4)
    for epoch in range(3):
        dealt = [src.shard_order(epoch, rank, 2, worker, 2, seed=5) for rank in range(2) for worker in range(2)]
        flat = [k for order in dealt for k in order]
        assert sorted(flat) == list(range(8))  # every shard once per epoch, no two streams share one
    assert src.shard_order(0, 0, 2, 0, 2, seed=5) != src.shard_order(1, 0, 2, 0, 2, seed=5) or \
        src.shard_order(0, 0, 2, 0, 2, seed=5) != src.shard_order(2, 0, 2, 0, 2, seed=5)  # reshuffled per epoch
    # source order: the listed shards dealt rank::world_size then worker::num_workers
    assert [src.shard_order(0, r, 2, w, 2, shuffle=False) for r in range(2) for w in range(2)] == \
        [[0, 4], [1, 5], [2, 6], [3, 7]]
    stream = src.samples(rank=1, world_size=2, worker=0, num_workers=2, shuffle=False)
    assert [next(stream)[1] for _ in range(4)] == ["shard 2 sample 0", "shard 2 sample 1", "shard 6 sample 0",
                                                   "shard 6 sample 1"]


def test_webdataset_rank_split_and_errors(tmp_path):
    pattern = _write_shards(tmp_path)
    src = WebDatasetSource(pattern, shuffle_buffer=1, resampled=False)
    rank1 = [it for _, it in zip(range(12), src.samples(rank=1, world_size=2, shuffle=False))]
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
    # each epoch meets each of the 4 + 3 bad rows once, whatever their replacements drew
    assert sum(b["skipped"] for b in batches) == 14
    assert [sum(b["skipped_by_source"][i] for b in batches) for i in (0, 1)] == [8, 6]
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


@pytest.mark.parametrize("entry, message", [
    ({"type": "csv", "path": 3}, r"data\.train\[0\]\.path: 3 is not allowed \(must be a non-empty string\)"),
    ({"type": "csv", "path": "a.csv", "image_root": ["a"]}, r"data\.train\[0\]\.image_root: \['a'\]"),
    ({"type": "webdataset", "urls": "a.tar", "resampled": "false"},  # a string: it was taken as true
     r"data\.train\[0\]\.resampled: 'false' is not allowed \(must be true or false\)"),
    ({"type": "webdataset", "urls": "a.tar", "seed": "x"}, r"data\.train\[0\]\.seed: 'x' .*must be an integer"),
    ({"type": "parquet", "paths": "a.parquet", "cache_row_groups": "x"}, r"data\.train\[0\]\.cache_row_groups"),
])
def test_a_source_key_of_the_wrong_type_is_one_config_error_naming_it(entry, message):
    from simseg.schema import validate_config

    cfg = to_dict(load_config("tiny"))
    cfg["data"]["train"] = [entry]
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_source_paths_urls_and_separator_of_the_wrong_type_are_config_errors():
    with pytest.raises(ConfigError, match=r"'parquet': paths 5 is not allowed \(must be a path or a list of them\)"):
        source_from_spec({"type": "parquet", "paths": 5})
    with pytest.raises(ConfigError, match=r"'webdataset': urls \['a\.tar', 3\] is not allowed \(must be a URL"):
        source_from_spec({"type": "webdataset", "urls": ["a.tar", 3]})
    with pytest.raises(ConfigError, match=r"'csv': sep 'ab' is not allowed \(must be one character"):
        source_from_spec({"type": "csv", "path": "a.csv", "sep": "ab"})


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


# ---------------------------------------------------------------- the original's mixing, exact counts, streams


def test_unweighted_sources_are_the_originals_concatenation():
    """No weights: every pair once per epoch, in the order of torch's DistributedSampler over a ConcatDataset."""
    from torch.utils.data import ConcatDataset, DistributedSampler

    a, b = ListSource("a", 30), ListSource("b", 10)
    concat = ConcatDataset([a, b])
    world, batch = 2, 4
    for rank in range(world):
        loader = build_train_loader([a, b], None, batch_size=batch, transform=SMALL, rank=rank, world_size=world,
                                    seed=7)
        got = [c for _, bt in zip(range(10), loader) for c in bt["captions"]]  # two epochs of 20 per rank
        want = []
        for epoch in range(2):
            sampler = DistributedSampler(concat, num_replicas=world, rank=rank, shuffle=True, seed=7, drop_last=True)
            sampler.set_epoch(epoch)
            want += [concat[i][1] for i in sampler]
        assert got == want
        first_epoch = got[:20]
        assert sum(c.startswith("a ") for c in first_epoch) == 15  # shares proportional to size: 30 : 10
    in_order = build_train_loader([a, b], None, batch_size=batch, transform=SMALL, shuffle=False)
    assert [c for _, bt in zip(range(10), in_order) for c in bt["captions"]] == [concat[i][1] for i in range(40)]


def _sized_shards(root: Path, name: str, shards: int, per_shard: int) -> str:
    for k in range(shards):
        _write_shard(root / f"{name}-{k}.tar", [(f"{k:03d}{i:03d}", _jpeg(i), f"{name} {k} {i}".encode())
                                               for i in range(per_shard)], stats=per_shard)
    return str(root / f"{name}-{{0..{shards - 1}}}.tar")


def test_webdataset_sources_mix_by_their_sample_counts(tmp_path):
    big = WebDatasetSource(_sized_shards(tmp_path, "big", 3, 10), shuffle_buffer=4)  # stats: 30 samples
    small = WebDatasetSource(_sized_shards(tmp_path, "small", 1, 10), shuffle_buffer=4)  # 10
    assert (big.num_samples, small.num_samples) == (30, 10)
    loader = build_train_loader([big, small], None, batch_size=6, transform=SMALL)
    assert [m["share"] for m in loader.dataset.mixing()] == [0.75, 0.25]
    captions = [c for _, bt in zip(range(10), loader) for c in bt["captions"]]
    assert sum(c.startswith("big ") for c in captions) == 45 and sum(c.startswith("small ") for c in captions) == 15
    for n in range(1, 11):  # a pure function of the batch index, within one sample of the share at every batch
        big_so_far = sum(c.startswith("big ") for c in captions[: 6 * n])
        assert abs(big_so_far - 0.75 * 6 * n) <= 1
    # a size the user gives replaces the stats; a map-style source counts its rows
    told = WebDatasetSource(_sized_shards(tmp_path, "told", 1, 10), num_samples=90)
    rows = ListSource("rows", 10)
    mixed = build_train_loader([rows, told], None, batch_size=10, transform=SMALL)
    assert [m["share"] for m in mixed.dataset.mixing()] == [0.1, 0.9]
    captions = [c for _, bt in zip(range(10), mixed) for c in bt["captions"]]
    assert sum(c.startswith("rows ") for c in captions) == 10
    # without stats or num_samples the share is unknown: a clear message, unless weights are given
    (tmp_path / "bare").mkdir()
    _write_shard(tmp_path / "bare" / "x-0.tar", [("a", _jpeg(0), b"bare caption")])
    bare = WebDatasetSource(str(tmp_path / "bare" / "x-0.tar"))
    with pytest.raises(InputError, match=r"size of WebDatasetSource.*x-0\.tar.*unknown.*num_samples"):
        build_train_loader([rows, bare], None, batch_size=4, transform=SMALL)
    build_train_loader([rows, bare], [1.0, 1.0], batch_size=4, transform=SMALL)
    build_train_loader([bare], None, batch_size=4, transform=SMALL)  # alone, its size does not matter


def test_map_style_lost_samples_are_counted_exactly():
    src = ListSource("s", 40, bad={3, 17, 18, 29})
    loader = build_train_loader([src], None, batch_size=8, transform=SMALL, seed=2)
    batches = [b for _, b in zip(range(5), loader)]  # exactly one epoch
    assert sum(b["skipped"] for b in batches) == 4  # one per broken row, whatever the replacements drew
    assert [sum(b["skipped_by_source"][0] for b in batches)] == [4]
    assert all(not c.endswith((" 3", " 17", " 18", " 29")) for b in batches for c in b["captions"])


def _broken_shards(root: Path) -> str:
    """Three shards, each broken in one way (stats beside every one), 8 good and 10 lost samples in all. In source
    order every loss comes before the epoch's last good sample, so one batch of 8 meets each loss exactly once."""
    # a shard img2dataset wrote (its stats are there) that is gone: 5 lost
    (root / "w-0_stats.json").write_text(json.dumps({"successes": 5}))
    # 6 samples, cut inside the 5th: the 5th and 6th are lost (stats say 6)
    b = [(f"b{i}", _jpeg(10 + i), f"good b{i}".encode()) for i in range(6)]
    path = _write_shard(root / "w-1.tar", b, stats=6)
    sample_bytes = 512 * 2 + 512 * 2 + 512 * -(-len(_jpeg(10)) // 512)  # two headers, caption and image blocks
    path.write_bytes(path.read_bytes()[: 4 * sample_bytes + 700])
    # a sample without its image, one without its caption, one with a corrupt image: 3 lost
    good = [(f"a{i}", _jpeg(i), f"good a{i}".encode()) for i in range(4)]
    _write_shard(root / "w-2.tar", good[:2] + [("a-noimg", None, b"lost: no image"), ("a-nocap", _jpeg(9), None),
                                               ("a-bad", NOT_AN_IMAGE, b"lost: corrupt")] + good[2:], stats=7)
    return str(root / "w-{0..2}.tar")


BROKEN_GOOD, BROKEN_LOST = 8, 3 + 2 + 5


def test_streamed_lost_samples_are_counted_exactly(tmp_path):
    pattern = _broken_shards(tmp_path)
    with pytest.raises(InputError, match=r"w-0\.tar: shard not found.*allow_missing_shards"):
        WebDatasetSource(pattern)
    src = WebDatasetSource(pattern, allow_missing_shards=True, shuffle_buffer=3)
    # the stream itself: one epoch holds the 8 good samples and markers worth exactly the 10 lost ones
    stream = src.samples()
    items = []
    while stream.epoch == 0:
        items.append(next(stream))
    items.pop()  # the first item of epoch 1
    assert sum(1 for it in items if not isinstance(it, Skipped)) == BROKEN_GOOD
    assert sum(it.count for it in items if isinstance(it, Skipped)) == BROKEN_LOST
    reasons = " | ".join(it.reason for it in items if isinstance(it, Skipped))
    for what in ("w-0.tar: not found; 5 sample(s) lost", "w-1.tar: truncated", "2 sample(s) lost", "no image member",
                 "no caption member", "not a readable image"):
        assert what in reasons
    # the loader: one batch of one epoch's good samples reports every loss once, in all and for its source
    loader = build_train_loader([src, ListSource("rows", 8)], [1.0, 1.0], batch_size=2 * BROKEN_GOOD,
                                transform=SMALL, shuffle=False)
    batch = next(iter(loader))
    assert sorted(c for c in batch["captions"] if c.startswith("good")) == sorted(
        [f"good a{i}" for i in range(4)] + [f"good b{i}" for i in range(4)])
    assert batch["skipped"] == BROKEN_LOST and batch["skipped_by_source"] == [BROKEN_LOST, 0]
    # the same with the stream second: its losses are booked to it, not to the first source
    loader = build_train_loader([ListSource("rows", 8, bad={5}), src], [1.0, 1.0], batch_size=2 * BROKEN_GOOD,
                                transform=SMALL, shuffle=False)
    batch = next(iter(loader))
    assert batch["skipped"] == BROKEN_LOST + 1 and batch["skipped_by_source"] == [1, BROKEN_LOST]


def test_shard_losses_without_stats_and_short_shards(tmp_path):
    samples = [(f"k{i}", _jpeg(i), f"c {i}".encode()) for i in range(5)]
    # cut inside the last sample, no stats: the one sample being read is lost (all that can be known)
    path = _write_shard(tmp_path / "cut-0.tar", samples)
    sample_bytes = 512 * 2 + 512 * 2 + 512 * -(-len(_jpeg(0)) // 512)
    path.write_bytes(path.read_bytes()[: 4 * sample_bytes + 600])
    stream = WebDatasetSource(str(path), shuffle_buffer=1).samples()
    items = [next(stream) for _ in range(5)]
    assert [it.count for it in items if isinstance(it, Skipped)] == [1]
    assert sum(1 for it in items if not isinstance(it, Skipped)) == 4
    # a complete tar holding fewer samples than its stats say: the difference is lost
    _write_shard(tmp_path / "short-0.tar", samples[:3], stats=5)
    stream = WebDatasetSource(str(tmp_path / "short-0.tar"), shuffle_buffer=1).samples()
    items = [next(stream) for _ in range(4)]
    assert isinstance(items[3], Skipped) and items[3].count == 2 and "its stats say 5" in items[3].reason


def test_stream_resume_is_exact_and_rereads_at_most_one_shard(tmp_path, monkeypatch):
    import simseg.data as data_module

    src = WebDatasetSource(_sized_shards(tmp_path, "r", 4, 7), shuffle_buffer=5, seed=1)

    def loader(start=0, positions=None, workers=0):
        return build_train_loader([src], None, batch_size=3, transform=train_transform(size=16), seed=4,
                                  start_batch=start, num_workers=workers, stream_positions=positions)

    fresh = [b for _, b in zip(range(14), loader())]  # 42 samples: more than one epoch of 28
    positions = {fresh[8]["stream"]: fresh[8]["positions"]}
    opened = []
    original = data_module._open_shard
    monkeypatch.setattr(data_module, "_open_shard", lambda url: opened.append(url) or original(url))
    resumed = [b for _, b in zip(range(5), loader(start=9, positions=positions))]
    assert _same(fresh[9:], resumed)
    # Only the shards the resumed samples come from were opened, each once per visit: the one the position is in (its
    # first samples replayed to the offset without decoding), then the following ones; no earlier shard.
    shards = [int(c.split()[1]) for b in resumed for c in b["captions"]]
    visits = [k for i, k in enumerate(shards) if i == 0 or shards[i - 1] != k]
    assert [Path(u).name for u in opened] == [f"r-{k}.tar" for k in visits]
    assert fresh[8]["positions"][0]["offset"] > 0  # the position was inside a shard
    monkeypatch.setattr(data_module, "_open_shard", original)
    # with two loader workers: one stream per worker, each continuing from its own saved position
    two = [b for _, b in zip(range(12), loader(workers=2))]
    saved = {}
    for b in two[:7]:
        saved[b["stream"]] = b["positions"]
    again = [b for _, b in zip(range(5), loader(start=7, positions=saved, workers=2))]
    assert _same(two[7:], again)


def test_a_stream_position_that_no_longer_fits_falls_back_to_a_fresh_stream(tmp_path, caplog):
    pattern = _sized_shards(tmp_path, "p", 3, 5)
    src = WebDatasetSource(pattern, shuffle_buffer=2)
    first = [b for _, b in zip(range(4), build_train_loader([src], None, batch_size=2, transform=SMALL))]
    positions = {first[3]["stream"]: first[3]["positions"]}
    fewer = WebDatasetSource(str(tmp_path / "p-{0..1}.tar"), shuffle_buffer=2)  # a shard removed since
    with pytest.raises(InputError, match="shard list differs"):
        fewer.samples(start=positions[0][0])
    with caplog.at_level("WARNING", logger="simseg.data"):
        loader = build_train_loader([fewer], None, batch_size=2, transform=SMALL, start_batch=4,
                                    stream_positions=positions)
        batch = next(iter(loader))
    assert len(batch["captions"]) == 2
    assert any("cannot be continued" in r.message and "fresh stream" in r.message for r in caplog.records)
