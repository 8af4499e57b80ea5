"""The paper's learning-rate schedule, against its formula written out with the original's numbers."""

from __future__ import annotations

import math

import pytest

from simseg.optim import lr_scale, warmup_steps


def _original_scale(step: int, total: int) -> float:
    """The original's schedule: int(total * 0.025) warm-up steps rising linearly from lr 0 at step 0, then
    0.1 + 0.9 * 0.5 * (1 + cos(pi * progress)) over the remaining steps."""
    n_warm = int(total * 0.025)
    if step < n_warm:
        return step / n_warm
    progress = (step - n_warm) / (total - n_warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(("total", "n_warm"), [(1000, 25), (140, 3), (180, 4), (399, 9), (73242, 1831)])
def test_default_schedule_is_the_originals_formula(total, n_warm):
    """With the defaults (2.5% warm-up, floor 0.1): 140 x 0.025 = 3.5 and 180 x 0.025 = 4.5 are truncated (3 and 4
    warm-up steps, not the rounded 4), 399 x 0.025 = 9.975 gives 9 (not 10)."""
    assert warmup_steps(total, 0.025) == n_warm
    steps = sorted({0, 1, n_warm - 1, n_warm, n_warm + 1, total // 3, total // 2, total - 2, total - 1, total})
    for step in steps:
        assert lr_scale(step, total) == pytest.approx(_original_scale(step, total), rel=1e-12, abs=1e-15), step
    assert lr_scale(0, total) == 0.0  # warm-up starts from lr 0
    assert lr_scale(n_warm, total) == 1.0  # the peak right after the warm-up
    assert lr_scale(total, total) == pytest.approx(0.1)  # the floor at the end


def test_schedule_floor_and_warmup_are_parameters():
    # floor f: f + (1 - f) * 0.5 * (1 + cos(pi * progress)); warm-up 10% of 200 = 20 steps
    assert lr_scale(10, 200, warmup=0.1, floor=0.0) == pytest.approx(0.5)
    assert lr_scale(20 + 45, 200, warmup=0.1, floor=0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 180)))
    assert lr_scale(200, 200, warmup=0.1, floor=0.3) == pytest.approx(0.3)
    assert lr_scale(0, 200, warmup=0.0) == 1.0  # no warm-up: the cosine starts at once
