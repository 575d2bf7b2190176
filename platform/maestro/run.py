"""Running an experiment: prepare, then trials, then aggregate (docs/architecture.md).

`run_experiment(spec, kind)` is the spine of `maestro run` (kind "run": every arm x seed
of the spec's `trials:` block) and of `maestro sweep` (kind "sweep": a Tune search over
`sweep:`, each point run over the same arms and seeds). In order:

1. The experiment's state (`run.json`: MLflow parent run id, status, resolved spec,
   summary, claims) is read from the store under `<kind>s/<method>/<name>/`. A finished
   experiment is reported, not repeated; one started from another spec is refused.
2. Ray starts (or is joined) and MLflow is reached; only then is the experiment's
   identity written to the store, and then the parent MLflow run created or reopened (by
   its id, or by the tag `maestro.store` when an attempt died before recording the id).
   A reopened run never gets a (metric, step) point twice.
3. `method.prepare` runs here, logging to the parent run.
4. Every trial runs on Ray Tune (`maestro.sweep.driver`) into its own MLflow child run.
   Rerunning a killed experiment restores Tune's: finished trials are kept, the others go
   on from their last checkpoint.
5. The parent run gets the per-arm means of the trials' final metrics and the claims (a
   run) or the best trials (a sweep), and `method.aggregate`'s plots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from maestro import signing
from maestro.errors import TrialsFailed
from maestro.methods import get_method
from maestro.runtime import init_ray
from maestro.spec import ExperimentSpec, SpecError, first_difference, flatten
from maestro.store import ArtifactStore, open_store
from maestro.sweep.driver import run_trials, summarise_sweep
from maestro.sweep.spec import SweepSpec, load_sweep
from maestro.sweep.tracking import EARLIER, RESUMED_AT, STEP
from maestro.tracking import Tracker, figure_png

Kind = Literal["run", "sweep"]
STATE_FILE = "state.json"  # a checkpoint's JSON entries; bytes entries are files of their own
SIGNATURE_FILE = "signature"  # a checkpoint's files, signed


def progress_bar(total: int, desc: str, unit: str = "it") -> Any:
    """A progress bar (on stderr) showing count and throughput."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=2.0, dynamic_ncols=True
    )


def plain(value: Any) -> Any:
    """A spec section (a pydantic model) as JSON data; anything else as its text."""
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else str(value)


@dataclass
class RunContext:
    """What `prepare` and `aggregate` get: the spec, the experiment's folder in the store,
    and its parent MLflow run."""

    spec: ExperimentSpec
    store: ArtifactStore
    prefix: str
    tracker: Tracker

    @property
    def config(self) -> Any:
        """The method's validated config (of the spec, before any arm's overlay)."""
        return self.spec.config

    def key(self, *parts: str) -> str:
        """A store key inside the experiment's folder."""
        return "/".join((self.prefix, *parts))

    def stage_key(self, name: str, inputs: Any) -> str:
        """The folder of a prepare stage, `<name>-<digest of its inputs>`: everything the
        stage's result depends on (its spec section, seed, prompt text, model, the keys of
        earlier stages). A stage finds its stored work under it; a changed input (a new
        prompt text under the same spec) gives a new folder, so the stage is done again."""
        text = json.dumps(inputs, sort_keys=True, default=plain)
        return self.key(f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}")

    def progress(self, total: int, desc: str, unit: str = "it") -> Any:
        return progress_bar(total, desc, unit)

    def save_plot(self, figure: Any, name: str) -> None:
        """`figure` as `plots/<name>.png` on the parent run and in the experiment's folder,
        rendered once (rendering is most of a plot's time)."""
        png = figure_png(figure)
        self.tracker.log_bytes(png, f"plots/{name}.png")
        self.store.put_bytes(self.key("plots", f"{name}.png"), png)


@dataclass
class TrialContext:
    """What a trial gets: its own spec (arm overlay, seed and swept values applied), its
    folder in the store, what `prepare` returned, and its line to Tune.

    Logs and checkpoints reach Tune in reports. With `report_seconds` 0 (a sweep whose
    scheduler reads every result) each `log` is one report; otherwise they are batched:
    one report once `report_seconds` have passed since the last, carrying every step logged
    since, and one at the trial's end. A Tune report is a round trip to the driver, which
    short trials would spend much of their time waiting on."""

    spec: ExperimentSpec
    arm: str
    name: str  # `trial_00003`: the trial's place in Tune's order
    experiment: str  # the experiment's name
    store: ArtifactStore
    prefix: str
    prepared: dict[str, Any] = field(default_factory=dict)
    report_seconds: float = 0.0
    carried: str | None = None  # the sweep's metric: in every report once measured
    latest: float | None = None  # its last value
    last_step: int = 0
    unreported: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    reported_at: float = field(default_factory=time.monotonic)
    pending: tuple[int, dict[str, Any]] | None = None  # the last `checkpoint`: step, state
    resumed_at: int | None = None  # the step `restore` went on from, until reported

    @property
    def config(self) -> Any:
        """The trial's validated method config."""
        return self.spec.config

    @property
    def seed(self) -> int:
        return self.spec.seed

    def key(self, *parts: str) -> str:
        """A store key inside the trial's folder."""
        return "/".join((self.prefix, *parts))

    def progress(self, total: int, desc: str, unit: str = "it") -> Any:
        return progress_bar(total, f"{self.name} {desc}", unit)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record `metrics` at `step` (rounds, env steps: the method's `step`). They reach
        Tune with the next report (see the class), and through it the trial's MLflow run,
        the sweep's scheduler and the report."""
        self.last_step = step
        self.add(step, metrics)
        if time.monotonic() - self.reported_at >= self.report_seconds:
            self.report()

    def checkpoint(self, state: dict[str, Any], step: int) -> None:
        """Keep `state` (JSON values, or bytes for files), the trial's state at `step`, as
        its checkpoint. It goes to Tune with the next report (an older one not yet reported
        is dropped). Tune stores it with the experiment (in the store), so a restarted
        trial, a resumed experiment and a PBT exploit (which copies another trial's) go on
        from it through `restore`, and log on from that step."""
        self.pending = (step, state)

    def restore(self) -> dict[str, Any] | None:
        """The state this trial goes on from (its own last checkpoint, or under PBT the one
        it copied), or None to start fresh; `SignatureError` if the checkpoint is not as
        Maestro wrote it. The trial's next report says where it went on from
        (`resumed_at_step`)."""
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            files = {path.name: path.read_bytes() for path in Path(folder).iterdir()}
        step, state = read_checkpoint(files, f"the checkpoint {checkpoint.path}")
        self.last_step = self.resumed_at = step
        return state

    def finish(self, final: dict[str, float]) -> None:
        """Report the trial's final metrics (its last result, at its last step) with
        anything not yet reported, and a checkpoint given at the last step (a trained
        agent that later stages load); an older one is dropped, as a finished trial is not
        resumed."""
        if self.pending is not None and self.pending[0] < self.last_step:
            self.pending = None
        self.add(self.last_step, final)
        self.report()

    def add(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics for the next report; those of one step are one point."""
        if self.carried in metrics:
            self.latest = metrics[self.carried]
        if self.unreported and self.unreported[-1][0] == step:
            self.unreported[-1][1].update(metrics)
        else:
            self.unreported.append((step, dict(metrics)))

    def report(self) -> None:
        """One Tune report: the last step's metrics, the steps before it since the last
        report (`EARLIER`), and the pending checkpoint."""
        from ray import tune

        (step, metrics), earlier = self.unreported[-1], self.unreported[:-1]
        result: dict[str, Any] = {**metrics, STEP: step}
        if earlier:
            result[EARLIER] = earlier
        if self.resumed_at is not None:
            result[RESUMED_AT] = self.resumed_at
            self.resumed_at = None
        # Searchers (Optuna) and schedulers read the sweep's metric in every result.
        if self.latest is not None and self.carried not in result:
            result[self.carried] = self.latest
        self.unreported = []
        if self.pending is None:
            tune.report(result)
        else:
            folder = Path(tempfile.mkdtemp(prefix="maestro-checkpoint-"))
            try:
                for name, data in checkpoint_files(*self.pending).items():
                    (folder / name).write_bytes(data)
                # Tune copies the folder into its storage before this returns.
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            self.pending = None
        self.reported_at = time.monotonic()


def checkpoint_files(step: int, state: dict[str, Any]) -> dict[str, bytes]:
    """A trial checkpoint as files: `STATE_FILE` (the step and the JSON entries), one file
    per bytes entry, and `SIGNATURE_FILE` signing them all (`maestro.signing`)."""
    values = {key: value for key, value in state.items() if not isinstance(value, bytes)}
    files = {key: value for key, value in state.items() if isinstance(value, bytes)}
    files[STATE_FILE] = json.dumps({"step": step, "state": values}).encode()
    return {**files, SIGNATURE_FILE: signing.sign(signing.digests_message(files)).encode()}


def read_checkpoint(files: dict[str, bytes], where: str) -> tuple[int, dict[str, Any]]:
    """`(step, state)` of a checkpoint's `files` (`checkpoint_files`), once their signature
    is checked: `SignatureError` naming `where` if it is missing or wrong."""
    files = dict(files)
    signature = files.pop(SIGNATURE_FILE, b"").decode(errors="replace")
    signing.check(signing.digests_message(files), signature, where)
    saved = json.loads(files.pop(STATE_FILE))
    return saved["step"], {**saved["state"], **files}


@dataclass
class TrialResult:
    """How a trial ended: its coordinates, final metrics and folder in the store."""

    name: str
    arm: str
    seed: int
    params: dict[str, Any]  # arm, seed and swept values
    metrics: dict[str, float]
    prefix: str
    error: str | None = None


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: the spec, its `sweep:` block (a sweep), its name."""

    spec: ExperimentSpec
    kind: Kind
    name: str
    sweep: SweepSpec | None = None

    @property
    def prefix(self) -> str:
        """The experiment's folder in the store."""
        return f"{self.kind}s/{self.spec.method}/{self.name}"

    @property
    def tracking_experiment(self) -> str:
        """The MLflow experiment its runs go to."""
        return self.spec.tracking.experiment or self.spec.method

    def total_trials(self) -> int:
        points = self.sweep.points() if self.sweep else 1
        return points * len(self.spec.arm_names()) * len(self.spec.seeds())

    def trial_run_name(self, trial: str, params: dict[str, Any]) -> str:
        """A trial's MLflow run name: `ucb1-seed3` in a run, `<sweep>/trial_00042` in a sweep."""
        if self.sweep is not None:
            return f"{self.name}/{trial}"
        return f"{params['arm']}-seed{params['seed']}"


@dataclass
class RunResult:
    """How a `maestro run` or `maestro sweep` ended."""

    kind: Kind
    run_name: str
    prefix: str
    mlflow_run_id: str | None
    summary: dict[str, Any]
    already_finished: bool = False
    claims: list[str] = field(default_factory=list)  # one line per checked claim


def run_experiment(spec: ExperimentSpec, kind: Kind = "run", new_run: bool = False) -> RunResult:
    """Run (or resume) the experiment described by `spec`. An experiment of the same name
    made from another spec is refused (`SpecError`, before anything is written); `new_run`
    starts a fresh one instead, named `<name>-2`, `-3`, ... (the first free one)."""
    method = get_method(spec.method)
    sweep = load_sweep(spec) if kind == "sweep" else None
    store = open_store(spec.store.uri)
    name = spec.run_name()
    if new_run:
        base, number = name, 1
        while store.exists(f"{Experiment(spec, kind, name).prefix}/run.json"):
            number += 1
            name = f"{base}-{number}"
    experiment = Experiment(spec, kind, name, sweep)
    state_key = f"{experiment.prefix}/run.json"
    state = store.get_json(state_key) if store.exists(state_key) else None
    resolved = spec.resolved()
    if state and state.get("spec") != resolved:
        changed = first_difference(state.get("spec") or {}, resolved)
        raise SpecError(
            f"{spec.source}: {changed}: differs from the spec that {kind} {name} was started "
            "with; use --new-run for a fresh one, or another tracking.run_name"
        )
    if state and state.get("status") == "FINISHED":
        return RunResult(
            kind,
            name,
            experiment.prefix,
            state.get("mlflow_run_id"),
            state["summary"],
            already_finished=True,
            claims=state.get("claims", []),
        )

    init_ray(spec.resources)
    experiment_id = (
        Tracker.connect(experiment.tracking_experiment) if spec.tracking.enabled else None
    )
    resume = state is not None
    run_id = (state or {}).get("mlflow_run_id")
    state = {
        "run_name": name,
        "kind": kind,
        "mlflow_run_id": run_id,
        "status": "RUNNING",
        "spec": resolved,
        "summary": {},
    }
    store.put_json(state_key, state)  # the identity, before anything exists in MLflow
    parent = start_parent(experiment, run_id, store, experiment_id)
    if parent.run_id != run_id:
        state["mlflow_run_id"] = parent.run_id
        store.put_json(state_key, state)
    ctx = RunContext(spec, store, experiment.prefix, parent)
    try:
        prepared = method.prepare(ctx) if method.prepare else {}
        parent.flush()  # prepare's metrics reach MLflow before any trial can be killed
        results = run_trials(experiment, store, parent, prepared, resume)
        summary, claims = aggregate(experiment, ctx, results)
        if method.aggregate and sweep is None:  # a sweep's plots are `maestro report`'s
            method.aggregate(ctx, results)
    except BaseException as exc:
        # The store first (it decides what a rerun does), then MLflow; either may be what
        # failed, and the error the user sees is the first one.
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):
            store.put_json(state_key, {**state, "status": status, "error": repr(exc)[:500]})
        with contextlib.suppress(Exception):
            parent.end(status)
        raise
    parent.end("FINISHED")
    lines = [result.line() for result in claims]
    store.put_json(state_key, {**state, "status": "FINISHED", "summary": summary, "claims": lines})
    return RunResult(kind, name, experiment.prefix, parent.run_id, summary, claims=lines)


def start_parent(
    experiment: Experiment,
    run_id: str | None,
    store: ArtifactStore,
    experiment_id: str | None = None,
) -> Tracker:
    """The experiment's parent MLflow run: reopened (`run_id`, or the run tagged with this
    experiment's store folder), or created; `experiment_id` is its MLflow experiment's, if
    already looked up (`Tracker.connect`)."""
    spec, sweep = experiment.spec, experiment.sweep
    if not spec.tracking.enabled:
        return Tracker.disabled()
    tags = {
        **spec.tracking.tags,
        "maestro.method": spec.method,
        "maestro.spec": spec.source,
        "maestro.preset": spec.preset or "",
        "maestro.kind": experiment.kind,
        "maestro.store": store.uri(experiment.prefix),
        "maestro.step": get_method(spec.method).step,
    }
    if sweep is not None:
        tags.update(
            {
                "maestro.sweep.metric": sweep.metric,
                "maestro.sweep.mode": sweep.mode,
                "maestro.sweep.space": json.dumps(
                    {k: d.model_dump(exclude_none=True) for k, d in sweep.space.items()}
                ),
            }
        )
    parent = Tracker.start(
        experiment=experiment.tracking_experiment,
        experiment_id=experiment_id,
        run_name=experiment.name,
        params=flatten(spec.resolved()),
        tags=tags,
        resume_run_id=run_id,
        identity_tag="maestro.store",
    )
    if parent.run_id != run_id:
        parent.log_dict(spec.resolved(), "spec.yaml")
    return parent


def aggregate(
    experiment: Experiment, ctx: RunContext, results: list[TrialResult]
) -> tuple[dict[str, Any], list[Any]]:
    """The experiment's summary and checked claims, logged on the parent run. A run: the
    mean over seeds of each final metric per arm (`<metric>/<arm>`), and the claims. A
    sweep: the best trials. Trials that failed make a run fail (its claims would rest on
    fewer seeds than the spec asks); a sweep counts them."""
    from maestro.claims import check_claims, log_claims

    failed = [r for r in results if r.error]
    counts = {"trials": len(results), "errored": len(failed)}
    ctx.tracker.log_metrics({f"trials/{k}": v for k, v in counts.items()}, step=0)
    if experiment.sweep is not None:
        return {**counts, **summarise_sweep(experiment.sweep, ctx.tracker)}, []
    if failed:
        raise TrialsFailed(
            f"{len(failed)} of {len(results)} trials failed; the first ({failed[0].name}): "
            f"{failed[0].error} (its log: `maestro run` prints it above; run again to retry)"
        )
    method = get_method(experiment.spec.method)
    for claim in experiment.spec.claims:
        for metric in claim.metrics():
            missing = [r.name for r in results if metric not in r.metrics]
            if missing:
                raise RuntimeError(f"claim {claim.name}: trial {missing[0]} has no {metric}")
    # A method's metrics that every trial returned (a task without a success has no
    # success rate; an experiment that only prepares returns none).
    measured = [m for m in method.metrics if results and all(m in r.metrics for r in results)]
    per_arm = {
        metric: {
            arm: np.array([r.metrics[metric] for r in results if r.arm == arm])
            for arm in experiment.spec.arm_names()
        }
        for metric in measured
    }
    summary = {
        f"{metric}/{arm}": float(values.mean())
        for metric, arms in per_arm.items()
        for arm, values in arms.items()
    }
    ctx.tracker.log_metrics({f"summary/{k}": v for k, v in summary.items()}, step=0)
    claims = check_claims(experiment.spec.claims, per_arm)
    log_claims(ctx.tracker, claims)
    return summary, claims
