"""MLflow for an experiment's trials, written from the driver (docs/architecture.md).

Each trial gets one MLflow child run under the experiment's parent run, written by
`TrialRunsWriter` in the driver through one writer thread, so Tune's loop never waits on
MLflow. Nothing here imports Ray: `maestro.sweep.callbacks` hands Tune's events to it.
A trial's results are buffered and sent as `log_batch` requests every `FLUSH_SECONDS` and
when it ends; MLflow's step is the trial's own (`ctx.log(metrics, step)`), also logged
as the metric `step`, which tells a resumed driver where each run's curves end. PBT's
changing values go to `hp/<key>` metrics and `maestro.hp.<key>` tags, since MLflow params
cannot change.

The trial-to-run mapping is on the child runs themselves: tags written in the request that
creates each run name the trial by its place in Tune's sample order (`trial_00042`, which
a restored searcher reproduces) and hold its coordinates (`maestro.trial.params`: arm,
seed, swept values), with `arm` and `seed` as tags of their own.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from maestro.spec import flatten, trial_data
from maestro.sweep.spec import AshaScheduler, PbtScheduler
from maestro.tracking import Tracker, tracking_uri

if TYPE_CHECKING:
    from maestro.run import Experiment

STEP = "step"  # the result key of a trial's own step (`TrialContext.log`)
RESUMED_AT = "resumed_at_step"  # where a restored trial went on from, once
EARLIER = "earlier"  # the [step, metrics] a batched report carries before its own step
# Result keys Tune adds that are bookkeeping, not measurements.
TUNE_BOOKKEEPING = {
    "timestamp",
    "pid",
    "date",
    "hostname",
    "node_ip",
    "done",
    "trial_id",
    "experiment_tag",
    "time_this_iter_s",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "should_checkpoint",
}
# Tune fills these itself: a re-reported result must not carry them.
TUNE_AUTOFILLED = TUNE_BOOKKEEPING | {"training_iteration", "time_total_s"}
# Parent-run tags that every trial's run copies (provenance, method, spec).
INHERITED_TAGS = ("maestro.version.", "maestro.host", "maestro.method", "maestro.spec", "mlflow.")
FLUSH_SECONDS = 5.0  # how often buffered trial results go to MLflow


def trial_name(trial: Any) -> str:
    """`trial_00042`: the trial's place in the sample order, which a restored searcher
    reproduces (Tune's experiment tag starts with it)."""
    return f"trial_{int(str(trial.experiment_tag).split('_', 1)[0]):05d}"


@dataclass
class TrialRun:
    """A trial's MLflow child run as `TrialRunsWriter` sees it. `tracker` is set by the
    writer thread once the run exists; everything else belongs to the caller's thread."""

    params: dict[str, Any]  # the trial's coordinates: arm, seed, swept values
    tracker: Tracker | None = None
    status: str = "RUNNING"
    outcome: str = ""  # completed | stopped | error, once the trial ended
    last_logged: tuple[int, int] = (0, 0)  # (step, Tune iteration) of its last result in MLflow
    at_step: dict[str, float] = field(default_factory=dict)  # what was logged at that step
    final: dict[str, float] = field(default_factory=dict)
    is_open: bool = False
    seen: bool = False  # started by this driver
    pending: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # to send with the next batch
    hyperparams: dict[str, Any] = field(default_factory=dict)  # PBT's current values
    perturbations: int = 0


def search_runs(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every MLflow run matching the filter (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_trial_runs(client: Any, parent_run_id: str) -> dict[str, TrialRun]:
    """Every child run of an experiment, by trial name (read from the runs' tags)."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = search_runs(client, [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {
        run.data.tags["maestro.trial"]: TrialRun(
            params=json.loads(run.data.tags["maestro.trial.params"]),
            tracker=Tracker(client, run.info.run_id),
            status=run.info.status,
            outcome=run.data.tags.get("maestro.trial.outcome", ""),
            last_logged=(
                int(run.data.metrics.get(STEP, 0)),
                int(run.data.metrics.get("training_iteration", 0)),
            ),
            final=dict(run.data.metrics),
        )
        for run in children
    }


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric measurements in a Tune result (nested keys joined with `/`)."""
    return {
        key: float(value)
        for key, value in flatten(result, sep="/").items()
        if key not in TUNE_BOOKKEEPING
        and not key.startswith("config/")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


def create_run(run: TrialRun, client: Any, experiment_id: str, tags: dict, params: dict) -> None:
    """(Writer thread) Create a trial's run with all its tags in the creating request."""
    created = client.create_run(experiment_id, run_name=tags["mlflow.runName"], tags=tags)
    run.tracker = Tracker(client, created.info.run_id)
    run.tracker.log_params(params)


def write_results(run: TrialRun, batch: list, tags: dict[str, str], status: str | None) -> None:
    """(Writer thread) A run's buffered results (batched by `Tracker`), tags and end."""
    for step, metrics in batch:
        run.tracker.log_metrics(metrics, step)
    run.tracker.flush()
    if tags:
        run.tracker.set_tags(tags)
    if status:
        run.tracker.end(status)


class TrialRunsWriter:
    """Writes each trial of an experiment to its own MLflow child run under the parent run.

    Its caller (Tune's callback in the driver) hands it each trial's start, results and
    end by the trial's name and coordinates. Results are buffered and sent by one writer
    thread every `FLUSH_SECONDS`, when a trial ends, and on `save`: the caller calls `save`
    whenever Tune saves its experiment state, so any checkpoint Tune can resume from has its
    metrics in MLflow. A resumed driver's writer reads the experiment's runs back from
    MLflow (`open`) and continues them."""

    def __init__(self, experiment: Experiment, parent_run_id: str):
        self.experiment = experiment
        self.parent_run_id = parent_run_id

    def open(self) -> None:
        """Connect to MLflow, read the experiment's existing trial runs, start the writer."""
        from mlflow.tracking import MlflowClient
        from tqdm import tqdm

        self.client = MlflowClient(tracking_uri())
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="maestro-mlflow")
        self.sent: list[Future] = []
        self.last_flush = time.monotonic()
        parent = self.client.get_run(self.parent_run_id)
        self.experiment_id = parent.info.experiment_id
        self.tags = {
            **{k: v for k, v in parent.data.tags.items() if k.startswith(INHERITED_TAGS)},
            **self.experiment.spec.tracking.tags,
            "maestro.kind": "trial",
            "maestro.experiment": self.experiment.name,
            "mlflow.parentRunId": self.parent_run_id,
        }
        self.base = self.experiment.spec.resolved()
        self.base.pop("sweep")
        self.runs = find_trial_runs(self.client, self.parent_run_id)
        self.orphans: list[TrialRun] = []
        self.progress = tqdm(
            total=self.experiment.total_trials(),
            initial=sum(run.status == "FINISHED" for run in self.runs.values()),
            desc=f"{self.experiment.kind} {self.experiment.name}",
            unit="trial",
            file=sys.stderr,
            mininterval=2.0,
        )

    def trial_started(self, name: str, params: dict[str, Any]) -> None:
        """Trial `name` (coordinates `params`) starts: create its run, or reopen the run of
        an earlier driver that it continues."""
        run = self.runs.get(name)
        if run is not None and not run.seen and run.params != params:
            # Redrawn differently after a restore: the old run belongs to no trial.
            self.orphans.append(run)
            run = None
        if run is None:
            run = self.runs[name] = TrialRun(params, is_open=True)
            tags = {
                **self.tags,
                "mlflow.runName": self.experiment.trial_run_name(name, params),
                "maestro.trial": name,
                "maestro.trial.params": json.dumps(params, sort_keys=True),
                "arm": params["arm"],
                "seed": str(params["seed"]),
            }
            spec = flatten(trial_data(self.base, params))
            self.submit(create_run, run, self.client, self.experiment_id, tags, spec)
        elif not run.is_open and run.status != "FINISHED":
            run.is_open, run.status = True, "RUNNING"
            self.submit(self.client.update_run, run.tracker.run_id, "RUNNING")
        run.seen = True

    def trial_result(self, name: str, params: dict[str, Any], result: dict[str, Any]) -> None:
        """A result of trial `name`, whose coordinates are now `params` (PBT changes them):
        the points at the steps it carries (`EARLIER`, then its own). New points are those
        past the last one in MLflow by step, then by Tune's iteration (several reports can
        share a step, as a trial's final metrics share its last step). Not by iteration
        alone: a trial restarted without a Tune checkpoint but from its own counts
        iterations from 1 again while its steps go on."""
        run = self.open_run(name)
        if run is None:
            return
        reached = int(result["training_iteration"])
        if RESUMED_AT in result:
            # Logged even where the results around it are already in MLflow.
            run.pending.append((int(result[RESUMED_AT]), {RESUMED_AT: result[RESUMED_AT]}))
        metrics = result_metrics(result)
        metrics.pop(RESUMED_AT, None)  # logged above, at its own step
        points = [(int(step), result_metrics(m)) for step, m in result.get(EARLIER, [])]
        points.append((int(result.get(STEP, reached)), metrics))
        new = [(step, m) for step, m in points if (step, reached) > run.last_logged]
        if not new:
            return  # already in MLflow: a trial restored from an older checkpoint
        # PBT's values as they are at the report's own step.
        new[-1][1].update(self.pbt_values(run, params))
        for step, point in new:
            self.add_point(run, (step, reached), point)
        run.outcome = "stopped" if self.stopped_early(result) else "completed"

    def add_point(self, run: TrialRun, at: tuple[int, int], metrics: dict[str, float]) -> None:
        """Buffer `metrics` at `at` (step, Tune iteration), past the last point in MLflow."""
        if at[0] == run.last_logged[0]:
            # A value repeated at the same step (the sweep's metric, carried into a report
            # that lacks it) is the same point: logged once.
            metrics = {k: v for k, v in metrics.items() if run.at_step.get(k) != v}
            run.at_step.update(metrics)
        else:
            run.at_step = dict(metrics)
        run.last_logged = at
        run.pending.append((at[0], metrics))

    def trial_completed(self, name: str) -> None:
        """Trial `name` ended normally (or its scheduler stopped it)."""
        run = self.open_run(name)
        if run is not None:
            self.end(run, "FINISHED", {"maestro.trial.outcome": run.outcome or "completed"})

    def trial_failed(self, name: str, error: str) -> None:
        """Trial `name` failed with `error` (its traceback; the last line is kept)."""
        run = self.open_run(name)
        if run is not None:
            lines = error.strip().splitlines() or ["?"]
            tags = {"maestro.trial.outcome": "error", "maestro.trial.error": lines[-1][:500]}
            self.end(run, "FAILED", tags)

    def tick(self) -> None:
        """Send what is buffered if `FLUSH_SECONDS` have passed (call it often)."""
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def save(self) -> None:
        """Send everything buffered and wait: Tune is saving its experiment state, and what
        it may resume from must be in MLflow first, so only results past it are ever
        reported twice (and those are skipped by their step)."""
        self.flush()
        self.drain()

    def close(self, trial_names: list[str], complete: bool) -> None:
        """The experiment ended: `complete` when every trial of it (`trial_names`) ended.
        Then the runs of samples that a restore drew differently are deleted; otherwise
        (interrupted) the open runs are closed as KILLED and a rerun reopens them."""
        self.flush()
        if complete:
            stale = [run for name, run in self.runs.items() if name not in set(trial_names)]
            for run in self.orphans + stale:
                self.submit(self.client.delete_run, run.tracker.run_id)
        else:
            for run in self.runs.values():
                if run.is_open:
                    self.end(run, "KILLED", {})
        self.drain()
        self.writer.shutdown()
        self.progress.close()

    def submit(self, function: Any, *args: Any) -> None:
        """Run `function(*args)` on the writer thread, after everything before it."""
        self.sent.append(self.writer.submit(function, *args))

    def drain(self) -> None:
        """Wait until every request so far is sent; raise the first that failed."""
        sent, self.sent = self.sent, []
        for future in sent:
            future.result()

    def open_run(self, name: str) -> TrialRun | None:
        """The trial's run if this driver has it open (not one that had finished)."""
        run = self.runs.get(name)
        return run if run is not None and run.is_open else None

    def end(self, run: TrialRun, status: str, tags: dict) -> None:
        """Send the run's last results and close it with `status`."""
        run.tags.update(tags)
        self.send(run, status)
        run.is_open, run.status = False, status
        if status != "KILLED":
            self.progress.update(1)

    def send(self, run: TrialRun, status: str | None = None) -> None:
        """Hand the run's buffered results and tags to the writer."""
        batch, run.pending = run.pending, []
        tags, run.tags = run.tags, {}
        self.submit(write_results, run, batch, tags, status)

    def flush(self) -> None:
        """Hand every open run's buffered results to the writer."""
        for run in self.runs.values():
            if run.is_open and (run.pending or run.tags):
                self.send(run)
        self.last_flush = time.monotonic()

    def stopped_early(self, result: dict) -> bool:
        """Whether the scheduler stopped the trial at this result before its end. Tune marks
        the result a scheduler stops on as done (a trainable that returns ends after its
        last result, unmarked); ASHA also stops every trial at `max_t`."""
        scheduler = self.experiment.sweep and self.experiment.sweep.scheduler
        if not result.get("done") or not isinstance(scheduler, AshaScheduler):
            return False
        return result.get("training_iteration", 0) < scheduler.max_t

    def pbt_values(self, run: TrialRun, params: dict[str, Any]) -> dict[str, float]:
        """PBT's values of the keys it mutates: `hp/<key>` metrics at the first result and
        at each change, and `maestro.hp.<key>` tags (latest value)."""
        scheduler = self.experiment.sweep and self.experiment.sweep.scheduler
        if not isinstance(scheduler, PbtScheduler):
            return {}
        current = {key: params[key] for key in scheduler.mutations}
        changed = {k: v for k, v in current.items() if run.hyperparams.get(k) != v}
        if not changed:
            return {}
        if run.hyperparams:
            run.perturbations += 1
        run.hyperparams = current
        run.tags.update({f"maestro.hp.{k}": json.dumps(v) for k, v in changed.items()})
        run.tags["maestro.pbt.perturbations"] = str(run.perturbations)
        return {
            f"hp/{k}": float(v)
            for k, v in changed.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
