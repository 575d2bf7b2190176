"""Running an experiment's trials on Ray Tune (docs/architecture.md, docs/sweeps.md).

`run_trials` is the trials step of `maestro.run`: for a run, a grid over the spec's arms x
seeds; for a sweep, the `sweep:` search, each point run over the same arms and seeds. Each
trial runs `trial_main`: the method's `trial` in a `TrialContext`, on the spec with the
trial's arm, seed and swept values applied (nothing else travels in the trial's config).
Tune keeps its experiment (searcher, trials, checkpoints) in the store beside the run's
state, so a killed experiment is restored: finished trials are kept and the others go on
from their last checkpoint. Tune's callbacks (`maestro.sweep.callbacks`) write MLflow through
`maestro.sweep.tracking`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from maestro import signing
from maestro.errors import SignatureError
from maestro.methods import get_method
from maestro.spec import DEFAULT_ARM, build_spec, trial_data
from maestro.store import ArtifactStore, open_store
from maestro.sweep.spec import AshaScheduler, PbtScheduler, SweepSpec
from maestro.sweep.tracking import TUNE_AUTOFILLED, find_trial_runs, result_metrics, trial_name
from maestro.tracking import Tracker

if TYPE_CHECKING:
    from maestro.run import Experiment, TrialResult

BEST_TRIALS = 5  # a sweep's trials summarised on its parent run


# ---------------------------------------------------------------- the trial


def trial_main(
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    prefix: str,
    prepared: dict[str, Any],
    finished: dict[str, Any],
    metric: str | None,
    report_seconds: float,
) -> None:
    """One trial, as Tune's function trainable: the method's `trial` on the spec `base`
    (resolved) with the trial's `params` (arm, seed, swept values) applied; a sweep's
    `metric` goes into every report once measured; reports are batched by `report_seconds`
    (`TrialContext`).

    A trial whose MLflow run FINISHED before a resume (`finished`: name -> [params, final
    metrics]) reports that final result again and returns: Tune runs such trials again
    when they ended after its last state save."""
    from ray import tune

    from maestro.run import TrialContext

    name = tune.get_context().get_trial_name()
    done = finished.get(name)
    if done is not None and done[0] == params:
        tune.report(done[1])
        return
    spec = build_spec(trial_data(base, params), f"{prefix}/trials/{name}", arm_applied=True)
    ctx = TrialContext(
        spec=spec,
        arm=params["arm"],
        name=name,
        experiment=Path(prefix).name,
        store=open_store(spec.store.uri),
        prefix=f"{prefix}/trials/{name}",
        prepared=prepared,
        report_seconds=report_seconds,
        carried=metric,
    )
    ctx.finish(get_method(spec.method).trial(ctx))


def report_seconds(experiment: Experiment) -> float:
    """How long a trial batches its reports: `trials.report_seconds`, or 0 (every log at
    once) under a scheduler, which counts and reads every log."""
    scheduler = experiment.sweep and experiment.sweep.scheduler
    if isinstance(scheduler, (AshaScheduler, PbtScheduler)):
        return 0.0
    return experiment.spec.trials.report_seconds


def trial_resources(params: dict[str, Any], *, base: dict[str, Any]) -> Any:
    """What one trial reserves: its method's request for the trial's config, else the
    spec's `trials.cpus` and `trials.gpus`."""
    method = get_method(base["method"])
    if method.resources is None:
        trials = base["trials"]
        return {"cpu": trials["cpus"], "gpu": trials["gpus"]}
    # A restored Tuner asks with an empty config too: the spec's first arm then.
    params = {"arm": next(iter(base["trials"]["arms"]), DEFAULT_ARM), "seed": 0, **params}
    return method.resources(method.config.model_validate(trial_data(base, params)["config"]))


def trial_dirname(trial: Any) -> str:
    """The trial's folder: its name and Tune id (unique even if a sample is redrawn)."""
    return f"{trial_name(trial)}_{trial.trial_id}"


def param_space(experiment: Experiment) -> dict[str, Any]:
    """Tune's search space: the arms and seeds as grids (a single value as a constant),
    and a sweep's dimensions by their dotted keys."""
    from ray import tune

    spec, sweep = experiment.spec, experiment.sweep
    space = {
        key: tune.grid_search(values) if len(values) > 1 else values[0]
        for key, values in (("arm", spec.arm_names()), ("seed", spec.seeds()))
    }
    if sweep is not None:
        space.update({key: domain.to_tune(sweep.search) for key, domain in sweep.space.items()})
    return space


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


def tune_location(experiment: Experiment, store: ArtifactStore) -> tuple[str, str, Any]:
    """`(storage_path, experiment name, filesystem)` of the Tune experiment: under
    `sweep.storage` if given, else beside the run's state in the artifact store."""
    if experiment.sweep is not None and experiment.sweep.storage:
        uri, name = experiment.sweep.storage, experiment.name
    else:
        uri, name = store.uri(experiment.prefix), "tune"
    path, filesystem = tune_storage(uri)
    return path, name, filesystem


# ---------------------------------------------------------------- signing Tune's state

SIGNATURES = "maestro-signatures.json"  # beside Tune's state: the SHA-256 of what it wrote
SIGNED_VERSIONS = 8  # per file: an upload cut short leaves a recent version, still signed
TUNER_STATE = "tuner.pkl"  # what the Tuner writes when it is made (or restored)


def signed_files(relpaths: list[str]) -> list[str]:
    """The files of a Tune experiment folder that a restore unpickles: the state at the
    top (JSON with pickles inside, and pickles) and trials' pickled errors."""
    return [
        path
        for path in relpaths
        if ("/" not in path and path.endswith((".json", ".pkl"))) or path.endswith("/error.pkl")
        if path != SIGNATURES
    ]


def read_signatures(fs: Any, tune_path: str) -> dict[str, list[str]]:
    """The signed digests beside the Tune state at `tune_path` ({} if none yet);
    `SignatureError` if the file is not as Maestro wrote it."""
    from pyarrow import fs as pafs

    where = f"{tune_path}/{SIGNATURES}"
    if fs.get_file_info(where).type == pafs.FileType.NotFound:
        return {}
    with fs.open_input_stream(where) as f:
        saved = json.loads(f.readall())
    digests = saved.get("files", {})
    signing.check(json.dumps(digests, sort_keys=True).encode(), saved.get("signature", ""), where)
    return digests


def sign_tune_files(fs: Any, tune_path: str, files: dict[str, bytes]) -> None:
    """Add the digests of `files` (path relative to `tune_path` -> content) to the signed
    ones beside the Tune state, keeping each file's last `SIGNED_VERSIONS`."""
    digests = read_signatures(fs, tune_path)
    for path, data in files.items():
        versions = digests.get(path, [])
        digest = hashlib.sha256(data).hexdigest()
        if digest not in versions:
            digests[path] = [*versions, digest][-SIGNED_VERSIONS:]
    signature = signing.sign(json.dumps(digests, sort_keys=True).encode())
    with fs.open_output_stream(f"{tune_path}/{SIGNATURES}") as f:
        f.write(json.dumps({"files": digests, "signature": signature}).encode())


def check_tune_state(fs: Any, tune_path: str) -> None:
    """`SignatureError` unless every file Tune unpickles on restore (`signed_files`) at
    `tune_path` is a version Maestro signed."""
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(tune_path, recursive=True))
    relpaths = [i.path[len(tune_path) + 1 :] for i in infos if i.type == pafs.FileType.File]
    digests = read_signatures(fs, tune_path)
    for path in signed_files(relpaths):
        with fs.open_input_stream(f"{tune_path}/{path}") as f:
            digest = hashlib.sha256(f.readall()).hexdigest()
        if digest not in digests.get(path, []):
            raise SignatureError(
                f"Tune's state {tune_path}/{path} is not a version this run signed (key "
                f"{signing.key_path()}): refusing to load it; --new-run starts afresh"
            )


# ---------------------------------------------------------------- running the trials


def run_trials(
    experiment: Experiment,
    store: ArtifactStore,
    parent: Tracker,
    prepared: dict[str, Any],
    resume: bool,
) -> list[TrialResult]:
    """Every trial of the experiment on Tune (restoring Tune's experiment when `resume`
    and it was saved); returns each trial's final metrics. Raises `KeyboardInterrupt`
    when Tune was stopped with trials unfinished."""
    from pyarrow import fs as pafs
    from ray import tune

    from maestro.run import TrialResult

    storage_path, tune_name, filesystem = tune_location(experiment, store)
    tune_path = f"{storage_path}/{tune_name}"
    base = experiment.spec.resolved()
    # Trials run in working folders of their own, where a relative store path means nothing.
    base["store"] = {"uri": store.root}
    finished = finished_trials(parent) if resume else {}
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_main,
            base=base,
            prefix=experiment.prefix,
            prepared=prepared,
            finished=finished,
            metric=experiment.sweep.metric if experiment.sweep else None,
            report_seconds=report_seconds(experiment),
        ),
        functools.partial(trial_resources, base=base),
    )
    # No default CSV and TensorBoard loggers: they duplicate MLflow, and the TensorBoard one
    # imports torch into the driver. `build_tuner` keeps the JSON one, which a restore reads.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # A trial reports what it measured at that step; the sweep's metric need not be in each.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    fs = filesystem or pafs.LocalFileSystem()
    if resume and tune.Tuner.can_restore(tune_path, storage_filesystem=filesystem):
        check_tune_state(fs, tune_path)
        tuner = tune.Tuner.restore(
            tune_path,
            trainable=trainable,
            resume_unfinished=True,
            # A run's trials all count: one that failed is tried again; a sweep keeps going.
            resume_errored=experiment.sweep is None,
            storage_filesystem=filesystem,
        )
    else:
        tuner = build_tuner(experiment, trainable, parent, storage_path, tune_name, filesystem)
    with fs.open_input_stream(f"{tune_path}/{TUNER_STATE}") as f:
        sign_tune_files(fs, tune_path, {TUNER_STATE: f.readall()})
    grid = tuner.fit()
    # Tune returns normally when stopped by Ctrl-C, with trials left unfinished.
    if grid.num_terminated + grid.num_errors < experiment.total_trials():
        raise KeyboardInterrupt
    results = []
    for result in grid:
        name = trial_name_of(result.path)
        config = result.config or {}
        results.append(
            TrialResult(
                name=name,
                arm=config.get("arm", ""),
                seed=int(config.get("seed", 0)),
                params=config,
                metrics={
                    k: v
                    for k, v in result_metrics(result.metrics or {}).items()
                    if k not in TUNE_AUTOFILLED
                },
                prefix=f"{experiment.prefix}/trials/{name}",
                error=str(result.error).strip().splitlines()[-1][:500] if result.error else None,
            )
        )
    return sorted(results, key=lambda r: r.name)


def trial_name_of(path: str) -> str:
    """`trial_00042` from a trial's folder (`trial_dirname`)."""
    return "_".join(Path(path.rstrip("/")).name.split("_")[:2])


def finished_trials(parent: Tracker) -> dict[str, list[Any]]:
    """Trial name -> [params, final metrics] of every FINISHED trial run of the experiment."""
    if not parent.enabled:
        return {}
    return {
        name: [run.params, {k: v for k, v in run.final.items() if k not in TUNE_AUTOFILLED}]
        for name, run in find_trial_runs(parent.client, parent.run_id).items()
        if run.status == "FINISHED"
    }


def build_tuner(
    experiment: Experiment,
    trainable: Any,
    parent: Tracker,
    storage_path: str,
    tune_name: str,
    filesystem: Any,
) -> Any:
    """A new Tuner: searcher, scheduler, concurrency, failure policy, callbacks."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import BasicVariantGenerator

    from maestro.sweep.callbacks import (
        CheckpointPruning,
        StateSigning,
        TrialStateMetrics,
        TrialTracking,
    )

    sweep, trials = experiment.sweep, experiment.spec.trials
    seed = experiment.spec.seed
    if sweep is not None and sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=seed)
        max_concurrent = trials.max_concurrent
    else:
        # This searcher limits concurrency itself (Tune's own limiter only wraps Searchers).
        searcher = BasicVariantGenerator(
            random_state=seed, max_concurrent=trials.max_concurrent or 0
        )
        max_concurrent = None
    # Tune's own result.json, which its restore reads, the trial counts for Prometheus, and
    # signatures on Tune's state.
    callbacks = [
        JsonLoggerCallback(),
        TrialStateMetrics(experiment.name),
        CheckpointPruning(),
        StateSigning(),
    ]
    if parent.enabled:
        callbacks.append(TrialTracking(experiment, parent.run_id))
    return tune.Tuner(
        trainable,
        param_space=param_space(experiment),
        tune_config=tune.TuneConfig(
            metric=sweep.metric if sweep else None,
            mode=sweep.mode if sweep else None,
            search_alg=searcher,
            scheduler=build_scheduler(sweep) if sweep else None,
            num_samples=sweep.num_samples if sweep else 1,
            max_concurrent_trials=max_concurrent,
            # A new worker process per trial costs far more than a short trial.
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=tune_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(
                max_failures=trials.max_failures, fail_fast=trials.fail_fast
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
            require_attrs=False,  # a trial's final report holds its final metrics only
            perturbation_interval=scheduler.perturbation_interval,
            hyperparam_mutations={
                key: list(domain.args) if domain.kind == "choice" else domain.to_tune("random")
                for key, domain in scheduler.mutations.items()
            },
        )
    return None


def summarise_sweep(sweep: SweepSpec, parent: Tracker) -> dict[str, Any]:
    """The trials, from their MLflow runs, and the best by the sweep's metric at their last
    report, logged on the parent run: `sweep/stopped_early`, `best/<metric>`,
    `maestro.best.*` tags, `sweep/best_trials.json` and `sweep/trials.json`."""
    if not parent.enabled:
        return {}
    metric = sweep.metric
    rows = [
        {
            "trial": name,
            "run_id": run.tracker.run_id,
            "params": run.params,
            metric: run.final.get(metric),
            "training_iteration": run.last_logged[1],
            "outcome": run.outcome,
        }
        for name, run in sorted(find_trial_runs(parent.client, parent.run_id).items())
    ]
    stopped = sum(row["outcome"] == "stopped" for row in rows)
    scored = [row for row in rows if row[metric] is not None and not math.isnan(row[metric])]
    scored.sort(key=lambda row: row[metric], reverse=sweep.mode == "max")
    best = scored[:BEST_TRIALS]
    parent.log_metrics({"sweep/stopped_early": stopped}, step=0)
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
    return {"stopped_early": stopped, "best": best}
