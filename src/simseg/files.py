"""Atomic file writes: every file simseg writes goes to a temporary name in the same folder and is renamed into
place, so a crash or a kill never leaves a half-written checkpoint, cache entry, label or report behind."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, fsynced, then ``os.replace``).

    The parent folder must exist. On any error the temporary file is removed and the old ``path`` (if any) is
    left as it was.
    """
    path = Path(path)
    # a unique name opened exclusively (not mkstemp, whose 0600 mode would ignore the user's umask)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`atomic_write_text` of ``obj`` as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
