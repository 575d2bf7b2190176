"""Hyperparameter sweeps on Ray Tune from a spec's `sweep:` block, tracked in MLflow.

docs/sweeps.md describes the block, what MLflow shows and how resuming works. In short:

- Each trial runs the method's Tune trainable on the spec with the trial's values set.
- MLflow gets one parent run for the sweep and one child run per trial, written by a Tune
  callback in the driver through one writer thread, so Tune's loop never waits on MLflow.
  A trial's results are buffered and sent as `log_batch` requests every `FLUSH_SECONDS`
  and when it ends. PBT's changing values go to `hp/<key>` metrics and `maestro.hp.<key>`
  tags, since MLflow params cannot change.
- The sweep's state (`sweeps/<method>/<name>/sweep.json` in the store) holds the parent
  run id. The trial-to-run mapping is on the child runs themselves: tags written in the
  request that creates each run, naming the trial by its place in the sample order
  (`trial_00042`), which a restored searcher reproduces. `--resume` restores Tune's
  experiment; trials whose run FINISHED are not rerun, the others continue into their run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator

from maestro.methods import get_method
from maestro.runtime import init_ray
from maestro.spec import ExperimentSpec, SpecError, StrictModel, first_error, flatten
from maestro.store import ArtifactStore, open_store
from maestro.tracking import Tracker, tracking_uri

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
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
BEST_TRIALS = 5  # trials summarised on the parent run


class SweepStateError(RuntimeError):
    """The sweep's saved state does not allow what was asked (start twice, resume nothing)."""


# ---------------------------------------------------------------- the `sweep:` block


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


class TrialResources(StrictModel):
    """What each trial reserves from Ray."""

    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)


class FailurePolicy(StrictModel):
    """Tune's FailureConfig: retries per trial, and whether one error stops the sweep."""

    max_failures: int = Field(default=0, ge=-1, description="-1: retry forever")
    fail_fast: bool = False


class SweepSpec(StrictModel):
    """The spec's `sweep:` block, validated."""

    metric: str = Field(min_length=1)
    mode: Literal["min", "max"]
    space: dict[str, Domain] = Field(min_length=1)
    search: Literal["random", "grid", "optuna"] = "random"
    num_samples: int = Field(default=1, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    scheduler: NoScheduler | AshaScheduler | PbtScheduler = Field(
        default_factory=NoScheduler, discriminator="type"
    )
    resources: TrialResources = Field(default_factory=TrialResources)
    failure: FailurePolicy = Field(default_factory=FailurePolicy)
    checkpoint_seconds: float = Field(
        default=10.0, ge=0, description="a trainable checkpoints at most this often"
    )
    step_metric: str = Field(
        default="training_iteration", description="result key used as the MLflow step"
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

    def expected_trials(self) -> int:
        """How many trials the sweep makes: the grid's size times `num_samples`."""
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


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: the spec, its `sweep:` block, and where its state lives."""

    spec: ExperimentSpec
    sweep: SweepSpec
    name: str
    prefix: str  # store folder of the sweep state

    @property
    def state_key(self) -> str:
        return f"{self.prefix}/sweep.json"


def load_sweep(spec: ExperimentSpec) -> SweepPlan:
    """Validate the spec's `sweep:` block against the method; `SpecError` names the field."""
    where = spec.source or "<spec>"
    if spec.sweep is None:
        raise SpecError(f"{where}: sweep: this spec has no sweep block")
    try:
        sweep = SweepSpec.model_validate(spec.sweep)
    except ValidationError as exc:
        raise SpecError(f"{where}: {first_error(exc, prefix='sweep')}") from None
    method = get_method(spec.method)
    if method.trainable is None:
        raise SpecError(f"{where}: method: {spec.method} has no Tune trainable to sweep")

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
        if key != "seed" and not key.startswith("config."):
            raise SpecError(f"{where}: {name}: only `seed` and `config.<field>` can be swept")
        if sweep.search == "grid" and domain.kind not in ("grid", "choice"):
            raise SpecError(f"{where}: {name}: search grid takes grid or choice, not {domain.kind}")
        if sweep.search == "optuna" and domain.kind == "grid":
            raise SpecError(f"{where}: {name}: search optuna takes choice, not grid")
        for value in domain.examples():
            check_trial_value(base, key, value, method.config, f"{where}: {name}")
    return SweepPlan(spec, sweep, spec.run_name(), f"sweeps/{spec.method}/{spec.run_name()}")


def check_trial_value(base: dict, key: str, value: Any, schema: Any, field_name: str) -> None:
    """Raise `SpecError` if setting `key` to `value` gives an invalid spec."""
    if key == "seed":
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpecError(f"{field_name}: seed values must be integers (got {value!r})")
        return
    try:
        schema.model_validate(apply_params(base, {key: value})["config"])
    except ValidationError as exc:
        raise SpecError(f"{field_name}: value {value!r}: {first_error(exc, 'config')}") from None


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


# ---------------------------------------------------------------- where Tune stores state


def tune_storage(uri: str) -> tuple[str, Any]:
    """Tune's `(storage_path, storage_filesystem)` for a folder or `s3://bucket/prefix`.

    For S3 the filesystem is pyarrow's, pointed at `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`
    when set (MinIO, moto, Ceph); credentials come from the AWS SDK's usual chain and are
    never written into the filesystem object (which Tune pickles to its workers)."""
    if not uri.startswith("s3://"):
        path = urlparse(uri).path if uri.startswith("file://") else uri
        return str(Path(path).expanduser().resolve()), None
    from pyarrow import fs

    # Delayed open: a small object (state, a checkpoint file) is one PUT, not a multipart
    # upload of three requests.
    options: dict[str, Any] = {"allow_delayed_open": True}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=url.netloc, scheme=url.scheme)
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        options["region"] = region
    parsed = urlparse(uri)
    return f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"), fs.S3FileSystem(**options)


def tune_location(plan: SweepPlan, store: ArtifactStore) -> tuple[str, str, Any]:
    """`(storage_path, experiment name, filesystem)` of the sweep's Tune experiment: under
    `sweep.storage` if given, else beside the sweep state in the artifact store."""
    if plan.sweep.storage:
        uri, name = plan.sweep.storage, plan.name
    else:
        uri, name = store.uri(plan.prefix), "tune"
    path, filesystem = tune_storage(uri)
    return path, name, filesystem


# ---------------------------------------------------------------- the trial


def trial_name(trial: Any) -> str:
    """`trial_00042`: the trial's place in the sample order, which a restored searcher
    reproduces (Tune's experiment tag starts with it)."""
    return f"trial_{int(str(trial.experiment_tag).split('_', 1)[0]):05d}"


def trial_dirname(trial: Any) -> str:
    """The trial's folder: its name and Tune id (unique even if a sample is redrawn)."""
    return f"{trial_name(trial)}_{trial.trial_id}"


def run_trial(
    params: dict[str, Any], method_name: str, base: dict[str, Any], finished: dict[str, Any]
) -> None:
    """One trial: the method's trainable on the spec with the trial's values applied.

    A trial whose MLflow run FINISHED before a resume (`finished`: name -> [params, final
    metrics]) reports that final result again and returns: Tune runs such trials again
    when they ended after its last state save."""
    from ray import tune

    done = finished.get(tune.get_context().get_trial_name())
    if done is not None and done[0] == params:
        tune.report(done[1])
        return
    get_method(method_name).trainable(apply_params(base, params))


# ---------------------------------------------------------------- MLflow, from the driver


@dataclass
class TrialRun:
    """A trial's MLflow child run as the tracking callback sees it. `tracker` is set by
    the writer thread once the run exists; everything else belongs to Tune's thread."""

    params: dict[str, Any]  # the trial's swept values
    tracker: Tracker | None = None
    status: str = "RUNNING"
    outcome: str = ""  # completed | stopped | error, once the trial ended
    last_logged: tuple[int, int] = (0, 0)  # (step, Tune iteration) of its last result in MLflow
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


def find_trial_runs(client: Any, parent_run_id: str, step_metric: str) -> dict[str, TrialRun]:
    """Every child run of a sweep, by trial name (read from the runs' tags); `step_metric`
    (the sweep's) tells where each run's logged results end."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = search_runs(client, [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {
        run.data.tags["maestro.sweep.trial"]: TrialRun(
            params=json.loads(run.data.tags["maestro.sweep.params"]),
            tracker=Tracker(client, run.info.run_id),
            status=run.info.status,
            outcome=run.data.tags.get("maestro.trial.outcome", ""),
            last_logged=(
                int(run.data.metrics.get(step_metric, 0)),
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
    if name in ("SweepTracking", "TrialStateMetrics"):
        globals()["SweepTracking"] = define_tracking_callback()
        globals()["TrialStateMetrics"] = define_trial_state_callback()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def define_trial_state_callback() -> type:
    """The `TrialStateMetrics` callback class (see the module's `__getattr__`)."""
    from ray.tune import Callback

    from maestro.metrics import SweepMetrics

    class TrialStateMetrics(Callback):
        """The sweep's trials per state, for Prometheus (the sweeps dashboard)."""

        def __init__(self, sweep_name: str):
            self.metrics = SweepMetrics(sweep_name)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            self.metrics.record_trials(trials)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.metrics.record_trials(trials)

    return TrialStateMetrics


def define_tracking_callback() -> type:
    """The `SweepTracking` callback class (see the module's `__getattr__`)."""
    from ray.tune import Callback

    class SweepTracking(Callback):
        """Writes each trial to its own MLflow child run under the sweep's parent run.

        Whenever Tune saves its experiment state (`get_state`), every buffered result is
        sent and waited for, so any checkpoint Tune can resume from has its metrics in
        MLflow. Tune pickles its callbacks with the experiment and hands that copy back on
        restore: only the plan and parent run id are kept, and `setup` reads the sweep's
        existing runs from MLflow."""

        def __init__(self, plan: SweepPlan, parent_run_id: str):
            self.plan = plan
            self.parent_run_id = parent_run_id

        def __getstate__(self) -> dict[str, Any]:
            return {"plan": self.plan, "parent_run_id": self.parent_run_id}

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
                **self.plan.spec.tracking.tags,
                "maestro.kind": "trial",
                "maestro.sweep.name": self.plan.name,
                "mlflow.parentRunId": self.parent_run_id,
            }
            self.base = self.plan.spec.resolved()
            self.base.pop("sweep")
            self.runs = find_trial_runs(
                self.client, self.parent_run_id, self.plan.sweep.step_metric
            )
            self.orphans: list[TrialRun] = []
            self.progress = tqdm(
                total=self.plan.sweep.expected_trials(),
                initial=sum(run.status == "FINISHED" for run in self.runs.values()),
                desc=f"sweep {self.plan.name}",
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
            params = {key: trial.config[key] for key in self.plan.sweep.space}
            run = self.runs.get(name)
            if run is not None and not run.seen and run.params != params:
                # Redrawn differently after a restore: the old run belongs to no trial.
                self.orphans.append(run)
                run = None
            if run is None:
                run = self.runs[name] = TrialRun(params, is_open=True)
                tags = {
                    **self.tags,
                    "mlflow.runName": f"{self.plan.name}/{name}",
                    "maestro.sweep.trial": name,
                    "maestro.sweep.params": json.dumps(params, sort_keys=True),
                }
                spec = flatten(apply_params(self.base, params))
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
            # iteration (several reports can share a step, as a Motif evaluation shares
            # the last training step). Not by iteration alone: a trial restarted without a
            # Tune checkpoint but from its own (a Motif agent's) counts iterations from 1
            # again while its steps go on.
            reached = int(result["training_iteration"])
            step = int(result.get(self.plan.sweep.step_metric, reached))
            if run is None or (step, reached) <= run.last_logged:
                return  # already in MLflow: a trial restored from an older checkpoint
            run.last_logged = (step, reached)
            run.outcome = "stopped" if self.stopped_early(result) else "completed"
            run.pending.append((step, {**result_metrics(result), **self.pbt_values(run, trial)}))

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
            complete = len(trials) >= self.plan.sweep.expected_trials() and all(
                trial.status in ("TERMINATED", "ERROR") for trial in trials
            )
            if complete:
                # Runs of samples that were drawn differently after a restore.
                names = {trial_name(trial) for trial in trials}
                stale = [run for name, run in self.runs.items() if name not in names]
                for run in self.orphans + stale:
                    self.submit(self.client.delete_run, run.tracker.run_id)
            else:
                # Interrupted: close the open runs; `--resume` reopens them.
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
            scheduler = self.plan.sweep.scheduler
            if not result.get("done") or not isinstance(scheduler, AshaScheduler):
                return False
            return result.get("training_iteration", 0) < scheduler.max_t

        def pbt_values(self, run: TrialRun, trial: Any) -> dict[str, float]:
            """PBT's values of the keys it mutates: `hp/<key>` metrics at the first result
            and at each change, and `maestro.hp.<key>` tags (latest value)."""
            scheduler = self.plan.sweep.scheduler
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

    SweepTracking.__module__ = __name__
    return SweepTracking


# ---------------------------------------------------------------- running a sweep


@dataclass
class SweepResult:
    """How a `maestro sweep` ended."""

    name: str
    parent_run_id: str | None
    tune_path: str
    trials: int = 0
    errored: int = 0
    stopped_early: int | None = None  # known only with tracking
    best: list[dict[str, Any]] = field(default_factory=list)
    already_finished: bool = False


def run_sweep(spec: ExperimentSpec, resume: bool = False) -> SweepResult:
    """Run the spec's sweep on Ray Tune, or resume an interrupted one (`resume=True`)."""
    plan = load_sweep(spec)
    store = open_store(spec.store.uri)
    state = store.get_json(plan.state_key) if store.exists(plan.state_key) else None
    storage_path, experiment_name, filesystem = tune_location(plan, store)
    tune_path = f"{storage_path}/{experiment_name}"
    shown_path = f"s3://{tune_path}" if filesystem is not None else tune_path
    if state and state["status"] == "FINISHED":
        return SweepResult(
            plan.name, state["parent_run_id"], shown_path, already_finished=True, **state["summary"]
        )
    if state and not resume:
        raise SweepStateError(
            f"sweep {plan.name} already started (status {state['status']}): "
            "continue it with --resume"
        )
    if resume and not state:
        raise SweepStateError(f"sweep {plan.name}: nothing to resume at {store.uri(plan.prefix)}")

    parent = start_parent(plan, state, shown_path)
    state = {"name": plan.name, "parent_run_id": parent.run_id, "status": "RUNNING"}
    store.put_json(plan.state_key, state)

    init_ray(spec.resources)
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            method_name=spec.method,
            base=trial_base(plan, store),
            finished=finished_trials(plan, parent) if resume else {},
        ),
        {"cpu": plan.sweep.resources.cpus, "gpu": plan.sweep.resources.gpus},
    )
    # No default CSV and TensorBoard loggers: they duplicate MLflow, and the TensorBoard one
    # imports torch into the driver. `build_tuner` keeps the JSON one, which a restore reads.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    try:
        if resume and tune.Tuner.can_restore(tune_path, storage_filesystem=filesystem):
            tuner = tune.Tuner.restore(
                tune_path,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=False,
                storage_filesystem=filesystem,
            )
        else:
            tuner = build_tuner(plan, trainable, parent, storage_path, experiment_name, filesystem)
        results = tuner.fit()
        # Tune returns normally when stopped by Ctrl-C, with trials left unfinished.
        if results.num_terminated + results.num_errors < plan.sweep.expected_trials():
            raise KeyboardInterrupt
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        parent.end(status)
        store.put_json(plan.state_key, {**state, "status": status, "error": repr(exc)[:500]})
        raise
    summary = summarise(plan, results, parent)
    parent.end("FINISHED")
    store.put_json(plan.state_key, {**state, "status": "FINISHED", "summary": summary})
    return SweepResult(plan.name, parent.run_id, shown_path, **summary)


def trial_base(plan: SweepPlan, store: ArtifactStore) -> dict[str, Any]:
    """The resolved spec that every trial starts from. Its store is the sweep's, by its full
    URI (trials run in working folders of their own, where a relative path means nothing).
    Its `sweep` block holds what the trainable reads: `checkpoint_seconds` (0 under PBT,
    whose exploits copy a trial's latest checkpoint and so need one at every report) and
    `prefix`, the sweep's folder in the store, for trials that keep files there."""
    base = plan.spec.resolved()
    base["store"] = {"uri": store.root}
    every = 0.0 if isinstance(plan.sweep.scheduler, PbtScheduler) else plan.sweep.checkpoint_seconds
    base["sweep"] = {**base["sweep"], "checkpoint_seconds": every, "prefix": plan.prefix}
    return base


def start_parent(plan: SweepPlan, state: dict | None, tune_path: str) -> Tracker:
    """The sweep's parent MLflow run: created, or reopened from the sweep's state."""
    spec, sweep = plan.spec, plan.sweep
    if not spec.tracking.enabled:
        return Tracker.disabled()
    parent = Tracker.start(
        experiment=spec.tracking.experiment or spec.method,
        run_name=plan.name,
        params=flatten(spec.resolved()),
        tags={
            **spec.tracking.tags,
            "maestro.method": spec.method,
            "maestro.spec": spec.source,
            "maestro.kind": "sweep",
            "maestro.sweep.metric": sweep.metric,
            "maestro.sweep.mode": sweep.mode,
            "maestro.sweep.step_metric": sweep.step_metric,
            "maestro.sweep.space": json.dumps(
                {k: d.model_dump(exclude_none=True) for k, d in sweep.space.items()}
            ),
            "maestro.sweep.tune_path": tune_path,
        },
        resume_run_id=state["parent_run_id"] if state else None,
    )
    if not state:
        parent.log_dict(spec.resolved(), "spec.yaml")
    return parent


def finished_trials(plan: SweepPlan, parent: Tracker) -> dict[str, list[Any]]:
    """Trial name -> [params, final metrics] of every FINISHED trial run of the sweep."""
    if not parent.enabled:
        return {}
    return {
        name: [run.params, {k: v for k, v in run.final.items() if k not in TUNE_AUTOFILLED}]
        for name, run in find_trial_runs(
            parent.client, parent.run_id, plan.sweep.step_metric
        ).items()
        if run.status == "FINISHED"
    }


def build_tuner(
    plan: SweepPlan,
    trainable: Any,
    parent: Tracker,
    storage_path: str,
    experiment_name: str,
    filesystem: Any,
) -> Any:
    """A new Tuner for the sweep: searcher, scheduler, concurrency, failure policy."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import BasicVariantGenerator

    sweep = plan.sweep
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=plan.spec.seed)
        max_concurrent = sweep.max_concurrent
    else:
        # This searcher limits concurrency itself (Tune's own limiter only wraps Searchers).
        searcher = BasicVariantGenerator(
            random_state=plan.spec.seed, max_concurrent=sweep.max_concurrent or 0
        )
        max_concurrent = None
    # Tune's own result.json, which its restore reads, and the trial counts for Prometheus.
    callbacks = [JsonLoggerCallback(), __getattr__("TrialStateMetrics")(plan.name)]
    if parent.enabled:
        callbacks.append(__getattr__("SweepTracking")(plan, parent.run_id))
    return tune.Tuner(
        trainable,
        param_space={key: domain.to_tune(sweep.search) for key, domain in sweep.space.items()},
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=searcher,
            scheduler=build_scheduler(sweep),
            num_samples=sweep.num_samples,
            max_concurrent_trials=max_concurrent,
            # A new worker process per trial costs far more than a short trial.
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=experiment_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(
                max_failures=sweep.failure.max_failures, fail_fast=sweep.failure.fail_fast
            ),
            verbose=0,
        ),
    )


def build_scheduler(sweep: SweepSpec) -> Any:
    """Tune's scheduler for the `scheduler:` block (None: run every trial to the end)."""
    scheduler = sweep.scheduler
    if isinstance(scheduler, AshaScheduler):
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=scheduler.max_t,
            grace_period=scheduler.grace_period,
            reduction_factor=scheduler.reduction_factor,
        )
    if isinstance(scheduler, PbtScheduler):
        from ray.tune.schedulers import PopulationBasedTraining

        return PopulationBasedTraining(
            time_attr="training_iteration",  # in reports, as the `sweep:` block counts
            perturbation_interval=scheduler.perturbation_interval,
            hyperparam_mutations={
                key: list(domain.args) if domain.kind == "choice" else domain.to_tune("random")
                for key, domain in scheduler.mutations.items()
            },
        )
    return None


def summarise(plan: SweepPlan, results: Any, parent: Tracker) -> dict[str, Any]:
    """Counts and, with tracking, the best trials (by their last reported metric) from the
    child runs, logged on the parent run: metrics, `maestro.best.*` tags,
    `sweep/best_trials.json` and `sweep/trials.json`."""
    counts = {"trials": len(results), "errored": results.num_errors}
    if not parent.enabled:
        return counts
    metric = plan.sweep.metric
    rows = [
        {
            "trial": name,
            "run_id": run.tracker.run_id,
            "params": run.params,
            metric: run.final.get(metric),
            "training_iteration": run.last_logged[1],
            "outcome": run.outcome,
        }
        for name, run in sorted(
            find_trial_runs(parent.client, parent.run_id, plan.sweep.step_metric).items()
        )
    ]
    counts["stopped_early"] = sum(row["outcome"] == "stopped" for row in rows)
    scored = [row for row in rows if row[metric] is not None and not math.isnan(row[metric])]
    scored.sort(key=lambda row: row[metric], reverse=plan.sweep.mode == "max")
    best = scored[:BEST_TRIALS]
    parent.log_metrics({f"sweep/{key}": value for key, value in counts.items()}, step=0)
    if best:
        parent.log_metrics({f"best/{metric}": best[0][metric]}, step=0)
        parent.set_tags(
            {
                "maestro.best.trial": best[0]["trial"],
                "maestro.best.run_id": best[0]["run_id"],
                "maestro.best.params": json.dumps(best[0]["params"], sort_keys=True),
            }
        )
    parent.log_dict(best, "sweep/best_trials.json")
    parent.log_dict(rows, "sweep/trials.json")
    return {**counts, "best": best}
