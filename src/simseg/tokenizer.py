"""BERT WordPiece tokenisation from a local folder holding ``vocab.txt``, the shipped BERT vocabulary, or a Hugging
Face model name.

``bert-base-uncased`` (the text encoder of SimSeg and of the paper presets) needs no network: its vocabulary ships
with the package (``simseg/vocab/bert-base-uncased.txt``, Apache-2.0, see the NOTICE there). Any other Hugging Face
name is looked up in the local Hugging Face cache first and then fetched once; without a network that fails in one
line within seconds instead of the hub client's retry loop.

Built on the ``tokenizers`` library's ``BertWordPieceTokenizer``, which reads the vocab file correctly (transformers 5's
``BertTokenizer(vocab_file=...)`` silently builds a 5-token vocabulary).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from simseg.errors import InputError
from simseg.files import atomic_write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

#: Hugging Face names whose vocabulary ships with the package (file name in ``simseg/vocab``).
SHIPPED_VOCABS = {"bert-base-uncased": "bert-base-uncased.txt",
                  "google-bert/bert-base-uncased": "bert-base-uncased.txt"}
#: sha256 of the shipped files: BERT-Base, Uncased's vocab.txt, byte for byte.
SHIPPED_SHA256 = {"bert-base-uncased.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"}
#: Seconds a network check may take before a Hugging Face name is declared unreachable.
HUB_CONNECT_TIMEOUT_S = 3.0


class Tokenizer:
    """Lower-casing BERT WordPiece tokenizer with fixed-length or longest padding."""

    mask_token = "[MASK]"

    def __init__(self, vocab_file: str | os.PathLike):
        from tokenizers import BertWordPieceTokenizer

        self.vocab_file = Path(vocab_file)
        try:
            lines = self.vocab_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise InputError(f"{self.vocab_file}: not a vocabulary (not UTF-8 text: byte {e.start})") from None
        if not lines:
            raise InputError(f"{self.vocab_file}: empty vocabulary file")
        self.vocab: list[str] = lines
        index = {tok: i for i, tok in enumerate(lines)}
        missing = [t for t in SPECIAL_TOKENS if t not in index]
        if missing:
            raise InputError(f"{self.vocab_file}: not a BERT vocabulary (missing special tokens {missing})")
        self.pad_id, self.unk_id = index["[PAD]"], index["[UNK]"]
        self.cls_id, self.sep_id, self.mask_id = index["[CLS]"], index["[SEP]"], index["[MASK]"]
        self._tok = BertWordPieceTokenizer(index, lowercase=True)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(
        self, texts: list[str] | str, max_length: int = 25, padding: str = "max_length"
    ) -> dict[str, torch.Tensor]:
        """Tokenise to ``input_ids`` / ``attention_mask`` (B, L) LongTensors, truncated to ``max_length``.

        ``padding="max_length"`` pads to ``max_length`` (the original); ``"longest"`` pads to the longest text in the
        batch, which gives the same features from BERT (padding is masked out of attention) at a fraction of the cost.
        """
        if isinstance(texts, str):
            texts = [texts]
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        encs = self._tok.encode_batch(list(texts))
        ids = [e.ids[: max_length - 1] + [self.sep_id] if len(e.ids) > max_length else e.ids for e in encs]
        length = max_length if padding == "max_length" else max((len(x) for x in ids), default=0)
        input_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def wordpieces(self, text: str) -> list[str]:
        """Word pieces of ``text`` without [CLS] / [SEP] (e.g. ``["a", "photo", "of", "cat", "##s"]``)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` the vocabulary cannot spell (they become ``[UNK]``)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        words = {w for w, tok in zip(enc.word_ids, enc.tokens) if tok == "[UNK]" and w is not None}
        spans = [enc.offsets[i] for i, w in enumerate(enc.word_ids) if w in words]
        seen: list[str] = []
        for start, end in spans:
            if text[start:end] not in seen:
                seen.append(text[start:end])
        return seen

    @staticmethod
    def join_wordpieces(pieces: list[str]) -> str:
        """Inverse of :meth:`wordpieces`: "##" pieces are glued to the previous piece."""
        out = ""
        for p in pieces:
            if p.startswith("##") and out:
                out += p[2:]
            else:
                out += (" " if out else "") + p
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vocab.txt`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # from memory: the source file may be gone (e.g. a pruned training checkpoint)
        atomic_write_text(directory / "vocab.txt", "".join(tok + "\n" for tok in self.vocab))
        return directory


def shipped_vocab(name: str) -> Path | None:
    """The path of the vocabulary shipped for the Hugging Face name ``name``, or None when none ships."""
    filename = SHIPPED_VOCABS.get(name)
    if filename is None:
        return None
    return Path(str(resources.files("simseg") / "vocab" / filename))


def load_tokenizer(name_or_dir: str | os.PathLike | Tokenizer, local_only: bool = False) -> Tokenizer:
    """Load a tokenizer from a folder (or file) with ``vocab.txt``, a shipped vocabulary, or a Hugging Face name.

    Order: an existing folder or file; a name whose vocabulary ships with simseg (``bert-base-uncased``: no network);
    the local Hugging Face cache; a download through ``huggingface_hub`` (skipped with ``local_only`` or
    ``HF_HUB_OFFLINE=1``; when the hub cannot be reached at all, one error line within
    :data:`HUB_CONNECT_TIMEOUT_S` seconds instead of the hub client's retry loop).

    Raises:
        InputError: a folder without ``vocab.txt``, a path that does not exist, or a name that is neither shipped,
            cached nor downloadable.
    """
    if isinstance(name_or_dir, Tokenizer):
        return name_or_dir
    path = Path(name_or_dir)
    if path.is_dir():
        vocab = path / "vocab.txt"
        if not vocab.is_file():
            raise InputError(f"{path}: tokenizer folder has no vocab.txt")
        return Tokenizer(vocab)
    if path.is_file():
        return Tokenizer(path)
    name = str(name_or_dir)
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise InputError(f"{name}: tokenizer folder not found")
    shipped = shipped_vocab(name)
    if shipped is not None and shipped.is_file():
        return Tokenizer(shipped)
    return Tokenizer(_hub_vocab(name, local_only))


def _hub_vocab(name: str, local_only: bool) -> Path:
    """``vocab.txt`` of a Hugging Face repository: from the local cache, else downloaded (when allowed and the hub
    answers)."""
    from huggingface_hub import constants, hf_hub_download

    hint = "pass --tokenizer DIR (a folder with vocab.txt), or run 'simseg vocab CAPTIONS OUT_DIR' to train one"
    try:
        return Path(hf_hub_download(repo_id=name, filename="vocab.txt", local_files_only=True))
    except Exception:  # not cached (or not a valid repo name): try the hub below, if allowed
        pass
    if local_only or constants.HF_HUB_OFFLINE:
        raise InputError(f"tokenizer {name!r}: not a local folder and not in the local Hugging Face cache "
                         f"(offline); {hint}")
    unreachable = _hub_unreachable(constants.ENDPOINT)
    if unreachable:
        raise InputError(f"tokenizer {name!r}: not a local folder, not in the local Hugging Face cache, and the hub "
                         f"cannot be reached ({unreachable}); {hint}")
    try:
        return Path(hf_hub_download(repo_id=name, filename="vocab.txt"))
    except Exception as e:  # unknown repo, no vocab.txt, network lost half-way, ...
        raise InputError(f"tokenizer {name!r}: not a local folder and could not be fetched from the Hugging Face hub "
                         f"({type(e).__name__}); {hint}") from None


def _hub_unreachable(endpoint: str, timeout: float = HUB_CONNECT_TIMEOUT_S) -> str | None:
    """Why ``endpoint`` cannot be reached (name resolution or TCP connect within ``timeout``), or None when it can.

    Behind an HTTP(S) proxy the proxy decides: no direct check is made.
    """
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return None
    parts = urlsplit(endpoint)
    host = parts.hostname or endpoint
    port = parts.port or (443 if parts.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"cannot resolve {host}: no network?"
    except TimeoutError:
        return f"{host}:{port}: no answer within {timeout:g} s"
    except OSError as e:
        return f"{host}:{port}: {e.strerror or type(e).__name__}"


def train_wordpiece_vocab(texts: list[str], out_dir: str | os.PathLike, vocab_size: int = 1000) -> Path:
    """Build a small lower-cased WordPiece vocabulary from ``texts`` and write ``out_dir/vocab.txt``.

    The texts are normalised and split as BERT does (the ``tokenizers`` library's ``BertNormalizer`` and
    ``BertPreTokenizer``). The vocabulary holds the special tokens, every character seen (as a word start and as a
    ``##`` continuation, so any word of the texts tokenizes without ``[UNK]``), then whole words, most frequent
    first, as many as ``vocab_size`` leaves room for. Everything is sorted, so the same texts give the same file in
    every run (the ``tokenizers`` WordPiece trainer breaks its ties in hash order, which changes between processes).
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(piece for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    known = set(vocab)
    room = max(0, vocab_size - len(vocab))
    ranked = sorted((w for w in words if w not in known), key=lambda w: (-words[w], w))
    vocab += ranked[:room]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "vocab.txt", "".join(f"{token}\n" for token in vocab))
    return out_dir


def read_captions(path: str | os.PathLike, column: str = "caption") -> list[str]:
    """The captions of a text file (one per line) or a CSV / TSV file with a header row (the ``column`` column).

    ``.csv`` is comma-separated and ``.tsv`` / ``.tab`` tab-separated; ``.json`` / ``.jsonl`` are refused (their
    lines are records, not captions); any other suffix is read as plain text. A byte-order mark and Windows line
    endings are accepted; blank captions are left out.

    Raises:
        InputError: the file is missing, JSON, not UTF-8 text, has no ``column`` column, or holds no caption.
    """
    import csv
    import io

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder, not a captions file' if path.is_dir() else 'file not found'}")
    if path.suffix.lower() in (".json", ".jsonl"):
        raise InputError(f"{path}: a JSON file, whose lines would be read as captions; give a text file (one caption "
                         f"per line) or a CSV / TSV with a {column!r} column")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab"):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if suffix == ".csv" else "\t")
        try:
            header = [h.strip() for h in next(reader, [])]
            if column not in header:
                shown = ", ".join(repr(h) for h in header[:8]) or "none"
                raise InputError(f"{path}: no {column!r} column in the header row (columns: {shown})")
            index = header.index(column)
            captions = [row[index].strip() for row in reader if len(row) > index]
        except csv.Error as e:
            raise InputError(f"{path}: line {reader.line_num}: not valid {suffix[1:].upper()} ({e})") from None
    else:
        captions = [line.strip() for line in text.splitlines()]
    captions = [c for c in captions if c]
    if not captions:
        raise InputError(f"{path}: no captions in the file")
    return captions
