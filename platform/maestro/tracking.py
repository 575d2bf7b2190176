"""MLflow tracking: one MLflow run per experiment, resumable by run id.

The tracking URI comes from `MLFLOW_TRACKING_URI` (a remote server; basic-auth credentials
from `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`, read by MLflow itself), else
`sqlite:///mlruns.db`. Credentials written into the URI are moved to those two variables
(`tracking_uri`), so neither Maestro nor MLflow ever prints them. Requests to a server have
a deadline (`MLFLOW_HTTP_REQUEST_TIMEOUT`, default here 20 s, and at most
`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, default here 3, retries with backoff): an unreachable
server fails a call in under two minutes. With any sqlite URI, the experiments Maestro
creates keep their artifacts in `mlartifacts/` beside the database file (so the default
gives `./mlartifacts`).
Metrics are buffered and sent with `log_batch` (one request per flush, not one per key),
each with a real step. The plotting helpers at the end give every training plot the same
step axis and smoothing.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import io
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from maestro.errors import RuntimeSetupError

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
ARTIFACTS_FOLDER = "mlartifacts"  # beside a sqlite database
# The experiment tag MLflow's UI reads to open an experiment on its training runs rather
# than on the GenAI overview (mlflow 3 has no Python constant for it).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow's limits per log_batch request.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
PACKAGES = ("maestro-rl", "ray", "mlflow", "torch", "numpy", "nle", "vllm", "boto3", "pyarrow")


# MLflow's request deadline, where the environment sets none (MLflow's own: 120 s per
# request and 7 retries, minutes per call).
HTTP_DEADLINES = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def tracking_uri() -> str:
    """The MLflow tracking URI in force. Credentials in `MLFLOW_TRACKING_URI` are moved to
    `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` (where those are unset) and
    removed from it, in this process's environment, which Ray workers inherit."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    parsed = urlparse(uri)
    if parsed.username or parsed.password:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parsed.username or ""))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parsed.password or ""))
        uri = os.environ["MLFLOW_TRACKING_URI"] = redact_uri(uri)
    for name, value in HTTP_DEADLINES.items():
        os.environ.setdefault(name, value)
    return uri


def redact_uri(uri: str) -> str:
    """A URI without any user:password part, safe to print or log."""
    parsed = urlparse(uri)
    if parsed.password or parsed.username:
        netloc = parsed.hostname or ""
        if parsed.port:
            netloc += f":{parsed.port}"
        return parsed._replace(netloc=netloc).geturl()
    return uri


def git_commit(path: str | Path = ".") -> str | None:
    """The commit of the git checkout at `path` (with `-dirty` when it has changes)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run depends on."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


class Tracker:
    """An MLflow run that a Maestro run writes to. With tracking disabled every call is a
    no-op, so method code never checks."""

    def __init__(self, client: Any, run_id: str | None, resumed: bool = False):
        self.client = client
        self.run_id = run_id
        self._metrics: list[Any] = []
        # A reopened run may hold points of an attempt that died before it finished: its
        # steps per key, fetched once per key, so no (key, step) is logged twice.
        self._logged: dict[str, set[int]] | None = {} if resumed else None

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that records nothing."""
        return cls(None, None)

    @classmethod
    def connect(cls, experiment: str) -> str:
        """The id of MLflow experiment `experiment` (created if absent): checks that the
        server is there and lets us in before anything of a run is written."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            return ensure_experiment(MlflowClient(tracking_uri()), experiment)
        except MlflowException as exc:
            status = exc.get_http_status_code()
            if status not in (401, 403):
                raise
            raise RuntimeSetupError(
                f"the MLflow server at {redact_uri(tracking_uri())} refused us ({status}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
            ) from None

    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        resume_run_id: str | None = None,
        parent_run_id: str | None = None,
        identity_tag: str | None = None,
        experiment_id: str | None = None,
    ) -> Tracker:
        """Create an MLflow run with params and tags logged, or reopen one: `resume_run_id`,
        else the run of this experiment whose tag `identity_tag` has the value `tags` give
        it (a run created by an attempt that died before it could record the id).
        `experiment_id`: what `connect(experiment)` returned, if the caller has it."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri())
        if resume_run_id:
            client.update_run(resume_run_id, status="RUNNING")
            return cls(client, resume_run_id, resumed=True)
        experiment_id = experiment_id or cls.connect(experiment)
        if identity_tag:
            found = client.search_runs(
                [experiment_id], f"tags.`{identity_tag}` = '{tags[identity_tag]}'", max_results=1
            )
            if found:
                client.update_run(found[0].info.run_id, status="RUNNING")
                return cls(client, found[0].info.run_id, resumed=True)
        all_tags = {
            "mlflow.runName": run_name,
            "mlflow.user": getpass.getuser(),
            "maestro.host": socket.gethostname(),
            **{f"maestro.version.{k}": v for k, v in package_versions().items()},
            **tags,
        }
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        tracker = cls(client, run.info.run_id)
        tracker.log_params(params)
        return tracker

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (values longer than MLflow's limit are cut and marked)."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = []
        for key, value in sorted(params.items()):
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            if len(text) > MAX_PARAM_LENGTH:
                text = text[: MAX_PARAM_LENGTH - 3] + "..."
            items.append(Param(key, text))
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = False) -> None:
        """Buffer metrics at `step`; they are sent in batches (see `flush`)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if flush or len(self._metrics) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics, at most MLflow's batch limit per request (in a reopened
        run, only points at steps not logged before)."""
        if self._logged is not None:
            self._metrics = [m for m in self._metrics if m.step not in self._steps(m.key)]
            for metric in self._metrics:
                self._logged[metric.key].add(metric.step)
        while self._metrics:
            batch = self._metrics[:MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)
            del self._metrics[: len(batch)]

    def _steps(self, key: str) -> set[int]:
        """The steps logged for `key` in this run (from MLflow once, then kept)."""
        if key not in self._logged:
            self._logged[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return self._logged[key]

    def log_bytes(self, data: bytes, artifact_path: str) -> None:
        """Store `data` as the artifact `artifact_path`."""
        if not self.enabled:
            return
        folder, _, filename = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / filename
            local.write_bytes(data)
            self.client.log_artifact(self.run_id, str(local), artifact_path=folder or None)

    def log_dict(self, value: Any, artifact_path: str) -> None:
        """Store a JSON or YAML document as an artifact (by the file's suffix)."""
        if artifact_path.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(value, sort_keys=False)
        else:
            text = json.dumps(value, indent=2, sort_keys=True)
        self.log_bytes(text.encode(), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Flush and close the run with `status` (FINISHED, FAILED or KILLED)."""
        if not self.enabled:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status=status)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs logged for `key`, in step order."""
        if not self.enabled:
            return []
        history = self.client.get_metric_history(self.run_id, key)
        return sorted((m.step, m.value) for m in history)


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def format_steps(value: float) -> str:
    """A step count as a short axis label: 950, 1.5k, 100k, 1.5M, 2B."""
    value = float(f"{value:.3g}")  # 999999 rounds to 1M, not 1e+03k
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def step_axis(axis: Any, label: str) -> None:
    """Label the x-axis of a training plot and show its steps as `format_steps` does."""
    from matplotlib.ticker import FuncFormatter

    axis.set_xlabel(label)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_steps(value)))


def smooth(values: Any, window: int | None = None) -> Any:
    """Centred moving average over `window` points (odd; default: about a tenth of the
    series); the window shrinks at the ends, so the line spans every point without bending
    towards zero."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    half = (window or len(values) // 10) // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    low, high = np.maximum(index - half, 0), np.minimum(index + half + 1, len(values))
    return (sums[high] - sums[low]) / (high - low)


def plot_noisy(axis: Any, steps: Any, values: Any, **line: Any) -> Any:
    """A noisy curve: its raw points faint, a smoothed line over them (`line`: keyword
    arguments of that line, e.g. label and color). Returns the line."""
    (drawn,) = axis.plot(steps, smooth(values), **line)
    axis.scatter(steps, values, s=6, alpha=0.25, color=drawn.get_color(), linewidths=0)
    return drawn


def sqlite_database(uri: str) -> Path | None:
    """The absolute path of a sqlite tracking URI's database file; None for other URIs
    and for an in-memory database."""
    parsed = urlparse(uri)
    # sqlite:///rel/path.db and sqlite:////abs/path.db: the path follows the third slash.
    if parsed.scheme != "sqlite" or not parsed.path[1:]:
        return None
    return Path(parsed.path[1:]).resolve()


def sqlite_artifacts(uri: str) -> str | None:
    """For a sqlite tracking URI, the file URI of `mlartifacts/` beside its database
    (absolute, so runs started from another folder find their artifacts); else None."""
    if urlparse(uri).scheme != "sqlite":
        return None
    database = sqlite_database(uri)
    folder = database.parent if database else Path.cwd()
    return (folder / ARTIFACTS_FOLDER).as_uri()


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment `name`, created if needed (artifacts beside a sqlite database,
    see `sqlite_artifacts`), tagged so that MLflow's UI shows its runs."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=sqlite_artifacts(tracking_uri()),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except Exception:
            # Another process created it between our look-up and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before Maestro set it, or by hand
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def browse_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """How to look at run `run_id`: its URL on an MLflow server, else the `mlflow ui`
    command that serves the tracking store. Credentials never appear."""
    uri = redact_uri(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    database = sqlite_database(uri)
    if database:  # an absolute database path, so the command works from any folder
        query = f"?{parsed.query}" if parsed.query else ""
        uri = f"sqlite:///{database}{query}"
    return f"mlflow ui --backend-store-uri {uri}"


def run_location(run_id: str) -> dict[str, str]:
    """Where MLflow tracked run `run_id` (the tracking URI), how to browse it, and where
    its MLflow artifacts are: what `maestro run` and `maestro sweep` print at the end."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    run = MlflowClient(uri).get_run(run_id)
    return {
        "tracking uri": redact_uri(uri),
        "browse": browse_hint(uri, run.info.experiment_id, run_id),
        "mlflow artifacts": redact_uri(run.info.artifact_uri),
    }
