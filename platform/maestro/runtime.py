"""Ray: start a local cluster or join the one at `RAY_ADDRESS`, with authentication explicit.

Ray 2.60 authenticates with a token when `RAY_AUTH_MODE=token`. The token is read by Ray
itself from `RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, or
`~/.ray/auth_token`; Maestro only checks that one of them exists and never reads it into
logs. A new local cluster uses token mode too (Ray's own default, made explicit here); if
no token exists, one is written to `~/.ray/auth_token` (owner-only). Set
`RAY_AUTH_MODE=disabled` to opt out.

It is also the one place that quiets third-party notices that tell a Maestro user nothing
(`quiet_third_party_logs`), in the driver and, through Ray's worker setup hook, in every
Ray worker.
"""

from __future__ import annotations

import logging
import os
import secrets
import warnings
from pathlib import Path

from maestro.errors import RuntimeSetupError
from maestro.spec import ResourcesSpec

AUTH_MODES = ("token", "disabled")


# Messages of Ray's own loggers that are pure noise for a Maestro run, by logger name:
# - the new API stack notice: Maestro chose that stack explicitly, RLlib says so anyway;
# - a slow Trainable setup: RLlib building its env runners, not something to tune.
QUIET_RAY_MESSAGES = {
    "ray.rllib.algorithms.algorithm_config": "on the new API stack! This is the new default",
    "ray.tune.trainable.trainable": "Trainable.setup took",
    # Every trial checkpoint; Maestro's trials checkpoint often (run.TrialContext).
    "ray.train._internal.storage": "Checkpoint successfully created at",
}
# Ray logs its deprecation notices here, attributed to the line that used the old name.
RAY_DEPRECATION_LOGGER = "ray._common.deprecation"


def auth_mode() -> str:
    """The authentication mode in force, validated (`token` unless set otherwise)."""
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode not in AUTH_MODES:
        raise RuntimeSetupError(f"RAY_AUTH_MODE={mode!r}: expected one of {', '.join(AUTH_MODES)}")
    return mode


def settle_auth_mode() -> str:
    """Fix `RAY_AUTH_MODE` in this process's environment before Ray is first imported (Ray
    reads it once, then); returns the mode."""
    mode = auth_mode()
    os.environ["RAY_AUTH_MODE"] = mode
    return mode


def token_available() -> bool:
    """Whether Ray will find an authentication token (without reading it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return Path(path).is_file() and Path(path).stat().st_size > 0
    default = Path.home() / ".ray" / "auth_token"
    return default.is_file() and default.stat().st_size > 0


def create_local_token() -> Path:
    """Write a new random token to ~/.ray/auth_token (owner-only), as
    `ray get-auth-token --generate` does."""
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


class _RayNoise(logging.Filter):
    """Drops `QUIET_RAY_MESSAGES`, and the deprecation notices raised by Ray's own code
    calling its own old names (nothing a user can change); a deprecation raised by any
    other code, Maestro's included, still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == RAY_DEPRECATION_LOGGER:
            import ray

            return not record.pathname.startswith(os.path.dirname(ray.__file__) + os.sep)
        return QUIET_RAY_MESSAGES.get(record.name, "\0") not in record.getMessage()


_RAY_NOISE = _RayNoise()


def quiet_third_party_logs() -> None:
    """Silence third-party noise in this process (idempotent). `init_ray` runs it in the
    driver and makes Ray run it in each worker (`worker_process_setup_hook`)."""
    for name in (*QUIET_RAY_MESSAGES, RAY_DEPRECATION_LOGGER):
        logging.getLogger(name).addFilter(_RAY_NOISE)  # adds nothing if already there
    # RLlib checks episode steps against the observation space with values gymnasium must
    # cast first, and gymnasium warns about it on every check.
    warnings.filterwarnings("ignore", message=".*Casting input x to numpy array")
    # MLflow draws a "Downloading artifacts" bar for copying a local model file.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def init_ray(resources: ResourcesSpec | None = None) -> None:
    """Join `RAY_ADDRESS` if set, else start a private local cluster sized by `resources`."""
    mode = settle_auth_mode()
    address = os.environ.get("RAY_ADDRESS")
    if address == "local":  # Ray's own spelling for "start a new local cluster"
        address = None
    if mode == "token" and not token_available():
        if address:
            raise RuntimeSetupError(
                "RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN, "
                "RAY_AUTH_TOKEN_PATH, or put it in ~/.ray/auth_token"
            )
        create_local_token()
    import ray

    quiet_third_party_logs()
    if ray.is_initialized():
        return
    runtime_env = {"worker_process_setup_hook": quiet_third_party_logs}
    if address:
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        except AuthenticationError as exc:
            raise RuntimeSetupError(
                f"the Ray cluster at {address} refused our token ({exc}): check RAY_AUTH_TOKEN, "
                "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
            ) from exc
        except ConnectionError as exc:
            raise RuntimeSetupError(f"no Ray cluster at {address}: {exc}") from exc
        return
    resources = resources or ResourcesSpec()
    # "local": a private cluster, even if `ray start` left one running on this machine.
    ray.init(
        address="local",
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        include_dashboard=False,
        log_to_driver=True,
        runtime_env=runtime_env,
    )
