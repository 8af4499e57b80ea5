"""The allocator setting of the simseg command: freed tensor memory is reused instead of faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from simseg import allocator

# Runs a 2-block ViT-S (timm, random weights; a forward makes and frees blocks of 0.5-2 MiB in turn) and prints
# the minor page faults per forward over 20 after a warm-up.
FAULTS = """
import json, resource, sys
import timm, torch
from simseg.allocator import from_environment
taken = from_environment({"SIMSEG_MALLOC": sys.argv[1]})
torch.set_num_threads(1)
vit = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2, img_size=288).eval()
with torch.inference_mode():
    x = torch.randn(1, 3, 288, 288)
    for _ in range(3):
        vit.forward_features(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        vit.forward_features(x)
print(json.dumps({"taken": taken, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20}))
"""

linux_glibc = pytest.mark.skipif(allocator._mallopt() is None,
                                 reason="glibc's mallopt is not available here")


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.splitlines()[-1])


@linux_glibc
def test_freed_tensor_memory_is_reused_without_page_faults():
    default, kept = _faults("default"), _faults("keep")
    assert default["taken"] is False and kept["taken"] is True
    hidden_pages = 325 * 1536 * 4 // 4096  # of one (325, 1536) float32 activation
    assert default["faults"] > hidden_pages  # blocks are mapped afresh and faulted in page by page
    assert kept["faults"] * 10 < default["faults"]  # freed blocks are reused


def test_unknown_value_names_the_variable():
    with pytest.raises(ValueError, match=r"SIMSEG_MALLOC='fast': expected one of keep, default"):
        allocator.from_environment({"SIMSEG_MALLOC": "fast"})


def test_default_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_mallopt", lambda: pytest.fail("mallopt called"))
    assert allocator.from_environment({"SIMSEG_MALLOC": "default"}) is False


def test_without_glibc_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(allocator, "_mallopt", lambda: None)
    assert allocator.keep_freed_memory() is False
    assert allocator.from_environment({}) is False


def test_console_script_rejects_a_bad_value():
    out = subprocess.run([sys.executable, "-m", "simseg", "--version"], capture_output=True, text=True,
                         env={**os.environ, "SIMSEG_MALLOC": "bogus"})
    assert out.returncode == 2
    assert out.stderr.strip() == "simseg: error: SIMSEG_MALLOC='bogus': expected one of keep, default"
