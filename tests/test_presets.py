"""Dense-protocol presets: one entry per benchmark, valid protocol parameters, the background rule."""

import pytest

from simseg.errors import ConfigError
from simseg.presets import DEFAULT_DENSE_PRESET, DENSE_PRESETS, PRESET_SOURCES, dense_preset
from simseg.segdata import TABLE_ORDER
from simseg.segment import DenseParams, make_params

WITH_BACKGROUND = {"pascal_voc", "pascal_context", "coco_object"}


@pytest.mark.parametrize("preset", list(DENSE_PRESETS))
def test_every_benchmark_has_valid_dense_parameters(preset):
    assert set(DENSE_PRESETS[preset]) == set(TABLE_ORDER) and preset in PRESET_SOURCES
    for benchmark in TABLE_ORDER:
        params = dense_preset(preset, benchmark)
        assert set(params) == {"short_side", "crop_size", "stride", "bg_threshold"}
        assert isinstance(make_params("dense", **params), DenseParams)
        assert params["stride"] <= params["crop_size"] <= params["short_side"]
        # background: a probability threshold where the benchmark has a background class, never elsewhere
        assert (params["bg_threshold"] > 0) == (benchmark in WITH_BACKGROUND)


def test_sclip_values_and_copies():
    assert DEFAULT_DENSE_PRESET == "sclip"
    assert dense_preset("sclip", "pascal_voc") == {"short_side": 336, "crop_size": 224, "stride": 112,
                                                   "bg_threshold": 0.1}
    assert dense_preset("sclip", "coco_stuff")["short_side"] == 448
    assert dense_preset("sclip", "cityscapes")["short_side"] == 560
    assert dense_preset("proxyclip", "ade20k") == {"short_side": 448, "crop_size": 336, "stride": 112,
                                                   "bg_threshold": 0.0}
    # callers get their own dict; the table is read-only
    dense_preset("sclip", "ade20k")["short_side"] = 1
    assert dense_preset("sclip", "ade20k")["short_side"] == 336
    with pytest.raises(TypeError):
        DENSE_PRESETS["sclip"]["ade20k"]["short_side"] = 1  # type: ignore[index]


def test_unknown_preset_or_benchmark():
    with pytest.raises(ConfigError, match="sclip, proxyclip"):
        dense_preset("trident", "pascal_voc")
    with pytest.raises(ConfigError, match="ade847"):
        dense_preset("sclip", "ade847")
