"""The method registry: how the CLI and sweeps find a method by its spec name.

Each method is a folder `methods/<name>/` whose `__init__.py` declares one
`METHOD = Method(...)` (docs/architecture.md shows RANDOMIST as the worked example).
Modules are imported only when their method is asked for, so a method's heavy
dependencies (NLE, vLLM) cost nothing to the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from maestro.run import RunContext, TrialContext, TrialResult

# Spec name -> module. A method is listed here once it is implemented.
MODULES: dict[str, str] = {
    "cerl": "maestro.methods.cerl",
    "cerl_continuous": "maestro.methods.cerl.continuous",
    "east": "maestro.methods.east",
    "mage": "maestro.methods.mage",
    "maestromotif": "maestro.methods.maestromotif",
    "motif": "maestro.methods.motif",
    "randomist": "maestro.methods.randomist",
    "randomist_mcmc": "maestro.methods.randomist.mcmc",
}


class UnknownMethod(LookupError):
    """A spec named a method that is not registered."""


@dataclass(frozen=True)
class Method:
    """What a method declares. An experiment is `prepare` once, then `trial` for every
    (arm, seed) of the spec's `trials:` block (or every point of its sweep), then
    `aggregate`; `maestro.run` drives them.

    - `config`: the pydantic schema of the spec's `config:` block.
    - `trial(ctx: TrialContext) -> dict[str, float]`: one seed of one arm. It logs with
      `ctx.log(metrics, step)`, keeps its state with `ctx.checkpoint(state, step)` /
      `ctx.restore()`, and returns its final metrics (what claims and summaries use).
    - `metrics`: the names of those final metrics.
    - `step`: what a trial's step counts (the x-axis of its curves), e.g. "rounds".
    - `prepare(ctx: RunContext) -> dict`: stages every trial shares (a dataset, a reward
      model), stored and skipped when done; returns plain data that each trial reads as
      `ctx.prepared` (store keys, thresholds).
    - `aggregate(ctx: RunContext, results: list[TrialResult]) -> None`: plots over a
      run's trials on its parent run. Per-arm means and claims are the platform's.
    - `resources(config) -> dict | PlacementGroupFactory`: what one trial reserves from
      Ray, for trials that start actors of their own (RLlib's env runners must fit in
      the trial's reservation); None: `trials.cpus` and `trials.gpus`.
    """

    name: str
    config: type[BaseModel]
    trial: Callable[[TrialContext], dict[str, float]]
    metrics: tuple[str, ...]
    step: str = "step"
    prepare: Callable[[RunContext], dict[str, Any]] | None = None
    aggregate: Callable[[RunContext, list[TrialResult]], None] | None = None
    resources: Callable[[Any], Any] | None = None


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
