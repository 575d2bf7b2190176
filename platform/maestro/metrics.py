"""Prometheus metrics that Maestro's jobs export through Ray, read by `dashboards/`.

Metrics are recorded with `ray.util.metrics`, so every Ray process (driver, task or actor)
can record them and each node's metrics agent serves them on its metrics export port
(`ray start --metrics-export-port=8080`, or `ray.init(_metrics_export_port=...)`) beside
Ray's own. Ray prefixes every application metric with `ray_`; Prometheus adds `_total` to
counters and `_bucket`/`_sum`/`_count` to histograms. The names the dashboards query:

- `ray_maestro_annotation_labelled_pairs_total` (counter; run, backend): pairs that got a
  label (1, 2 or tie).
- `ray_maestro_annotation_invalid_answers_total` (counter; run, backend): answers that could
  not be parsed (never turned into labels).
- `ray_maestro_annotation_queue_depth` (gauge; run, backend): questions submitted to the
  annotator pool and not yet answered.
- `ray_maestro_annotation_batch_seconds` (histogram; run, backend): seconds per annotator
  batch.
- `ray_maestro_rollout_env_steps_total` (counter; run, env): environment steps taken by
  rollout workers.
- `ray_maestro_rollout_episodes_total` (counter; run, env): episodes finished by rollout
  workers.
- `ray_maestro_learner_samples_total` (counter; run): env steps (samples) consumed by learner
  updates.
- `ray_maestro_learner_updates_total` (counter; run): gradient updates applied.
- `ray_maestro_episode_return` (gauge; run, kind): mean return of recent episodes, `kind` is
  `intrinsic` or `extrinsic`.
- `ray_maestro_sweep_trials` (gauge; sweep, state): trials per state: pending, running,
  paused, finished, errored.

Counters only move up, so rates (`rate(...[1m])`) give throughput: pairs/s, env steps/s,
samples/s. A label value is always a string; `run` is the run's name (`spec.run_name()`),
`sweep` the sweep's name. Recording never fails a job: in a process where Ray is not running
the calls do nothing.

Ray drops a gauge's value from the endpoint once it has not been recorded for two report
intervals (20 s by default), even while the process that set it lives: a queue depth set once
per slow batch would blink in and out of Prometheus. So every gauge set here is recorded again
with its latest value every `GAUGE_REFRESH_SECONDS`, by a daemon thread of the process that
set it, for as long as that process lives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

# Seconds; an annotator batch is tens of milliseconds (embedding) to minutes (70B vLLM).
BATCH_SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
# Tune's trial statuses, named as the dashboards show them.
TRIAL_STATES = {
    "PENDING": "pending",
    "RUNNING": "running",
    "PAUSED": "paused",
    "TERMINATED": "finished",
    "ERROR": "errored",
}

# name -> (kind, description, tag keys); kind is counter, gauge or histogram.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "maestro_annotation_labelled_pairs": (
        "counter",
        "Caption pairs labelled by the annotator (1, 2 or tie).",
        ("run", "backend"),
    ),
    "maestro_annotation_invalid_answers": (
        "counter",
        "Annotator answers that could not be parsed into a label.",
        ("run", "backend"),
    ),
    "maestro_annotation_queue_depth": (
        "gauge",
        "Questions submitted to the annotator pool and not yet answered.",
        ("run", "backend"),
    ),
    "maestro_annotation_batch_seconds": (
        "histogram",
        "Seconds per annotator batch.",
        ("run", "backend"),
    ),
    "maestro_rollout_env_steps": (
        "counter",
        "Environment steps taken by rollout workers.",
        ("run", "env"),
    ),
    "maestro_rollout_episodes": (
        "counter",
        "Episodes finished by rollout workers.",
        ("run", "env"),
    ),
    "maestro_learner_samples": (
        "counter",
        "Env steps (samples) consumed by learner updates.",
        ("run",),
    ),
    "maestro_learner_updates": ("counter", "Gradient updates applied by learners.", ("run",)),
    "maestro_episode_return": (
        "gauge",
        "Mean return of recent episodes, by kind (intrinsic or extrinsic).",
        ("run", "kind"),
    ),
    "maestro_sweep_trials": ("gauge", "Sweep trials in each state.", ("sweep", "state")),
}

# Well inside Ray's gauge time-to-live (two report intervals: 20 s by default).
GAUGE_REFRESH_SECONDS = 2.0

# One metric object per name and process: Ray registers each name once per process.
_instances: dict[str, Any] = {}
# The latest value of every gauge this process set: (name, sorted tags) -> value.
_gauge_values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_gauge_lock = threading.Lock()
_refresher: threading.Thread | None = None


def exported_names() -> dict[str, list[str]]:
    """Each metric's name -> the sample names Prometheus shows for it."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    return {
        name: [f"ray_{name}{suffix}" for suffix in suffixes[kind]]
        for name, (kind, _, _) in METRICS.items()
    }


def metric(name: str) -> Any:
    """The `ray.util.metrics` object for `name` (created on first use in this process)."""
    if name not in _instances:
        from ray.util import metrics as ray_metrics

        kind, description, tag_keys = METRICS[name]
        if kind == "counter":
            _instances[name] = ray_metrics.Counter(name, description, tag_keys=tag_keys)
        elif kind == "gauge":
            _instances[name] = ray_metrics.Gauge(name, description, tag_keys=tag_keys)
        else:
            _instances[name] = ray_metrics.Histogram(
                name, description, boundaries=BATCH_SECONDS_BOUNDARIES, tag_keys=tag_keys
            )
    return _instances[name]


def _add(name: str, value: float, tags: dict[str, str]) -> None:
    # Ray counters refuse increments of zero or less.
    if value > 0:
        metric(name).inc(float(value), tags=tags)


def set_gauge(name: str, value: float, tags: dict[str, str]) -> None:
    """Set gauge `name` for `tags`, and keep exporting that value until it is set again."""
    global _refresher
    metric(name).set(float(value), tags=tags)
    with _gauge_lock:
        _gauge_values[(name, tuple(sorted(tags.items())))] = float(value)
        if _refresher is None:
            _refresher = threading.Thread(
                target=_refresh_gauges, name="maestro-gauges", daemon=True
            )
            _refresher.start()


def _refresh_gauges() -> None:
    while True:
        time.sleep(GAUGE_REFRESH_SECONDS)
        with _gauge_lock:
            values = list(_gauge_values.items())
        for (name, tags), value in values:
            metric(name).set(value, tags=dict(tags))


class AnnotationMetrics:
    """Throughput and health of the annotation service of one run."""

    def __init__(self, run: str, backend: str):
        self.tags = {"run": str(run), "backend": str(backend)}

    def record(
        self,
        labelled: int = 0,
        invalid: int = 0,
        queue_depth: int | None = None,
        batch_seconds: float | None = None,
    ) -> None:
        """After a batch: pairs labelled, answers that were invalid, questions still waiting
        (set by whoever owns the queue), and how long the batch took."""
        _add("maestro_annotation_labelled_pairs", labelled, self.tags)
        _add("maestro_annotation_invalid_answers", invalid, self.tags)
        if queue_depth is not None:
            set_gauge("maestro_annotation_queue_depth", queue_depth, self.tags)
        if batch_seconds is not None:
            metric("maestro_annotation_batch_seconds").observe(float(batch_seconds), tags=self.tags)


class RolloutMetrics:
    """Environment throughput of the rollout workers of one run."""

    def __init__(self, run: str, env: str):
        self.tags = {"run": str(run), "env": str(env)}

    def record(self, env_steps: int = 0, episodes: int = 0) -> None:
        """Env steps taken (actions, not observations: an episode of n steps shows n + 1)
        and episodes finished since the last call."""
        _add("maestro_rollout_env_steps", env_steps, self.tags)
        _add("maestro_rollout_episodes", episodes, self.tags)


class LearnerMetrics:
    """Learner throughput and the returns it sees, for one run."""

    def __init__(self, run: str):
        self.tags = {"run": str(run)}

    def record(
        self,
        samples: int = 0,
        updates: int = 0,
        intrinsic_return: float | None = None,
        extrinsic_return: float | None = None,
    ) -> None:
        """After an update: samples consumed and updates applied since the last call, and
        the mean intrinsic and extrinsic episode returns of the latest batch."""
        _add("maestro_learner_samples", samples, self.tags)
        _add("maestro_learner_updates", updates, self.tags)
        returns = {"intrinsic": intrinsic_return, "extrinsic": extrinsic_return}
        for kind, value in returns.items():
            if value is not None:
                set_gauge("maestro_episode_return", value, {**self.tags, "kind": kind})


class SweepMetrics:
    """How many trials of one sweep are in each state."""

    def __init__(self, sweep: str):
        self.sweep = str(sweep)

    def record(
        self,
        pending: int = 0,
        running: int = 0,
        paused: int = 0,
        finished: int = 0,
        errored: int = 0,
    ) -> None:
        """Set the number of trials in every state (all of them, so a state that emptied
        reads zero rather than its last value)."""
        counts = {
            "pending": pending,
            "running": running,
            "paused": paused,
            "finished": finished,
            "errored": errored,
        }
        for state, count in counts.items():
            set_gauge("maestro_sweep_trials", count, {"sweep": self.sweep, "state": state})

    def record_trials(self, trials: Iterable[Any]) -> None:
        """Count Tune trials by their `status` (call from a Tune callback, e.g. in
        `on_step_end(iteration, trials)`); statuses Tune adds later are not counted."""
        counts = dict.fromkeys(TRIAL_STATES.values(), 0)
        for trial in trials:
            state = TRIAL_STATES.get(str(trial.status))
            if state is not None:
                counts[state] += 1
        self.record(**counts)
