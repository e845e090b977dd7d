"""Synthesizers by name: the built-ins and those other packages register (entry-point group
``difftumor.synthesizers``)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from ...errors import DiffTumorInputError
from .base import TumorSynthesizer
from .diffusion import DiffusionSynthesizer
from .handcrafted import HandcraftedSynthesizer
from .rule_only import RuleOnlySynthesizer

_BUILTIN = {
    "diffusion": DiffusionSynthesizer,
    "handcrafted": HandcraftedSynthesizer,
    "rule-only": RuleOnlySynthesizer,
}


def _plugins() -> dict[str, Any]:
    return {entry.name: entry for entry in entry_points(group="difftumor.synthesizers")}


def _construct(name: str, factory: Any, kwargs: dict[str, Any]) -> TumorSynthesizer:
    """``factory(**kwargs)``, with an unknown setting reported as the user's mistake, naming the accepted ones."""
    import inspect

    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(set(kwargs) - set(accepted)) if not takes_any else []
    if unknown:
        raise DiffTumorInputError(
            f"the {name} synthesizer has no setting {', '.join(unknown)}",
            f"its settings: {', '.join(k for k in accepted if k != 'self')}",
        )
    return factory(**kwargs)


def available_synthesizers() -> list[str]:
    """Names accepted by :func:`get_synthesizer`: the built-ins and every installed plugin."""
    return sorted(set(_BUILTIN) | set(_plugins()))


def get_synthesizer(name: str, **kwargs: Any) -> TumorSynthesizer:
    """Construct the synthesizer registered as ``name`` with ``kwargs``.

    Raises:
        DiffTumorInputError: unknown name (the message lists the available ones).
    """
    if name in _BUILTIN:
        return _construct(name, _BUILTIN[name], kwargs)
    plugins = _plugins()
    if name in plugins:
        factory = plugins[name].load()
        synthesizer = _construct(name, factory, kwargs)
        if not isinstance(synthesizer, TumorSynthesizer):
            raise TypeError(f"entry point {name!r} did not produce a TumorSynthesizer")
        return synthesizer
    raise DiffTumorInputError(f"unknown synthesizer {name!r}", f"choose one of {', '.join(available_synthesizers())}")
