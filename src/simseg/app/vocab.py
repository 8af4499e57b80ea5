"""``simseg vocab``: train a small WordPiece vocabulary on your own captions (what ``simseg demo`` does internally).

    simseg vocab captions.txt my-vocab                 # one caption per line
    simseg vocab data/train_anno.csv my-vocab --vocab-size 4000
    simseg train tiny model.tokenizer=my-vocab data.train='[{type: csv, path: data/train_anno.csv}]'

A model trained from scratch on a narrow caption set needs far fewer word embeddings than BERT's 30,522; the
vocabulary folder (``vocab.txt``) is what ``model.tokenizer`` and ``--tokenizer`` take.
"""

from __future__ import annotations

import argparse

from simseg.app.options import check_at_least, output_dir

HELP = "train a small WordPiece vocabulary on a captions file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captions", metavar="CAPTIONS_FILE",
                        help="a text file (one caption per line) or a CSV / TSV file with a header row")
    parser.add_argument("out", metavar="OUT_DIR", help="folder to write vocab.txt into (created if needed)")
    parser.add_argument("--vocab-size", type=int, default=1000,
                        help="largest vocabulary, special tokens included (default 1000)")
    parser.add_argument("--column", default="caption", help="the caption column of a CSV / TSV (default caption)")


def run(args: argparse.Namespace) -> int:
    """Read the captions, train the vocabulary, write ``OUT_DIR/vocab.txt`` and say how to use it."""
    from simseg.tokenizer import SPECIAL_TOKENS, load_tokenizer, read_captions, train_wordpiece_vocab

    check_at_least("--vocab-size", args.vocab_size, len(SPECIAL_TOKENS) + 1)
    captions = read_captions(args.captions, column=args.column)
    out = output_dir(args.out, option="OUT_DIR")
    train_wordpiece_vocab(captions, out, vocab_size=args.vocab_size)
    size = load_tokenizer(out).vocab_size  # read back: checks the file and gives the real size
    print(f"{out / 'vocab.txt'}: {size} tokens from {len(captions)} captions of {args.captions}")
    print(f"train with it: simseg train CONFIG model.tokenizer={out} data.train=...")
    return 0
