"""MLflow for an experiment's trials, written from the driver (docs/architecture.md).

Each trial gets one MLflow child run under the experiment's parent run, written by a Tune
callback in the driver through one writer thread, so Tune's loop never waits on MLflow.
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

import contextlib
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
# A checkpoint that a newer one supersedes is deleted once the experiment state saved this
# long ago already pointed past it (Tune uploads its state in the background).
PRUNE_AFTER_S = 30.0
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
    """A trial's MLflow child run as the tracking callback sees it. `tracker` is set by
    the writer thread once the run exists; everything else belongs to Tune's thread."""

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
    from ray.tune.utils import flatten_dict

    return {
        key: float(value)
        for key, value in flatten_dict(result).items()
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


def __getattr__(name: str) -> Any:
    # The callbacks subclass Ray Tune's Callback, and Ray must not be imported before
    # `init_ray` has settled its authentication mode, so the classes are made on first use.
    # Tune pickles them with the experiment and finds them here again by name on restore.
    if name in ("TrialTracking", "TrialStateMetrics", "CheckpointPruning"):
        globals()["TrialTracking"] = define_tracking_callback()
        globals()["TrialStateMetrics"] = define_trial_state_callback()
        globals()["CheckpointPruning"] = define_pruning_callback()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def define_trial_state_callback() -> type:
    """The `TrialStateMetrics` callback class (see the module's `__getattr__`)."""
    from ray.tune import Callback

    from maestro.metrics import SweepMetrics

    class TrialStateMetrics(Callback):
        """The experiment's trials per state, for Prometheus (the sweeps dashboard)."""

        def __init__(self, name: str):
            self.metrics = SweepMetrics(name)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            self.metrics.record_trials(trials)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.metrics.record_trials(trials)

    return TrialStateMetrics


def define_pruning_callback() -> type:
    """The `CheckpointPruning` callback class (see the module's `__getattr__`)."""
    from ray.tune import Callback

    class CheckpointPruning(Callback):
        """Deletes the checkpoints that newer ones supersede. Tune keeps every checkpoint
        (`num_to_keep` would delete the one its last uploaded experiment state points to
        before the next state is uploaded, and a driver killed then cannot resume); here a
        trial's older checkpoints go once an experiment state saved `PRUNE_AFTER_S` ago,
        which is on storage by now, pointed past them. Checkpoints made before a driver
        was killed are kept."""

        def setup(self, **info: Any) -> None:
            self.checkpoints: dict[str, list[Any]] = {}
            self.saves: list[tuple[float, dict[str, Any]]] = []

        def __getstate__(self) -> dict[str, Any]:
            return {}

        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info):
            self.checkpoints.setdefault(trial.trial_id, []).append(checkpoint)

        def get_state(self) -> None:
            # Tune is saving its experiment state.
            self.prune()

        def prune(self) -> None:
            """Delete each trial's checkpoints older than the one an experiment state saved
            `PRUNE_AFTER_S` ago pointed to: that state, or a later one, is on storage."""
            now = time.monotonic()
            self.saves.append((now, {t: c[-1] for t, c in self.checkpoints.items()}))
            uploaded = [saved for when, saved in self.saves if now - when >= PRUNE_AFTER_S]
            if not uploaded:
                return
            self.saves = [(when, saved) for when, saved in self.saves if now - when < PRUNE_AFTER_S]
            for trial_id, kept in uploaded[-1].items():
                history = self.checkpoints[trial_id]
                old, self.checkpoints[trial_id] = (
                    history[: history.index(kept)],
                    history[history.index(kept) :],
                )
                for checkpoint in old:
                    with contextlib.suppress(OSError):
                        checkpoint.filesystem.delete_dir(checkpoint.path)

    CheckpointPruning.__module__ = __name__
    return CheckpointPruning


def define_tracking_callback() -> type:
    """The `TrialTracking` callback class (see the module's `__getattr__`)."""
    from ray.tune import Callback

    class TrialTracking(Callback):
        """Writes each trial to its own MLflow child run under the experiment's parent run.

        Whenever Tune saves its experiment state (`get_state`), every buffered result is
        sent and waited for, so any checkpoint Tune can resume from has its metrics in
        MLflow. Tune pickles its callbacks with the experiment and hands that copy back on
        restore: only the experiment and parent run id are kept, and `setup` reads the
        experiment's existing runs from MLflow."""

        def __init__(self, experiment: Experiment, parent_run_id: str):
            self.experiment = experiment
            self.parent_run_id = parent_run_id

        def __getstate__(self) -> dict[str, Any]:
            return {"experiment": self.experiment, "parent_run_id": self.parent_run_id}

        def setup(self, **info: Any) -> None:
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

        def submit(self, function: Any, *args: Any) -> None:
            """Run `function(*args)` on the writer thread, after everything before it."""
            self.sent.append(self.writer.submit(function, *args))

        def drain(self) -> None:
            """Wait until every request so far is sent; raise the first that failed."""
            sent, self.sent = self.sent, []
            for future in sent:
                future.result()

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            name = trial_name(trial)
            params = dict(trial.config)
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
                # A trial of an earlier driver continues into its run.
                run.is_open, run.status = True, "RUNNING"
                self.submit(self.client.update_run, run.tracker.run_id, "RUNNING")
            run.seen = True

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            run = self.open_run(trial)
            # New results are those past the last one in MLflow by step, then by Tune's
            # iteration (several reports can share a step, as a trial's final metrics share
            # its last step). Not by iteration alone: a trial restarted without a Tune
            # checkpoint but from its own counts iterations from 1 again while its steps
            # go on.
            reached = int(result["training_iteration"])
            step = int(result.get(STEP, reached))
            if run is not None and RESUMED_AT in result:
                # Logged even where the results around it are already in MLflow.
                run.pending.append((int(result[RESUMED_AT]), {RESUMED_AT: result[RESUMED_AT]}))
            if run is None or (step, reached) <= run.last_logged:
                return  # already in MLflow: a trial restored from an older checkpoint
            metrics = {**result_metrics(result), **self.pbt_values(run, trial)}
            metrics.pop(RESUMED_AT, None)  # logged above, at its own step
            if step == run.last_logged[0]:
                # A value repeated at the same step (the sweep's metric, carried into a
                # report that lacks it) is the same point: logged once.
                metrics = {k: v for k, v in metrics.items() if run.at_step.get(k) != v}
                run.at_step.update(metrics)
            else:
                run.at_step = dict(metrics)
            run.last_logged = (step, reached)
            run.outcome = "stopped" if self.stopped_early(result) else "completed"
            run.pending.append((step, metrics))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
            run = self.open_run(trial)
            if run is not None:
                self.end(run, "FINISHED", {"maestro.trial.outcome": run.outcome or "completed"})

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any):
            run = self.open_run(trial)
            if run is not None:
                lines = str(trial.get_error() or "?").strip().splitlines() or ["?"]
                tags = {"maestro.trial.outcome": "error", "maestro.trial.error": lines[-1][:500]}
                self.end(run, "FAILED", tags)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
                self.flush()

        def get_state(self) -> None:
            # Tune is saving its experiment state: what it may resume from must be in
            # MLflow first, so only results past it are ever reported twice (and those
            # are skipped by their step).
            self.flush()
            self.drain()

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.flush()
            complete = len(trials) >= self.experiment.total_trials() and all(
                trial.status in ("TERMINATED", "ERROR") for trial in trials
            )
            if complete:
                # Runs of samples that were drawn differently after a restore.
                names = {trial_name(trial) for trial in trials}
                stale = [run for name, run in self.runs.items() if name not in names]
                for run in self.orphans + stale:
                    self.submit(self.client.delete_run, run.tracker.run_id)
            else:
                # Interrupted: close the open runs; rerunning the experiment reopens them.
                for run in self.runs.values():
                    if run.is_open:
                        self.end(run, "KILLED", {})
            self.drain()
            self.writer.shutdown()
            self.progress.close()

        def open_run(self, trial: Any) -> TrialRun | None:
            """The trial's run if this driver has it open (not one that had finished)."""
            run = self.runs.get(trial_name(trial))
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
            """Whether the scheduler stopped the trial at this result before its end. Tune
            marks the result a scheduler stops on as done (a trainable that returns ends
            after its last result, unmarked); ASHA also stops every trial at `max_t`."""
            scheduler = self.experiment.sweep and self.experiment.sweep.scheduler
            if not result.get("done") or not isinstance(scheduler, AshaScheduler):
                return False
            return result.get("training_iteration", 0) < scheduler.max_t

        def pbt_values(self, run: TrialRun, trial: Any) -> dict[str, float]:
            """PBT's values of the keys it mutates: `hp/<key>` metrics at the first result
            and at each change, and `maestro.hp.<key>` tags (latest value)."""
            scheduler = self.experiment.sweep and self.experiment.sweep.scheduler
            if not isinstance(scheduler, PbtScheduler):
                return {}
            current = {key: trial.config[key] for key in scheduler.mutations}
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

    TrialTracking.__module__ = __name__
    return TrialTracking
