"""A generation config from a dict, a YAML file or a preset: strict YAML (no duplicate keys), errors as one line per
field, non-finite numbers refused, dotted overrides (`set_dotted`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from temsynth.resources import package_dir

from .config_schema import ConfigError, GenerationConfig

PRESETS_DIR = package_dir("generators", "presets")  # package data (setup.cfg), read as a wheel installs it


def format_errors(err: ValidationError, source: str, what: str = "generation config") -> str:
    lines = [f"invalid {what} ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(
            ("function-", "Fixed", "Uniform", "Choice", "Integers", "TruncNormal", "LogUniform", "Empirical",
             "Linspace", "tagged-union")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; units go in the name, e.g. defocus_nm)"
        lines.append(f"  - {loc or '<top>'}: {msg}")
    # Union alternatives repeat the same location; keep each message once.
    seen, out = set(), []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return "\n".join(out)


def non_finite_fields(data: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every NaN or infinite number anywhere in a raw config (YAML's .nan, .inf, 1e999)."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [prefix or "<top>"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite_fields(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in non_finite_fields(v, f"{prefix}[{i}]")]
    return []


def reject_non_finite(data: Any, source: str, what: str = "generation config") -> None:
    bad = non_finite_fields(data)
    if bad:
        raise ConfigError(f"invalid {what} ({source}):\n" + "\n".join(
            f"  - {p}: NaN and infinity are not numbers a config can use; give a finite value" for p in bad))


def from_dict(data: dict, source: str = "<dict>", base_dir: str | Path | None = None) -> GenerationConfig:
    """`base_dir`: where relative crystal-file paths (materials: {name: {cif: ...}}) are found; the config
    file's folder when loaded from a file, else the working directory."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid generation config ({source}): expected a mapping at the top level")
    reject_non_finite(data, source)
    try:
        return GenerationConfig.model_validate(data, context={"base_dir": str(base_dir) if base_dir else None})
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may override on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if first != key_node.start_mark.line + 1:
                    raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """The one reader of every YAML the project takes (generation, training, study configs and the presets): a
    mapping, or a one-line ConfigError for a missing, unreadable, empty or non-mapping file or a repeated key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is a folder, not a YAML file; name the .yaml file")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 YAML") from None
    except _DuplicateKey as err:
        raise ConfigError(f"{what} file {path}: key {err.key!r} is given twice (lines {err.first} and {err.second}); "
                          "keep one") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except OSError as err:
        raise ConfigError(f"{what} file {path} cannot be read: {err.strerror}") from None
    if data is None:
        raise ConfigError(f"{what} file {path} is empty (or only comments); give its fields as `name: value` lines")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must be a mapping of `name: value` lines at the top level, "
                          f"not a {type(data).__name__}")
    return data


def load_config(path: str | Path) -> GenerationConfig:
    return from_dict(read_yaml(path, "generation config"), str(path), Path(path).parent)


def default_config() -> GenerationConfig:
    return GenerationConfig()


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str, **overrides: Any) -> GenerationConfig:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name!r}; available: {preset_names()}")
    return from_dict(set_dotted(read_yaml(path, "preset"), overrides, "override"), f"preset {name}")


def set_dotted(data: dict, overrides: dict[str, Any], where: str = "--set") -> dict:
    """Set dotted fields (`structure.radius_A`) of a config mapping in place, making sections as needed; returns
    it. A step through a value that is not a section is one line naming the key (`where`: how it was given)."""
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {key}: {p} is not a section of the config")
        node[leaf] = value
    return data
