"""Zero-shot image-text retrieval: recall definitions, readers, validation, de-duplication, sharding and the CLI."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simseg import retrieval
from simseg.errors import InputError
from simseg.retrieval import (
    Pair,
    PairIndex,
    eval_transform,
    evaluate_retrieval,
    read_pairs,
    read_parquet_pairs,
    read_table_pairs,
    retrieval_metrics,
)

KS = (1, 5, 10)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def brute_force(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: list[int], ks=KS) -> dict:
    """The definitions, spelled out on the full similarity matrix with an explicit sort.

    Each ranking lists candidates by descending score; at equal scores non-matches come first (ties count against
    the query), then by index.
    """
    sim = (image_emb @ text_emb.T).tolist()
    num_images, num_texts = len(sim), len(text_to_image)
    out = {}
    for k in ks:
        hits = 0
        for i in range(num_images):
            order = sorted(range(num_texts), key=lambda t: (-sim[i][t], text_to_image[t] == i, t))
            hits += any(text_to_image[t] == i for t in order[:k])
        out[f"I2T_R@{k}"] = 100.0 * hits / num_images
    for k in ks:
        hits = 0
        for t in range(num_texts):
            g = text_to_image[t]
            order = sorted(range(num_images), key=lambda i: (-sim[i][t], i == g, i))
            hits += g in order[:k]
        out[f"T2I_R@{k}"] = 100.0 * hits / num_texts
    out["RSUM"] = sum(out.values())
    return out


def random_problem(seed: int, num_images: int = 23, dim: int = 8):
    """Random unit embeddings; 1 to 6 captions per image (unequal counts), captions shuffled, near their image."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 7, (num_images,), generator=g)
    text_to_image = torch.repeat_interleave(torch.arange(num_images), counts)
    text_to_image = text_to_image[torch.randperm(len(text_to_image), generator=g)]
    images = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=g), dim=1)
    texts = images[text_to_image] + 0.9 * torch.randn(len(text_to_image), dim, generator=g)
    return images, torch.nn.functional.normalize(texts, dim=1), text_to_image


def png_bytes(seed: int, size=(12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict], columns=("imbytes", "caption", "image_id", "id")) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    pq.write_table(table, path, row_group_size=4)
    return path


WORDS = ["red", "green", "blue", "dog", "cat", "house", "tree", "car", "boat", "sky", "grass", "road"]


def toy_rows(num_images: int = 6, captions_per_image: int = 2) -> list[dict]:
    rows = []
    for i in range(num_images):
        data = png_bytes(i, size=(40, 48))
        for c in range(captions_per_image):
            words = f"{WORDS[i % len(WORDS)]} {WORDS[(i + c + 1) % len(WORDS)]}"  # unique while i < 12
            rows.append({"imbytes": data, "caption": f"a photo of a {words} {i}.", "image_id": f"img{i}",
                         "id": i * 10 + c})
    return rows


class FakeModel:
    """A deterministic stand-in for SimSegModel: image embedding from pixels, text embedding from characters.

    Counts the images and captions it encodes.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    image_size = 8
    training = False

    def __init__(self, dim: int = 16):
        g = torch.Generator().manual_seed(0)
        self.text_proj = torch.randn(256, dim, generator=g)
        self.image_proj = torch.randn(3 * 8 * 8, dim, generator=g)
        self.images_encoded = 0
        self.image_calls = 0
        self.texts_encoded: list[str] = []

    def tokenize(self, texts, padding="longest"):
        length = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids[i, : len(t)] = torch.tensor(list(t.encode("latin-1", "replace")[:length]))
            mask[i, : len(t)] = 1
            self.texts_encoded.append(t)
        return {"input_ids": ids, "attention_mask": mask}

    def encode_text(self, input_ids, attention_mask):
        hist = torch.zeros(input_ids.shape[0], 256)
        hist.scatter_add_(1, input_ids, attention_mask.float())
        return torch.nn.functional.normalize(hist @ self.text_proj, dim=1)

    def encode_image(self, images):
        assert images.shape[1:] == (3, 8, 8)
        self.image_calls += 1
        self.images_encoded += images.shape[0]
        return torch.nn.functional.normalize(images.flatten(1) @ self.image_proj, dim=1)


def reference_metrics(model: FakeModel, rows: list[dict]) -> dict:
    """Metrics from encoding each distinct image and each caption directly, one at a time."""
    transform = eval_transform(model.mean, model.std, 9, 8)
    ids, images = [], []
    for r in rows:
        if r["image_id"] not in ids:
            ids.append(r["image_id"])
            images.append(model.encode_image(transform(Image.open(io.BytesIO(r["imbytes"])).convert("RGB"))[None]))
    texts = [model.encode_text(**model.tokenize([r["caption"]])) for r in rows]
    targets = [ids.index(r["image_id"]) for r in rows]
    return retrieval_metrics(torch.cat(images), torch.cat(texts), torch.tensor(targets))


def metric_values(m: dict) -> dict:
    return {k: v for k, v in m.items() if k.startswith(("I2T", "T2I", "RSUM"))}


# ----------------------------------------------------------------------------------------------------------------
# metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_with_unequal_caption_counts(seed):
    images, texts, targets = random_problem(seed)
    got = retrieval_metrics(images, texts, targets)
    want = brute_force(images, texts, targets.tolist())
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert all(isinstance(v, float) for v in got.values())
    assert 0 < got["I2T_R@1"] < 100 and 0 < got["T2I_R@1"] < 100  # a non-trivial problem


def test_recall_matches_topk_definition_without_ties():
    """The usual definition with torch.topk (no ties on random floats)."""
    images, texts, targets = random_problem(3, num_images=40)
    got = retrieval_metrics(images, texts, targets)
    sim = images @ texts.T
    for k in KS:
        top_texts = sim.topk(k, dim=1).indices  # (I, k)
        i2t = (targets[top_texts] == torch.arange(len(images))[:, None]).any(dim=1).float().mean() * 100
        top_images = sim.T.topk(k, dim=1).indices  # (T, k)
        t2i = (top_images == targets[:, None]).any(dim=1).float().mean() * 100
        assert got[f"I2T_R@{k}"] == pytest.approx(float(i2t))
        assert got[f"T2I_R@{k}"] == pytest.approx(float(t2i))
    assert got["RSUM"] == pytest.approx(sum(got[f"{d}_R@{k}"] for d in ("I2T", "T2I") for k in KS))


@pytest.mark.parametrize("chunk_size", [1, 3, 17, 10_000])
def test_chunked_equals_unchunked(chunk_size):
    images, texts, targets = random_problem(4, num_images=31)
    assert retrieval_metrics(images, texts, targets, chunk_size=chunk_size) == retrieval_metrics(
        images, texts, targets, chunk_size=100_000
    )


def test_ties_count_against_the_query():
    # Images 0 and 1 are identical: every caption scores both equally, so each caption's own image ranks second.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(images, texts, torch.tensor([0, 1, 2]), ks=(1, 2))
    assert m["T2I_R@1"] == pytest.approx(100 / 3)  # only caption 2 finds its image first
    assert m["T2I_R@2"] == pytest.approx(100.0)
    assert m["I2T_R@1"] == pytest.approx(100 / 3)
    assert m == brute_force(images, texts, [0, 1, 2], ks=(1, 2))
    # Order of the data does not matter: swapping the tied images gives the same numbers.
    swapped = retrieval_metrics(images[[1, 0, 2]], texts[[1, 0, 2]], torch.tensor([0, 1, 2]), ks=(1, 2))
    assert swapped == m


def test_near_ties_within_the_tolerance_count_against_the_query():
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    targets = torch.tensor([0, 1])
    close = torch.tensor([[1.0, 0.0], [1.0 - 5e-7, 0.0]])  # image 1 scores 5e-7 below image 0 for every text
    assert retrieval_metrics(close, texts, targets, ks=(1,))["T2I_R@1"] == 0.0  # a tie, against the query
    # Exact comparison: caption 0 finds image 0 strictly first.
    assert retrieval_metrics(close, texts, targets, ks=(1,), tie_tolerance=0.0)["T2I_R@1"] == 50.0
    apart = torch.tensor([[1.0, 0.0], [1.0 - 1e-3, 0.0]])  # real gaps are not ties
    assert retrieval_metrics(apart, texts, targets, ks=(1,))["T2I_R@1"] == 50.0


def test_constant_embeddings_score_zero():
    """A degenerate model gets no recall from the order of the data."""
    images, texts = torch.ones(12, 4), torch.ones(30, 4)
    m = retrieval_metrics(images, texts, torch.arange(30) % 12)
    assert m["I2T_R@1"] == 0 and m["T2I_R@10"] == 0 and m["RSUM"] == 0


def test_perfect_embeddings_score_100():
    images = torch.eye(12)
    targets = torch.arange(36) % 12
    m = retrieval_metrics(images, images[targets], targets)
    assert all(v == 100.0 for k, v in m.items() if k != "RSUM") and m["RSUM"] == 600.0


def test_metrics_reject_bad_inputs():
    images, texts, targets = random_problem(5, num_images=5)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(images, texts.clone().fill_(float("nan")), targets)
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(torch.cat([images, images[:1]]), texts, targets)
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(images, texts, targets + 5)
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(images, texts, targets[:-1])


def test_eval_transform_is_the_originals_square_resize_then_center_crop():
    """The paper's transform on a non-square image: torchvision's Resize((324, 324)) (squashed), CenterCrop(288)."""
    from torchvision import transforms as T

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 70, 3), dtype=np.uint8))
    mean, std = (0.48, 0.45, 0.4), (0.23, 0.22, 0.22)
    want = T.Compose([T.Resize((324, 324)), T.CenterCrop(288), T.ToTensor(), T.Normalize(mean, std)])(image)
    got = eval_transform(mean, std)(image)  # the defaults are the paper's
    assert got.shape == (3, 288, 288) and torch.equal(got, want)
    assert (retrieval.DEFAULT_RESIZE_SIZE, retrieval.DEFAULT_CROP_SIZE, retrieval.DEFAULT_RESIZE_MODE) == (
        324, 288, "square")
    # squashed, nearly the whole width is seen: a white band at 10-20 % of a wide image's width is in the crop,
    # while the short-side variant crops it away
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 4:8] = 255
    square = eval_transform((0.0,) * 3, (1.0,) * 3, resize_size=36, crop_size=32)(Image.fromarray(arr))
    short = eval_transform((0.0,) * 3, (1.0,) * 3, resize_size=36, crop_size=32, resize_mode="short")(
        Image.fromarray(arr))
    assert float(square[:, :, 2:5].min()) > 0.9 and float(short.max()) == 0.0


def test_eval_transform_short_side_variant():
    # 40 x 20 image: left half black, right half white. Short side 20 -> 36, so the width becomes 72; the central
    # 32 x 32 crop spans the boundary in its middle.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 20:] = 255
    x = eval_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize_size=36, crop_size=32,
                       resize_mode="short")(Image.fromarray(arr))
    assert x.shape == (3, 32, 32)
    assert float(x[:, :, :14].max()) == 0.0 and float(x[:, :, 18:].min()) == 1.0
    y = eval_transform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 36, 32, "short")(Image.fromarray(arr))
    assert torch.allclose(y, (x - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(InputError, match="resize mode"):
        eval_transform((0.0,) * 3, (1.0,) * 3, 36, 32, "long")


# ----------------------------------------------------------------------------------------------------------------
# readers and validation


def test_parquet_reader_streams_batches(tmp_path):
    rows = toy_rows(5, 3)
    path = write_parquet(tmp_path / "valid.parquet", rows)
    pairs = read_parquet_pairs(path, batch_rows=4)
    assert iter(pairs) is pairs  # lazily iterated, not a list
    got = list(pairs)
    assert [p.caption_id for p in got] == [r["id"] for r in rows]
    assert [p.image_id for p in got] == [r["image_id"] for r in rows]
    assert got[7].caption == rows[7]["caption"] and got[7].image == rows[7]["imbytes"]
    assert "row 7" in got[7].where
    assert [p.caption_id for p in read_pairs(tmp_path)] == [r["id"] for r in rows]  # a folder holding valid.parquet


def test_parquet_reader_never_reads_the_whole_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    path = write_parquet(tmp_path / "valid.parquet", toy_rows(6, 2))
    sizes = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in original(self, *args, **kwargs):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("read the whole file"))
    assert len(list(read_parquet_pairs(path, batch_rows=3))) == 12
    assert max(sizes) <= 3


def test_parquet_missing_columns_are_named(tmp_path):
    path = write_parquet(tmp_path / "valid.parquet", toy_rows(2, 1), columns=("imbytes", "caption"))
    with pytest.raises(InputError, match=r"valid\.parquet: missing column\(s\) image_id, id"):
        list(read_parquet_pairs(path))


def test_parquet_not_found_or_not_parquet(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        list(read_parquet_pairs(tmp_path / "nope.parquet"))
    bad = tmp_path / "valid.parquet"
    bad.write_text("caption,image\n")
    with pytest.raises(InputError, match="not a readable parquet"):
        list(read_parquet_pairs(bad))


def test_csv_and_json_readers_resolve_paths_relative_to_the_file(tmp_path):
    folder = tmp_path / "data"
    (folder / "imgs").mkdir(parents=True)
    for i in range(2):
        (folder / "imgs" / f"{i}.png").write_bytes(png_bytes(i))
    (folder / "captions.csv").write_text(
        "image,caption,image_id\nimgs/0.png,a cat,cat\nimgs/0.png,a small cat,cat\nimgs/1.png,a dog,dog\n"
    )
    got = list(read_table_pairs(folder / "captions.csv"))
    assert [(p.caption_id, p.image_id, p.caption) for p in got] == [(0, "cat", "a cat"), (1, "cat", "a small cat"),
                                                                  (2, "dog", "a dog")]
    assert got[2].image == folder / "imgs" / "1.png" and got[2].image.is_file()

    records = [{"image": "imgs/0.png", "caption": "a cat", "id": "c0"}, {"image": "imgs/1.png", "caption": "a dog"}]
    (folder / "captions.json").write_text(json.dumps(records))
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    for name in ("captions.json", "captions.jsonl"):
        got = list(read_pairs(folder / name))
        assert [(p.caption_id, p.image_id) for p in got] == [("c0", "imgs/0.png"), (1, "imgs/1.png")]
        assert got[1].image == folder / "imgs" / "1.png"



@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_caption_files_with_a_byte_order_mark_windows_line_ends_and_blank_lines(tmp_path, suffix):
    """Saved by a Windows editor (BOM, CRLF, blank lines), a caption file reads as its clean twin; bytes that are not
    UTF-8 are refused naming the line, never decoded into other characters."""
    records = [{"image": "a.png", "caption": "a cat"}, {"image": "b.png", "caption": "une pomme verte"}]
    if suffix == ".csv":
        clean = "image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in records)
    elif suffix == ".json":
        clean = json.dumps(records, indent=1) + "\n"
    else:
        clean = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / f"clean{suffix}").write_text(clean, encoding="utf-8")
    windows = "\ufeff" + clean.replace("\n", "\r\n\r\n" if suffix != ".json" else "\r\n")
    (tmp_path / f"windows{suffix}").write_bytes(windows.encode("utf-8"))

    def read(name):
        return [(p.caption_id, p.image_id, p.caption) for p in read_table_pairs(tmp_path / name)]

    assert read(f"windows{suffix}") == read(f"clean{suffix}")
    assert [c for _, _, c in read(f"windows{suffix}")] == ["a cat", "une pomme verte"]
    (tmp_path / f"latin{suffix}").write_bytes(clean.replace("pomme", "p\u00f4mme").encode("latin-1"))
    line = clean[:clean.index("pomme")].count("\n") + 1
    with pytest.raises(InputError, match=rf"latin\{suffix}: line {line}: not UTF-8 text \(byte 0xf4\)"):
        list(read_table_pairs(tmp_path / f"latin{suffix}"))

def test_table_reader_errors(tmp_path):
    (tmp_path / "a.csv").write_text("path,text\nx.png,a cat\n")
    with pytest.raises(InputError, match=r"a\.csv: missing column\(s\) image, caption"):
        list(read_table_pairs(tmp_path / "a.csv"))
    (tmp_path / "b.json").write_text(json.dumps([{"image": "x.png", "caption": "a"}, {"image": "y.png"}]))
    with pytest.raises(InputError, match=r"b\.json, row 1: missing caption"):
        list(read_table_pairs(tmp_path / "b.json"))
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        list(read_table_pairs(tmp_path / "c.json"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(InputError, match="unknown caption file type"):
        list(read_table_pairs(tmp_path / "d.txt"))
    with pytest.raises(InputError, match="file not found"):
        list(read_table_pairs(tmp_path / "missing.csv"))


@pytest.mark.parametrize(
    ("caption", "message"),
    [("", "caption id 7: empty caption"), ("   ", "caption id 7: empty caption"),
     (None, "caption id 7: caption is not a string"), (3, "caption id 7: caption is not a string")],
)
def test_bad_captions_are_named_by_id(caption, message):
    index = PairIndex()
    index.add(Pair(1, "a", "fine", b"x", "f, row 0"))
    with pytest.raises(InputError, match=f"f, row 1: {message}"):
        index.add(Pair(7, "a", caption, b"x", "f, row 1"))


def test_duplicate_caption_ids():
    index = PairIndex()
    index.add(Pair(1, "a", "one", b"x", "f, row 0"))
    with pytest.raises(InputError, match=r"f, row 1: duplicate caption id 1 \(first at f, row 0\)"):
        index.add(Pair(1, "b", "two", b"y", "f, row 1"))


def test_image_id_with_different_bytes():
    index = PairIndex()
    assert index.add(Pair(1, "a", "one", b"x", "r0")) == 0
    assert index.add(Pair(2, "b", "two", b"y", "r1")) == 1
    assert index.add(Pair(3, "a", "three", b"x", "r2")) is None  # same bytes: the same image
    with pytest.raises(InputError, match="r3: image_id 'a' carries different image data"):
        index.add(Pair(4, "a", "four", b"z", "r3"))
    assert index.text_to_image == [0, 1, 0] and index.image_ids == ["a", "b"]


def test_image_id_with_different_files(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(0))
    (tmp_path / "copy.png").write_bytes(png_bytes(0))
    (tmp_path / "b.png").write_bytes(png_bytes(1))
    index = PairIndex()
    index.add(Pair(1, "a", "one", tmp_path / "a.png"))
    index.add(Pair(2, "a", "two", tmp_path / "copy.png"))  # another file with the same content is fine
    with pytest.raises(InputError, match="image_id 'a' carries different image data"):
        index.add(Pair(3, "a", "three", tmp_path / "b.png"))


def test_duplicates_and_bad_bytes_in_a_parquet_fail_the_evaluation(tmp_path):
    rows = toy_rows(3, 2)
    rows[3] = {**rows[3], "imbytes": png_bytes(99, size=(40, 48))}  # img1's second row: another image
    path = write_parquet(tmp_path / "valid.parquet", rows)
    with pytest.raises(InputError, match="image_id 'img1' carries different image data"):
        evaluate_retrieval(FakeModel(), path, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# evaluation


def test_each_distinct_image_is_decoded_and_encoded_once(tmp_path, monkeypatch):
    rows = toy_rows(4, 5)  # 4 images x 5 captions
    path = write_parquet(tmp_path / "valid.parquet", rows)
    decoded = []
    original = retrieval.load_image
    monkeypatch.setattr(retrieval, "load_image", lambda src, name=None: decoded.append(name) or original(src, name))
    model = FakeModel()
    m = evaluate_retrieval(model, path, batch_size=3, progress=False)
    assert model.images_encoded == 4 and model.image_calls == 2  # batches of 3 then 1
    assert len(decoded) == 4 and all("image_id" in n for n in decoded)
    assert sorted(model.texts_encoded) == sorted(r["caption"] for r in rows)
    assert (m["num_rows"], m["num_images"], m["num_captions"], m["num_bad_images"]) == (20, 4, 20, 0)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_evaluation_matches_direct_encoding(tmp_path, batch_size):
    rows = toy_rows(6, 3)
    rows = rows[::2] + rows[1::2]  # captions of an image are not adjacent
    path = write_parquet(tmp_path / "valid.parquet", rows)
    model = FakeModel()
    m = evaluate_retrieval(model, path, batch_size=batch_size, chunk_size=5, progress=False)
    assert metric_values(m) == pytest.approx(reference_metrics(FakeModel(), rows))


def test_evaluation_accepts_pairs_and_csv(tmp_path):
    rows = toy_rows(3, 2)
    want = reference_metrics(FakeModel(), rows)
    pairs = [Pair(r["id"], r["image_id"], r["caption"], r["imbytes"]) for r in rows]
    assert metric_values(evaluate_retrieval(FakeModel(), pairs, progress=False)) == pytest.approx(want)
    lines = ["image,caption,image_id,id"]
    for r in rows:
        (tmp_path / f"{r['image_id']}.png").write_bytes(r["imbytes"])
        lines.append(f"{r['image_id']}.png,{r['caption']},{r['image_id']},{r['id']}")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    got = evaluate_retrieval(FakeModel(), tmp_path / "pairs.csv", progress=False)
    assert metric_values(got) == pytest.approx(want)


def test_missing_image_file_is_a_bad_image_and_empty_sources_fail(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(0))
    (tmp_path / "b.png").write_bytes(png_bytes(1))
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,one\nb.png,two\ngone.png,three\n")
    with pytest.raises(InputError, match=r"image_id 'gone\.png'.*file not found"):
        evaluate_retrieval(FakeModel(), tmp_path / "pairs.csv", progress=False)
    m = evaluate_retrieval(FakeModel(), tmp_path / "pairs.csv", skip_bad=True, progress=False)
    assert (m["num_images"], m["num_captions"], m["num_bad_images"]) == (2, 2, 1)
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(InputError, match="no caption rows"):
        evaluate_retrieval(FakeModel(), tmp_path / "empty.csv", progress=False)



def test_in_memory_pil_images_are_read_as_their_encoded_files_are():
    class Recording(FakeModel):
        def encode_image(self, images):
            self.seen = getattr(self, "seen", []) + [images.clone()]
            return super().encode_image(images)

    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((10, 12)) < 0.5, 0, 255)  # half the pixels transparent
    grey16 = (rng.random((10, 12)) * 65535).astype(np.uint16)
    for image in (Image.fromarray(rgba, mode="RGBA"), Image.fromarray(grey16)):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        seen = []
        for source in (image, buf.getvalue()):
            model = Recording()
            evaluate_retrieval(model, [Pair(0, "im", "a photo of a cat.", source)], progress=False)
            seen.append(model.seen[0])
        torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)


def test_a_missing_source_is_one_line_before_any_progress_line(tmp_path, capsys):
    with pytest.raises(InputError, match=r"missing\.csv: file not found$"):
        evaluate_retrieval(FakeModel(), tmp_path / "missing.csv", progress=True)
    assert capsys.readouterr().err == ""  # the bar over images was drawn, then the error came


def test_crop_size_must_suit_the_model(tmp_path):
    path = write_parquet(tmp_path / "valid.parquet", toy_rows(2, 1))
    with pytest.raises(ValueError, match="image_size=8"):  # a model without a patch size runs at its own size only
        evaluate_retrieval(FakeModel(), path, crop_size=16, progress=False)
    patched = FakeModel()
    patched.patch_size = 3
    with pytest.raises(ValueError, match="not a multiple of the model's patch size 3"):
        evaluate_retrieval(patched, path, crop_size=16, progress=False)


def test_a_model_runs_at_any_crop_size_without_being_rebuilt(vocab_dir, tmp_path):
    """A ViT built for 224 evaluates at 48: position embeddings resampled per call, the model unchanged, the same
    numbers as a model rebuilt at 48 (load_model(image_size=48))."""
    import simseg

    from simseg.checkpoint import save_model

    path = write_parquet(tmp_path / "valid.parquet", toy_rows(4, 2))
    torch.manual_seed(0)
    ckpt = save_model(simseg.load_model("tiny", tokenizer=vocab_dir), tmp_path / "ckpt")
    native = simseg.load_model(ckpt)
    before = native.weights_hash
    got = evaluate_retrieval(native, path, crop_size=48, resize_size=54, progress=False)
    assert native.weights_hash == before and native.image_size == 224
    rebuilt = evaluate_retrieval(simseg.load_model(ckpt, image_size=48), path, crop_size=48, resize_size=54,
                                 progress=False)
    assert metric_values(got) == pytest.approx(metric_values(rebuilt))


def test_evaluation_gives_each_module_its_own_mode_back(tiny_model, tmp_path):
    """A caller training with a frozen tower in eval mode (model.train(); model.image_encoder.eval()) keeps that mix."""
    import copy

    path = write_parquet(tmp_path / "valid.parquet", toy_rows(2, 1))
    model = copy.deepcopy(tiny_model).train()
    model.image_encoder.eval()
    modes = [m.training for m in model.modules()]
    evaluate_retrieval(model, path, crop_size=32, resize_size=36, progress=False)
    assert [m.training for m in model.modules()] == modes


def test_bad_images_are_reported_counted_and_skipped_on_request(tmp_path):
    rows = toy_rows(4, 2)
    for r in rows:
        if r["image_id"] == "img2":
            r["imbytes"] = b"not an image"
    path = write_parquet(tmp_path / "valid.parquet", rows)
    with pytest.raises(InputError, match=r"1 unreadable image\(s\) \(image_id 'img2'\)"):
        evaluate_retrieval(FakeModel(), path, progress=False)
    m = evaluate_retrieval(FakeModel(), path, skip_bad=True, progress=False)
    assert (m["num_images"], m["num_captions"], m["num_bad_images"], m["num_captions_dropped"]) == (3, 6, 1, 2)
    assert m["bad_images"][0]["image_id"] == "img2" and "image_id 'img2'" in m["bad_images"][0]["error"]
    kept = [r for r in rows if r["image_id"] != "img2"]
    assert metric_values(m) == pytest.approx(reference_metrics(FakeModel(), kept))


def test_rank_sharding_gathers_the_same_result(tmp_path, monkeypatch):
    """Two ranks (threads exchanging objects) each encode half the images and captions; the totals are exact."""
    import simseg.distributed as distributed

    world = 2
    barrier = threading.Barrier(world)
    slots: list = [None] * world
    local = threading.local()

    def all_gather_object(obj):
        slots[local.rank] = obj
        barrier.wait()
        out = list(slots)
        barrier.wait()
        return out

    monkeypatch.setattr(distributed, "all_gather_object", all_gather_object)
    rows = toy_rows(5, 3)
    path = write_parquet(tmp_path / "valid.parquet", rows)
    models = [FakeModel() for _ in range(world)]
    results: list = [None] * world
    errors: list = []

    def run(r: int) -> None:
        local.rank = r
        try:
            results[r] = evaluate_retrieval(models[r], path, batch_size=2, rank=r, world_size=world, progress=False)
        except Exception as e:  # surfaced below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert [m.images_encoded for m in models] == [3, 2]  # images 0, 2, 4 and 1, 3
    assert sorted(len(m.texts_encoded) for m in models) == [7, 8]
    want = reference_metrics(FakeModel(), rows)
    for m in results:
        assert metric_values(m) == pytest.approx(want)
        assert m["num_images"] == 5 and m["num_captions"] == 15


# ----------------------------------------------------------------------------------------------------------------
# CLI


