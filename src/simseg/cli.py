"""Compatibility alias: the command line lives in :mod:`simseg.app.cli` (this module will be removed)."""

from simseg.app.cli import entry, main

__all__ = ["entry", "main"]
