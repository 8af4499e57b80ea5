"""Configuration: packaged YAML presets, an optional experiment YAML, then strict ``key=value`` overrides.

Config is read only at entry points; everything below them takes plain arguments.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from simseg.errors import ConfigError, InputError, describe_yaml_error, one_line
from simseg.files import atomic_write_text
from simseg.schema import validate_config

#: Mappings whose keys are passed on to a library (timm / transformers): overrides may add new keys there.
FREEFORM = ("model.vision.kwargs", "model.text.config")


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("simseg.configs").iterdir() if p.name.endswith(".yaml"))


def _omegaconf_problem(e: OmegaConfBaseException) -> str:
    """An OmegaConf error in one line, naming its key (its own text adds ``full_key:`` / ``object_type=`` lines)."""
    msg = one_line(str(getattr(e, "msg", None) or e).split("\n")[0])
    key = getattr(e, "full_key", None)
    if isinstance(e, ConfigKeyError) and key:
        hint = re.search(r"Did you mean: '([^']+)'", msg)
        return f"{key}: unknown config key" + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
    return f"{key}: {msg}" if key and str(key) not in msg else msg


def _read_yaml(path_or_text: str | os.PathLike, label: str) -> DictConfig:
    try:
        cfg = OmegaConf.load(path_or_text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}: not a YAML text file (not UTF-8: byte {e.start})") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{label}: invalid YAML ({_omegaconf_problem(e)})") from None
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"{label}: invalid YAML ({type(e).__name__}: {describe_yaml_error(e)})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{label}: a config must be a mapping at the top level")
    return cfg


def load_preset(name: str) -> DictConfig:
    """One of the packaged presets (``configs/*.yaml``: see :func:`preset_names`)."""
    res = resources.files("simseg.configs") / f"{name}.yaml"
    if not res.is_file():
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(preset_names())}")
    with resources.as_file(res) as p:
        return _read_yaml(p, f"preset {name}")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        parsed = OmegaConf.create({"v": value}) if value == "" else OmegaConf.create(f"v: {value}")
    except OmegaConfBaseException as e:  # interpolation grammar: its text adds full_key / object_type lines
        raise ConfigError(f"override {text!r}: invalid value ({one_line(str(e).splitlines()[0])})") from None
    except Exception as e:  # YAML syntax of the value
        raise ConfigError(f"override {text!r}: invalid value ({describe_yaml_error(e)})") from None
    # not resolved here: an interpolation (${train.output_dir}, ${oc.env:HOME}) is resolved with the whole config
    return key, OmegaConf.to_container(parsed, resolve=False)["v"]


def apply_overrides(cfg: DictConfig, overrides: list[str] | None) -> DictConfig:
    """Apply ``key.sub=value`` overrides; a key that does not exist in ``cfg`` is an error naming it."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, True)
    for text in overrides or []:
        key, value = parse_override(text)
        freeform = key.rsplit(".", 1)[0] in FREEFORM
        if not freeform and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"unknown config key {key!r} in override {text!r}")
        try:
            OmegaConf.update(cfg, key, value, merge=False, force_add=freeform)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {text!r}: {_omegaconf_problem(e)}") from None
    return cfg


def load_config(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> DictConfig:
    """A preset name or a YAML file, then overrides, validated (:func:`simseg.schema.validate_config`).

    An experiment YAML may name a ``base`` preset it extends.

    Raises:
        ConfigError: unknown preset, invalid YAML, unknown key, or a value the schema does not allow (one line
            naming the key, the value and what is allowed).
    """
    path = Path(name_or_path)
    if str(name_or_path) in preset_names():
        cfg = load_preset(str(name_or_path))
    elif path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        cfg = _read_yaml(path, str(path))
        base = cfg.pop("base", None)
        if base is not None:
            merged = load_preset(str(base))
            OmegaConf.set_struct(merged, True)
            try:
                cfg = OmegaConf.merge(merged, cfg)
            except OmegaConfBaseException as e:
                raise ConfigError(f"{path}: {_omegaconf_problem(e)}") from None
    else:
        raise ConfigError(f"{name_or_path!r} is neither a preset ({', '.join(preset_names())}) nor a YAML file")
    cfg = apply_overrides(cfg, overrides)
    validate_config(to_dict(cfg))
    return cfg


def save_config(cfg: DictConfig | dict, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(cfg), resolve=True))


def to_dict(cfg: DictConfig | dict) -> dict:
    """The config as plain containers, ``${...}`` interpolations resolved.

    Raises:
        ConfigError: an interpolation that does not resolve (named by its key).
    """
    try:
        return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve the config: {_omegaconf_problem(e)}") from None
