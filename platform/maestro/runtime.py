"""Ray: start a local cluster or join the one at `RAY_ADDRESS`, with authentication explicit.

Ray 2.60 authenticates with a token when `RAY_AUTH_MODE=token`. The token is read by Ray
itself from `RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, or
`~/.ray/auth_token`; Maestro only checks that one of them exists and never reads it into
logs. A new local cluster uses token mode too (Ray's own default, made explicit here); if
no token exists, one is written to `~/.ray/auth_token` (owner-only). Set
`RAY_AUTH_MODE=disabled` to opt out.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from maestro.spec import ResourcesSpec

AUTH_MODES = ("token", "disabled")


class RuntimeSetupError(RuntimeError):
    """Ray cannot be started or reached as configured."""


def auth_mode() -> str:
    """The authentication mode in force, validated (`token` unless set otherwise)."""
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode not in AUTH_MODES:
        raise RuntimeSetupError(f"RAY_AUTH_MODE={mode!r}: expected one of {', '.join(AUTH_MODES)}")
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


def init_ray(resources: ResourcesSpec | None = None) -> None:
    """Join `RAY_ADDRESS` if set, else start a private local cluster sized by `resources`."""
    # Ray reads RAY_AUTH_MODE once, when it is imported: settle it first.
    mode = auth_mode()
    os.environ["RAY_AUTH_MODE"] = mode
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

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    resources = resources or ResourcesSpec()
    # "local": a private cluster, even if `ray start` left one running on this machine.
    ray.init(
        address="local",
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        include_dashboard=False,
        log_to_driver=True,
    )
