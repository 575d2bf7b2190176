"""The spec's `sweep:` block: search space, search, scheduler, trial resources (docs/sweeps.md).

`load_sweep(spec)` validates the block against the method's config schema: each swept
value, applied to the spec, must give a valid config, so a bad space is a one-line
`SpecError` before Ray or MLflow start. Seeds and arms are not swept here: every point runs
the spec's `trials:` block (its seeds, and its arms under grid search).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from maestro.methods import get_method
from maestro.spec import ExperimentSpec, SpecError, StrictModel, apply_params, first_error

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


class Domain(StrictModel):
    """One search dimension: exactly one of the domain kinds."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Domain:
        given = [kind for kind in DOMAIN_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DOMAIN_KINDS)}")
        if self.kind in ("grid", "choice") and not self.args:
            raise ValueError(f"{self.kind} needs at least one value")
        if self.kind in ("uniform", "loguniform", "randint"):
            low, high = self.args
            if not low < high:
                raise ValueError(f"{self.kind} needs low < high (got [{low}, {high}])")
            if self.kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs low > 0 (got {low})")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in DOMAIN_KINDS if getattr(self, kind) is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    def examples(self) -> list[Any]:
        """Values that validation tries: every listed value, or a range's ends."""
        if self.kind in ("grid", "choice"):
            return list(self.args)
        low, high = self.args
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def to_tune(self, search: str) -> Any:
        """The Tune search-space object for this domain (under grid search, a choice is a
        grid too)."""
        from ray import tune

        if self.kind == "grid" or (self.kind == "choice" and search == "grid"):
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)


class NoScheduler(StrictModel):
    """Run every trial to its end."""

    type: Literal["none"] = "none"


class AshaScheduler(StrictModel):
    """Asynchronous successive halving: stop trials that trail at each rung."""

    type: Literal["asha"]
    max_t: int = Field(default=100, ge=1, description="a trial's full length in reports")
    grace_period: int = Field(default=1, ge=1, description="reports before any stop")
    reduction_factor: float = Field(default=3.0, gt=1)


class PbtScheduler(StrictModel):
    """Population-based training: trailing trials copy a leader's checkpoint and redraw
    the `mutations` keys."""

    type: Literal["pbt"]
    perturbation_interval: int = Field(default=2, ge=1, description="reports between exploits")
    mutations: dict[str, Domain] = Field(min_length=1)


class SweepSpec(StrictModel):
    """The spec's `sweep:` block, validated."""

    metric: str = Field(min_length=1)
    mode: Literal["min", "max"]
    space: dict[str, Domain] = Field(min_length=1)
    search: Literal["random", "grid", "optuna"] = "random"
    num_samples: int = Field(default=1, ge=1)
    scheduler: NoScheduler | AshaScheduler | PbtScheduler = Field(
        default_factory=NoScheduler, discriminator="type"
    )
    storage: str | None = Field(default=None, description="Tune's folder or s3://")

    @field_validator("space", mode="before")
    @classmethod
    def _flatten_space(cls, value: Any) -> Any:
        return flatten_space(value) if isinstance(value, dict) else value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    def points(self) -> int:
        """How many points the search draws: the grid's size times `num_samples`."""
        size = 1
        for domain in self.space.values():
            if domain.kind == "grid" or (domain.kind == "choice" and self.search == "grid"):
                size *= len(domain.args)
        return size * self.num_samples


def flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Space keys as dotted paths: `{config: {exploration: {grid: ...}}}` and
    `{config.exploration: {grid: ...}}` both give `config.exploration`."""
    flat: dict[str, Any] = {}
    for key, node in space.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        is_domain = not isinstance(node, dict) or (node and set(node) <= set(DOMAIN_KINDS))
        for name, domain in ({path: node} if is_domain else flatten_space(node, path)).items():
            if name in flat:
                raise ValueError(f"{name} is given twice (nested and as a dotted key)")
            flat[name] = domain
    return flat


def load_sweep(spec: ExperimentSpec) -> SweepSpec:
    """Validate the spec's `sweep:` block against the method; `SpecError` names the field."""
    where = spec.source or "<spec>"
    if spec.sweep is None:
        raise SpecError(f"{where}: sweep: this spec has no sweep block")
    try:
        sweep = SweepSpec.model_validate(spec.sweep)
    except ValidationError as exc:
        raise SpecError(f"{where}: {first_error(exc, prefix='sweep')}") from None
    if sweep.search != "grid" and (spec.trials.seeds > 1 or len(spec.trials.arms) > 1):
        # A random or Optuna sample is drawn once per trial: seeds would get other points.
        raise SpecError(
            f"{where}: sweep.search: {sweep.search} samples one point per trial, so "
            "trials.seeds and trials.arms must be single; use search grid to run every "
            "point over several seeds or arms"
        )
    method = get_method(spec.method)
    dimensions = {f"sweep.space.{key}": (key, domain) for key, domain in sweep.space.items()}
    if isinstance(sweep.scheduler, PbtScheduler):
        if sweep.search == "optuna":
            raise SpecError(f"{where}: sweep.scheduler: pbt needs search random or grid")
        for key, domain in sweep.scheduler.mutations.items():
            name = f"sweep.scheduler.mutations.{key}"
            if key not in sweep.space:
                raise SpecError(f"{where}: {name}: not in sweep.space (PBT mutates its values)")
            if domain.kind == "grid":
                raise SpecError(f"{where}: {name}: use choice, not grid")
            dimensions[name] = (key, domain)
    base = spec.resolved()
    for name, (key, domain) in dimensions.items():
        if not key.startswith("config."):
            raise SpecError(
                f"{where}: {name}: only `config.<field>` can be swept (seeds: trials.seeds)"
            )
        if sweep.search == "grid" and domain.kind not in ("grid", "choice"):
            raise SpecError(f"{where}: {name}: search grid takes grid or choice, not {domain.kind}")
        if sweep.search == "optuna" and domain.kind == "grid":
            raise SpecError(f"{where}: {name}: search optuna takes choice, not grid")
        for value in domain.examples():
            check_trial_value(base, key, value, method.config, f"{where}: {name}")
    return sweep


def check_trial_value(base: dict, key: str, value: Any, schema: Any, field_name: str) -> None:
    """Raise `SpecError` if setting `key` to `value` gives an invalid spec."""
    try:
        schema.model_validate(apply_params(base, {key: value})["config"])
    except ValidationError as exc:
        raise SpecError(f"{field_name}: value {value!r}: {first_error(exc, 'config')}") from None
