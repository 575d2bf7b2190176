"""The method registry: how the CLI and sweeps find a method by its spec name.

Each method module defines one `METHOD = Method(...)`: its config schema, its pipeline
(what `maestro run` calls), its Tune trainable (what `maestro sweep` calls per trial), and
what its spec's claims can name (arms, per-seed metrics). Modules are imported only when
their method is asked for, so a method's heavy dependencies (NLE, vLLM) cost nothing to the
others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from maestro.run import RunContext

# Spec name -> module. A method is listed here once it is implemented.
MODULES: dict[str, str] = {
    "motif": "maestro.methods.motif",
    "randomist": "maestro.methods.randomist",
}


class UnknownMethod(LookupError):
    """A spec named a method that is not registered."""


@dataclass(frozen=True)
class Method:
    """What a method module declares.

    - `config`: the pydantic schema of the spec's `config:` block.
    - `pipeline`: runs the whole experiment in a `RunContext` (stages, tracking, artifacts)
      and returns its summary metrics.
    - `trainable`: a Ray Tune function trainable `f(config: dict)` for one trial; the dict
      holds the resolved spec (`config`, `seed`, ...) with the sweep's values applied.
    - `arms`: the arms a spec's claims can compare, given its config.
    - `seed_metrics`: the metrics measured once per seed and arm that claims can name.
    """

    name: str
    config: type[BaseModel]
    pipeline: Callable[[RunContext], dict[str, float]]
    trainable: Callable[[dict[str, Any]], None] | None = None
    arms: Callable[[Any], tuple[str, ...]] | None = None
    seed_metrics: tuple[str, ...] = ()


def get_method(name: str) -> Method:
    """The registered method called `name`."""
    module_name = MODULES.get(name)
    if module_name is None:
        known = ", ".join(sorted(MODULES))
        raise UnknownMethod(f"no method {name!r} (known: {known})")
    method = importlib.import_module(module_name).METHOD
    if method.name != name:
        raise RuntimeError(f"{module_name} declares method {method.name!r}, registered as {name!r}")
    return method
