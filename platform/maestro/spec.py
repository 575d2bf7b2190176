"""Experiment specs: YAML files validated against the method's own pydantic schema.

A spec file looks like::

    method: randomist
    seed: 0
    config: {...}            # validated by the method's schema
    resources: {...}         # ResourcesSpec
    tracking: {...}          # TrackingSpec
    store: {...}             # StoreSpec
    trials: {seeds: 3, arms: {name: {...}}}   # optional: arms (overlays on config) x seeds
    sweep: {...}             # optional, read by `maestro sweep`
    claims: [...]            # optional, the paper's claims checked over seeds (claims.py)
    presets:                 # optional named overlays, chosen with --preset
      smoke: {config: {...}}
      full: {config: {...}}

Loading applies the preset, then the `--set a.b=c` overrides, then validates the whole
thing. Unknown keys are errors. Every error is a `SpecError` whose message names the file
and the field, so the CLI can print one line and exit 2 before anything is created.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from maestro.claims import Claim


class SpecError(ValueError):
    """A spec or override that cannot be used; the message names the file and the field."""


class StrictModel(BaseModel):
    """Base for every spec schema: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ResourcesSpec(StrictModel):
    """The size of the local Ray cluster a run starts when it joins none (what each trial
    reserves is in `trials:`)."""

    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)


RUN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a folder name in the store, never a path


class TrackingSpec(StrictModel):
    """MLflow settings. The tracking URI itself comes from the environment, never the spec."""

    enabled: bool = True
    experiment: str | None = None
    run_name: Annotated[str, StringConstraints(pattern=RUN_NAME, max_length=200)] | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class StoreSpec(StrictModel):
    """Where artifacts go: a folder or `s3://bucket/prefix`. None means `MAESTRO_STORE`,
    else `./maestro-store`."""

    uri: str | None = None

    @field_validator("uri")
    @classmethod
    def known_scheme(cls, uri: str | None) -> str | None:
        if uri is None:
            return uri
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        if scheme not in ("", "file", "s3") or (scheme == "s3" and not uri[5:].strip("/")):
            raise ValueError("expected a folder, file://path or s3://bucket/prefix")
        return uri


ARM_NAME = r"^[A-Za-z0-9_.-]+$"
DEFAULT_ARM = "default"


class TrialsSpec(StrictModel):
    """The spec's `trials:` block: every arm runs every seed, one trial each. An arm is a
    named overlay on `config` (nested mappings merge); with no arms the spec's config is
    the one arm, named `default`. Seeds are `seed`, `seed + 1`, ... The rest says how Tune
    runs the trials, in a run and in a sweep alike."""

    seeds: int = Field(default=1, ge=1)
    arms: dict[Annotated[str, StringConstraints(pattern=ARM_NAME)], dict[str, Any]] = Field(
        default_factory=dict
    )
    cpus: float = Field(default=1.0, gt=0, description="what each trial reserves from Ray")
    gpus: float = Field(default=0.0, ge=0)
    max_concurrent: int | None = Field(default=None, ge=1, description="None: as Ray fits")
    max_failures: int = Field(default=1, ge=-1, description="retries per trial; -1: forever")
    fail_fast: bool = Field(default=False, description="stop every trial at the first error")
    report_seconds: float = Field(
        default=10.0, ge=0, description="batch a trial's logs and checkpoints this long"
    )


class ExperimentSpec(StrictModel):
    """A resolved experiment: the common fields plus the method's validated config."""

    method: str
    seed: int = 0
    config: BaseModel
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    store: StoreSpec = Field(default_factory=StoreSpec)
    trials: TrialsSpec = Field(default_factory=TrialsSpec)
    sweep: dict[str, Any] | None = None
    claims: list[Claim] = Field(default_factory=list)
    # Provenance, filled by load_spec: not part of the experiment's identity.
    source: str = ""
    preset: str | None = None

    def resolved(self) -> dict[str, Any]:
        """The spec as plain data, as it will run (presets and overrides applied)."""
        data = self.model_dump(mode="json", exclude={"config", "source", "preset"})
        data["config"] = self.config.model_dump(mode="json")
        return data

    def digest(self) -> str:
        """A short hash of the resolved spec: the same experiment gets the same digest."""
        text = json.dumps(self.resolved(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def arm_names(self) -> list[str]:
        """The arms every seed runs (`default` when the spec names none)."""
        return list(self.trials.arms) or [DEFAULT_ARM]

    def seeds(self) -> list[int]:
        """The trials' seeds."""
        return [self.seed + i for i in range(self.trials.seeds)]

    def run_name(self) -> str:
        """The run's name: from `tracking.run_name`, else `<spec stem>-<preset>-<digest>`."""
        if self.tracking.run_name:
            return self.tracking.run_name
        stem = Path(self.source).stem if self.source else self.method
        parts = [stem, self.preset, self.digest()] if self.preset else [stem, self.digest()]
        return "-".join(parts)


COMMON_KEYS = {
    "method",
    "seed",
    "config",
    "resources",
    "tracking",
    "store",
    "trials",
    "sweep",
    "claims",
}


def load_spec(
    path: str | Path, preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentSpec:
    """Read a spec file, apply a preset and `a.b=c` overrides, and validate it."""
    path = Path(path)
    return build_spec(read_spec_file(path), str(path), preset=preset, overrides=overrides)


def read_spec_file(path: Path, children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A spec file's data. With `extends: other.yaml` (relative to the file), the file is an
    overlay on that spec: mappings merge (presets included), other values replace."""
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{where}: a folder, not a spec file") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"{where}: cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(f"{where}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a spec must be a mapping with at least `method:`")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise SpecError(f"{where}: extends: must be the path of another spec file")
    parent_path = (path.parent / parent).resolve()
    if parent_path in (path.resolve(), *children):
        raise SpecError(f"{where}: extends: {parent} extends itself")
    if not parent_path.is_file():
        raise SpecError(f"{where}: extends: {parent}: file not found")
    return deep_merge(read_spec_file(parent_path, (*children, path.resolve())), raw)


def build_spec(
    raw: dict[str, Any],
    where: str = "<spec>",
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    arm_applied: bool = False,
) -> ExperimentSpec:
    """Validate spec data (already parsed) with its preset and overrides applied. With
    `arm_applied` the config already holds one arm's overlay (a trial's spec,
    `trial_data`), so the arms' overlays are not checked again on it: two arms may each be
    valid on the spec's config yet not on each other's."""
    from maestro.methods import UnknownMethod, get_method

    data = copy.deepcopy(raw)
    presets = data.pop("presets", None) or {}
    if not isinstance(presets, dict):
        raise SpecError(f"{where}: presets: must be a mapping of preset name to overlay")
    if preset is not None:
        if preset not in presets:
            known = ", ".join(sorted(presets)) or "none"
            raise SpecError(f"{where}: presets: no preset {preset!r} (this spec has: {known})")
        overlay = presets[preset]
        if not isinstance(overlay, dict):
            raise SpecError(f"{where}: presets.{preset}: must be a mapping")
        if "method" in overlay:
            raise SpecError(f"{where}: presets.{preset}.method: a preset cannot change the method")
        data = deep_merge(data, overlay)
    for item in overrides:
        apply_override(data, item, where)

    unknown = sorted(set(data) - COMMON_KEYS)
    if unknown:
        raise SpecError(
            f"{where}: {unknown[0]}: unknown key (allowed: {', '.join(sorted(COMMON_KEYS))})"
        )
    name = data.get("method")
    if not isinstance(name, str):
        raise SpecError(f"{where}: method: required, the name of a method")
    try:
        method = get_method(name)
    except UnknownMethod as exc:
        raise SpecError(f"{where}: method: {exc}") from None

    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise SpecError(f"{where}: config: must be a mapping")
    try:
        data["config"] = method.config.model_validate(config)
    except ValidationError as exc:
        raise SpecError(f"{where}: {first_error(exc, prefix='config')}") from None
    if data.get("sweep") is not None and not isinstance(data["sweep"], dict):
        raise SpecError(f"{where}: sweep: must be a mapping")
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{where}: {first_error(exc)}") from None
    check_finite(spec.resolved(), where)
    if not arm_applied:
        check_arms(spec, method, where)
    check_claims_fit(spec, method, where)
    return spec.model_copy(update={"source": where, "preset": preset})


def check_finite(data: Any, where: str, path: str = "") -> None:
    """Every number in the spec is finite (YAML reads `.inf` and `.nan` as floats)."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_finite(value, where, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_finite(value, where, f"{path}.{i}")
    elif isinstance(data, float) and not math.isfinite(data):
        raise SpecError(f"{where}: {path}: must be a finite number, not {data}")


def arm_config(spec_data: dict[str, Any], arm: str) -> dict[str, Any]:
    """The `config:` block of one arm of resolved spec data: the arm's overlay merged in."""
    overlay = (spec_data.get("trials") or {}).get("arms", {}).get(arm, {})
    return deep_merge(spec_data["config"], overlay)


def check_arms(spec: ExperimentSpec, method: Any, where: str) -> None:
    """Each arm's overlay gives a valid config."""
    data = spec.resolved()
    for arm in spec.trials.arms:
        try:
            method.config.model_validate(arm_config(data, arm))
        except ValidationError as exc:
            raise SpecError(f"{where}: {first_error(exc, prefix=f'trials.arms.{arm}')}") from None


def check_claims_fit(spec: ExperimentSpec, method: Any, where: str) -> None:
    """Each claim names a metric a trial of the method returns and two of the spec's arms."""
    arms = spec.arm_names()
    for i, claim in enumerate(spec.claims):
        field = f"{where}: claims.{i}"
        for name, metric in zip(("metric", "loser_metric"), claim.metrics(), strict=True):
            if metric not in method.metrics:
                known = ", ".join(method.metrics) or "none"
                raise SpecError(
                    f"{field}.{name}: a {method.name} trial returns no metric "
                    f"{metric!r} (returns: {known})"
                )
        for arm in claim.compare:
            if arm not in arms:
                raise SpecError(
                    f"{field}.compare: no arm {arm!r} in this spec (arms: "
                    f"{', '.join(arms)}; --set claims=[] runs it without claims)"
                )


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the resolved spec `base` with each dotted key in `params` set."""
    trial = copy.deepcopy(base)
    for key, value in params.items():
        node = trial
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return trial


def trial_data(resolved: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's spec data: the resolved spec with the trial's arm overlay, seed and swept
    values (`params`: `arm`, `seed` and dotted keys) applied."""
    data = copy.deepcopy(resolved)
    data["config"] = arm_config(resolved, params["arm"])
    data["seed"] = params["seed"]
    return apply_params(data, {k: v for k, v in params.items() if k not in ("arm", "seed")})


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge `overlay` into a copy of `base`; nested mappings merge, other values replace."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_override(data: dict[str, Any], item: str, where: str) -> None:
    """Set `a.b.c=value` in `data`; the value is read as YAML (so `3` is an int, `[1, 2]` a
    list). Types are checked when the spec is validated."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"{where}: --set {item!r}: expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise SpecError(f"{where}: --set {key}: value {text!r} is not valid YAML") from None
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            path = ".".join(parts[: depth + 1])
            raise SpecError(f"{where}: --set {key}: {path} is a value, not a mapping")
        node = child
    node[parts[-1]] = value


def first_error(exc: ValidationError, prefix: str = "") -> str:
    """One line for the first validation error: `field.path: message (got value)`."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = ".".join(p for p in (prefix, loc) if p) or prefix or "spec"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in err and err["type"] != "missing":
        shown = repr(err["input"])
        msg += f" (got {shown if len(shown) < 60 else shown[:57] + '...'})"
    return f"{field}: {msg}"


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first field (in sorted order) where two resolved specs differ, with both values:
    `config.rounds (2000 -> 300)`; "" when they are equal."""
    before, after = flatten(old), flatten(new)
    for key in sorted(before.keys() | after.keys()):
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            return f"{key} ({before.get(key, '<unset>')!r} -> {after.get(key, '<unset>')!r})"
    return ""


def flatten(data: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (keys joined by `sep`); lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat
