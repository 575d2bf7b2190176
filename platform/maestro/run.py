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
import time
from dataclasses import dataclass, field
from typing import Any

from maestro.methods import get_method
from maestro.runtime import init_ray
from maestro.spec import ExperimentSpec, flatten
from maestro.store import ArtifactStore, open_store
from maestro.tracking import Tracker


@dataclass
class RunContext:
    """What a method's pipeline gets: its spec, where to store things, where to log."""

    spec: ExperimentSpec
    store: ArtifactStore
    prefix: str
    tracker: Tracker
    resumed: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def config(self) -> Any:
        """The method's validated config."""
        return self.spec.config

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


def run_experiment(spec: ExperimentSpec) -> RunResult:
    """Run (or resume) the experiment described by `spec`."""
    method = get_method(spec.method)
    store = open_store(spec.store.uri)
    run_name = spec.run_name()
    prefix = f"runs/{spec.method}/{run_name}"
    state_key = f"{prefix}/run.json"
    state = store.get_json(state_key) if store.exists(state_key) else None

    if state and state.get("status") == "FINISHED":
        return RunResult(run_name, prefix, state.get("mlflow_run_id"), state["summary"], True)

    resume_id = state.get("mlflow_run_id") if state else None
    resolved = spec.resolved()
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
    ctx = RunContext(spec, store, prefix, tracker, resumed=resume_id is not None)
    try:
        summary = method.pipeline(ctx)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        tracker.end(status)
        store.put_json(state_key, {**state, "status": status, "error": repr(exc)[:500]})
        raise
    tracker.log_metrics({f"summary/{k}": v for k, v in summary.items()}, step=0)
    tracker.end("FINISHED")
    store.put_json(state_key, {**state, "status": "FINISHED", "summary": summary})
    return RunResult(run_name, prefix, tracker.run_id, summary)
