"""MLflow tracking: one MLflow run per experiment, resumable by run id.

The tracking URI comes from `MLFLOW_TRACKING_URI` (a remote server; basic-auth credentials
from `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`, read by MLflow itself), else
`sqlite:///mlruns.db` with artifacts in `./mlartifacts`. Metrics are buffered and sent with
`log_batch` (one request per flush, not one per key), each with a real step.
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
from urllib.parse import urlparse

from maestro.runtime import RuntimeSetupError

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_ARTIFACTS = "./mlartifacts"
# MLflow's limits per log_batch request.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
PACKAGES = ("maestro-rl", "ray", "mlflow", "torch", "numpy", "nle", "vllm", "boto3", "pyarrow")


def tracking_uri() -> str:
    """The MLflow tracking URI in force."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


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

    def __init__(self, client: Any, run_id: str | None):
        self.client = client
        self.run_id = run_id
        self._metrics: list[Any] = []

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that records nothing."""
        return cls(None, None)

    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        resume_run_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> Tracker:
        """Create an MLflow run (or reopen `resume_run_id`) with params and tags logged."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri())
        try:
            if resume_run_id:
                client.update_run(resume_run_id, status="RUNNING")
                return cls(client, resume_run_id)
            experiment_id = ensure_experiment(client, experiment)
        except MlflowException as exc:
            status = exc.get_http_status_code()
            if status not in (401, 403):
                raise
            raise RuntimeSetupError(
                f"the MLflow server at {redact_uri(tracking_uri())} refused us ({status}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
            ) from None
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
        """Send buffered metrics, at most MLflow's batch limit per request."""
        while self._metrics:
            batch = self._metrics[:MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)
            del self._metrics[: len(batch)]

    def log_figure(self, figure: Any, name: str) -> None:
        """Save a matplotlib figure as a PNG artifact under `plots/`."""
        if not self.enabled:
            return
        self.log_bytes(figure_png(figure), f"plots/{name}.png")

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


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment `name`, created if needed. With the embedded sqlite default,
    artifacts go to `./mlartifacts` (an absolute path, so runs from elsewhere find them)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:") and "MLFLOW_TRACKING_URI" not in os.environ:
        location = Path(DEFAULT_ARTIFACTS).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        # Another process created it between our look-up and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
