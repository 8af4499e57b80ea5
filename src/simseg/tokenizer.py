"""BERT WordPiece tokenisation from a Hugging Face model name or a local folder holding ``vocab.txt``.

Built on the ``tokenizers`` library's ``BertWordPieceTokenizer``, which reads the vocab file correctly (transformers 5's
``BertTokenizer(vocab_file=...)`` silently builds a 5-token vocabulary).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from simseg.errors import InputError
from simseg.files import atomic_write_bytes, atomic_write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class Tokenizer:
    """Lower-casing BERT WordPiece tokenizer with fixed-length or longest padding."""

    mask_token = "[MASK]"

    def __init__(self, vocab_file: str | os.PathLike):
        from tokenizers import BertWordPieceTokenizer

        self.vocab_file = Path(vocab_file)
        lines = self.vocab_file.read_text(encoding="utf-8").splitlines()
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
        length = max_length if padding == "max_length" else max(len(x) for x in ids)
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


def load_tokenizer(name_or_dir: str | os.PathLike | Tokenizer, local_only: bool = False) -> Tokenizer:
    """Load a tokenizer from a folder (or file) with ``vocab.txt``, or a Hugging Face model name.

    A model name is fetched through ``huggingface_hub`` (cached; needs internet the first time, unless
    ``local_only``, which only looks in the local cache).
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
    try:
        from huggingface_hub import hf_hub_download

        vocab = hf_hub_download(repo_id=name, filename="vocab.txt", local_files_only=local_only)
    except Exception as e:  # offline, unknown repo, ...
        raise InputError(
            f"tokenizer {name!r}: not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}); pass --tokenizer DIR with a vocab.txt"
        ) from None
    return Tokenizer(vocab)


def train_wordpiece_vocab(texts: list[str], out_dir: str | os.PathLike, vocab_size: int = 1000) -> Path:
    """Train a small lower-cased WordPiece vocabulary on ``texts`` and write ``out_dir/vocab.txt``."""
    from tokenizers import BertWordPieceTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                            show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        atomic_write_bytes(out_dir / "vocab.txt", Path(tok.save_model(tmp)[0]).read_bytes())
    return out_dir
