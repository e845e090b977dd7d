"""Training configurations: YAML files with ``--set key=value`` overrides, checked against dataclass schemas.

Every key has a default; a file only lists what differs. Unknown keys, wrong types and impossible values are
reported as one-line errors naming the key. Bounds are declared on the schema with ``Annotated`` types
(:data:`PositiveInt`, :data:`PositiveFloat`, :data:`Fraction`, :class:`Range`); every float must be finite.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from ..errors import DiffTumorInputError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric config value, declared with ``Annotated[int, Range(1)]``."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True

    def check(self, value: float, key: str) -> None:
        too_low = self.low is not None and (value < self.low if self.low_inclusive else value <= self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            low = "" if self.low is None else f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
            high = "" if self.high is None else f"<= {self.high:g}"
            raise DiffTumorInputError(
                f"config key {key} must be {' and '.join(b for b in (low, high) if b)}, got {value!r}"
            )


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_inclusive=False)]
NonNegativeFloat = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict, in order."""
    for override in overrides or []:
        if "=" not in override:
            raise DiffTumorInputError(f"--set {override!r} is not key=value", "e.g. --set optim.max_steps=200")
        key, text = override.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DiffTumorInputError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = value
    return raw


# One branch per supported annotation type (the typed-config schema), each a few lines.
def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *metadata = typing.get_args(annotation)
        value = _coerce(value, base, key)
        for bound in metadata:
            if isinstance(bound, Range):
                bound.check(value, key)
        return value
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(annotation)
        if value is None and type(None) in arguments:
            return None
        for argument in arguments:
            if argument is type(None):
                continue
            try:
                return _coerce(value, argument, key)
            except DiffTumorInputError:
                continue
        raise DiffTumorInputError(f"config key {key} has an invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise DiffTumorInputError(f"config key {key} must be a section (mapping), got {value!r}")
        return build(annotation, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise DiffTumorInputError(f"config key {key} must be a list, got {value!r}")
        arguments = typing.get_args(annotation)
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            if len(value) != len(arguments):
                raise DiffTumorInputError(f"config key {key} must have {len(arguments)} values, got {value!r}")
            return tuple(_coerce(v, item, key) for v, item in zip(value, arguments))
        item = arguments[0] if arguments else Any
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise DiffTumorInputError(f"config key {key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise DiffTumorInputError(f"config key {key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DiffTumorInputError(f"config key {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise DiffTumorInputError(f"config key {key} must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare no/yes (as in mixed_precision=no) as a boolean
            return "yes" if value else "no"
        if not isinstance(value, (str, int, float)):
            raise DiffTumorInputError(f"config key {key} must be a string, got {value!r}")
        return str(value)
    return value


def build(schema: type[T], raw: dict[str, Any], prefix: str = "") -> T:
    """Instantiate the dataclass ``schema`` from ``raw``, coercing types and rejecting unknown keys."""
    hints = typing.get_type_hints(schema, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise DiffTumorInputError(
            f"unknown config key {prefix}{unknown[0]}", f"valid keys here: {', '.join(sorted(fields))}"
        )
    values = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in raw.items()}
    instance = schema(**values)
    check = getattr(instance, "validate", None)
    if check is not None:
        check()
    return instance


#: Example configurations shipped inside the package: ``<trainer>_<name>.yaml``.
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def packaged_config_names(trainer: str) -> list[str]:
    """Names usable as ``--config NAME`` for ``trainer`` (e.g. ``released``, ``tiny_cpu``)."""
    return sorted(path.stem[len(trainer) + 1 :] for path in PACKAGED_CONFIGS.glob(f"{trainer}_*.yaml"))


def resolve_config(path: str | os.PathLike, trainer: str | None = None) -> Path:
    """A config file path: the path itself when it exists, else a packaged config named ``path`` for ``trainer``."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    name = str(path)
    if trainer is not None and "/" not in name and not name.endswith((".yaml", ".yml")):
        packaged = PACKAGED_CONFIGS / f"{trainer}_{name}.yaml"
        if packaged.is_file():
            return packaged
    names = ", ".join(packaged_config_names(trainer)) if trainer else "released, tiny_cpu"
    raise DiffTumorInputError(f"config {path} does not exist", f"pass a YAML file or a packaged config name ({names})")


def load_config(
    schema: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None, trainer: str | None = None
) -> T:
    """Read a YAML config (a file, or the name of a packaged one for ``trainer``), apply overrides, build
    ``schema``."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config(path, trainer)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise DiffTumorInputError(f"config {path} is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise DiffTumorInputError(f"config {path} must be a mapping of keys to values")
    return build(schema, apply_overrides(raw, overrides))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict view of a config (for saving next to a run)."""
    return dataclasses.asdict(config)
