"""Running one experiment: the run model shared by every method.

`run_experiment(spec)` opens the store and the MLflow run, starts or joins Ray, and calls
the method's pipeline with a `RunContext`. The run's state (`run.json`: MLflow run id,
status, summary) lives in the store beside its artifacts, under
`runs/<method>/<run name>/`. Running the same spec again finds that state: an unfinished
run resumes into the same MLflow run and its stages skip work already stored; a finished
run is reported, not repeated.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from maestro.methods import get_method
from maestro.runtime import init_ray
from maestro.spec import ExperimentSpec, SpecError, first_difference, flatten
from maestro.store import ArtifactStore, open_store
from maestro.tracking import Tracker


@dataclass
class RunContext:
    """What a method's pipeline gets: its spec, where to store things, where to log."""

    spec: ExperimentSpec
    store: ArtifactStore
    prefix: str
    tracker: Tracker
    claims: list[Any] = field(default_factory=list)  # ClaimResults, once checked

    @property
    def config(self) -> Any:
        """The method's validated config."""
        return self.spec.config

    def check_claims(self, seed_scores: dict[str, dict[str, Any]]) -> None:
        """Check the spec's claims against `seed_scores` (metric -> arm -> one value per
        seed) and log them; the run reports them when it ends."""
        from maestro.claims import check_claims, log_claims

        self.claims = check_claims(self.spec.claims, seed_scores)
        log_claims(self.tracker, self.claims)

    def key(self, *parts: str) -> str:
        """A store key inside this run's folder."""
        return "/".join((self.prefix, *parts))

    def progress(self, total: int, desc: str, unit: str = "it") -> Any:
        """A progress bar (on stderr) showing count and throughput."""
        from tqdm import tqdm

        return tqdm(
            total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=2.0, dynamic_ncols=True
        )


@dataclass
class RunResult:
    """How a `maestro run` ended."""

    run_name: str
    prefix: str
    mlflow_run_id: str | None
    summary: dict[str, float]
    already_finished: bool = False
    claims: list[str] = field(default_factory=list)  # one line per checked claim


def run_experiment(spec: ExperimentSpec, new_run: bool = False) -> RunResult:
    """Run (or resume) the experiment described by `spec`. A run of the same name made from
    another spec is refused (`SpecError`, before anything is written); `new_run` starts a
    fresh run instead, named `<name>-2`, `-3`, ... (the first free one)."""
    method = get_method(spec.method)
    store = open_store(spec.store.uri)
    run_name = spec.run_name()
    folder = f"runs/{spec.method}"
    if new_run:
        base, number = run_name, 1
        while store.exists(f"{folder}/{run_name}/run.json"):
            number += 1
            run_name = f"{base}-{number}"
    prefix = f"{folder}/{run_name}"
    state_key = f"{prefix}/run.json"
    state = store.get_json(state_key) if store.exists(state_key) else None
    resolved = spec.resolved()
    if state and state.get("spec") != resolved:
        field = first_difference(state.get("spec") or {}, resolved)
        raise SpecError(
            f"{spec.source}: {field}: differs from the spec that run {run_name} was started "
            "with; use --new-run for a fresh run, or another tracking.run_name"
        )

    if state and state.get("status") == "FINISHED":
        return RunResult(
            run_name,
            prefix,
            state.get("mlflow_run_id"),
            state["summary"],
            already_finished=True,
            claims=state.get("claims", []),
        )

    resume_id = state.get("mlflow_run_id") if state else None
    if spec.tracking.enabled:
        tracker = Tracker.start(
            experiment=spec.tracking.experiment or spec.method,
            run_name=run_name,
            params=flatten(resolved),
            tags={
                "maestro.method": spec.method,
                "maestro.spec": spec.source,
                "maestro.preset": spec.preset or "",
                "maestro.store": store.uri(prefix),
                **spec.tracking.tags,
            },
            resume_run_id=resume_id,
        )
    else:
        tracker = Tracker.disabled()
    if not resume_id:
        tracker.log_dict(resolved, "spec.yaml")
    state = {
        "run_name": run_name,
        "mlflow_run_id": tracker.run_id,
        "status": "RUNNING",
        "spec": resolved,
        "summary": {},
    }
    store.put_json(state_key, state)

    init_ray(spec.resources)
    ctx = RunContext(spec, store, prefix, tracker)
    try:
        summary = method.pipeline(ctx)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        tracker.end(status)
        store.put_json(state_key, {**state, "status": status, "error": repr(exc)[:500]})
        raise
    tracker.log_metrics({f"summary/{k}": v for k, v in summary.items()}, step=0)
    tracker.end("FINISHED")
    claims = [result.line() for result in ctx.claims]
    store.put_json(state_key, {**state, "status": "FINISHED", "summary": summary, "claims": claims})
    return RunResult(run_name, prefix, tracker.run_id, summary, claims=claims)
