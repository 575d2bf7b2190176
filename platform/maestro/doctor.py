"""`maestro doctor`: what is installed and what is reachable, one line each."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
from collections.abc import Callable

from maestro.runtime import auth_mode, token_available
from maestro.store import open_store
from maestro.tracking import redact_uri, tracking_uri

REQUIRED = ("ray", "mlflow", "torch", "boto3", "pyarrow", "pydantic")
OPTIONAL = ("nle", "vllm", "sentence-transformers", "gymnasium", "minatar")


def check_packages() -> list[tuple[str, bool, str]]:
    """One row per package: required ones fail the check when missing."""
    rows = []
    for name in (*REQUIRED, *OPTIONAL):
        try:
            rows.append((f"package {name}", True, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((f"package {name}", False if name in REQUIRED else None, "not installed"))
    return rows


def check_ray() -> tuple[bool, str]:
    """The cluster at RAY_ADDRESS answers (or a local one will be started)."""
    mode = auth_mode()
    address = os.environ.get("RAY_ADDRESS")
    token = "token found" if token_available() else "no token yet"
    if not address:
        return True, f"local cluster on demand (auth {mode}, {token})"
    if address.startswith("http"):
        from ray.job_submission import JobSubmissionClient

        JobSubmissionClient(address).list_jobs()
        return True, f"job server {address} answers (auth {mode})"
    return True, f"{address} set (auth {mode}, {token}); reached when a run starts"


def check_mlflow() -> tuple[bool, str]:
    """The tracking server answers a search."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    MlflowClient(uri).search_experiments(max_results=1)
    return True, redact_uri(uri)


def check_store() -> tuple[bool, str]:
    """The artifact store can be listed."""
    store = open_store()
    store.list("runs")
    return True, store.root


def check_nle() -> tuple[bool, str]:
    """NLE imports and makes an environment."""
    import gymnasium as gym
    import nle  # noqa: F401  (registers the NetHack environments)

    env = gym.make("NetHackScore-v0")
    env.reset(seed=0)
    env.close()
    return True, "NetHackScore-v0 resets"


def check_gpus() -> tuple[bool, str]:
    """GPUs visible to torch and nvidia-smi (none is fine on a laptop)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    smi = shutil.which("nvidia-smi")
    if smi:
        names = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
        return True, f"{count} for torch; nvidia-smi: {names.strip() or 'none'}"
    return True, f"{count} for torch (CPU only)" if not count else f"{count} for torch"


CHECKS: dict[str, Callable[[], tuple[bool, str]]] = {
    "ray": check_ray,
    "mlflow": check_mlflow,
    "store": check_store,
    "nle": check_nle,
    "gpus": check_gpus,
}
OPTIONAL_CHECKS = {"nle", "gpus"}


def run_doctor() -> int:
    """Print every check (ok, BAD, or -- for an optional part missing); exit 1 if a required
    one fails."""
    rows = check_packages()
    for name, check in CHECKS.items():
        try:
            ok, detail = check()
        except Exception as exc:  # a failed check is a row, not a crash
            ok = None if name in OPTIONAL_CHECKS else False
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        rows.append((name, ok, detail))
    width = max(len(name) for name, _, _ in rows)
    for name, ok, detail in rows:
        mark = {True: "ok ", False: "BAD", None: "-- "}[ok]
        print(f"{mark} {name:<{width}}  {detail}")
    return 0 if all(ok is not False for _, ok, _ in rows) else 1
