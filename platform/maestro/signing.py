"""Signatures on the state Maestro reads back from the store (docs/operations.md,
"What is signed").

Trial checkpoints (an RLlib algorithm is a tar of pickles) and Ray Tune's experiment state
(pickles, and JSON with pickles inside) are unpickled when a trial or an experiment goes on,
and they live in the store, which more people can write than should run code as you. So
Maestro signs what it writes there and checks the signature before anything is unpickled:
an HMAC-SHA256 with a key that never enters the store, MLflow, specs or logs.

The key is the file `MAESTRO_SIGNING_KEY_PATH` (default `~/.maestro/signing_key`), made
owner-only with 32 random bytes the first time it is needed. Every machine that runs trials
of an experiment needs the same file (the cluster set-ups ship it as they ship the Ray
token); state signed with another key is refused, naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from maestro.errors import SignatureError

KEY_PATH_ENV = "MAESTRO_SIGNING_KEY_PATH"
DEFAULT_KEY_PATH = "~/.maestro/signing_key"


def key_path() -> Path:
    """Where the signing key is read from."""
    return Path(os.environ.get(KEY_PATH_ENV) or DEFAULT_KEY_PATH).expanduser()


@functools.cache
def signing_key(path: Path) -> bytes:
    """The key in `path`, made first if there is none (by one process only: it is written
    to a temporary file and linked into place, which fails if another process got there
    first)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing_key-")
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise SignatureError(f"the signing key {path} is shorter than 32 bytes")
    return key


def sign(message: bytes) -> str:
    """The hex HMAC-SHA256 of `message` under this machine's signing key."""
    return hmac.new(signing_key(key_path()), message, hashlib.sha256).hexdigest()


def digests_message(files: dict[str, bytes]) -> bytes:
    """What signing a set of named files signs: each name with its content's SHA-256."""
    lines = (f"{name}\0{hashlib.sha256(data).hexdigest()}\n" for name, data in files.items())
    return "".join(sorted(lines)).encode()


def check(message: bytes, signature: str, what: str) -> None:
    """`SignatureError` unless `signature` is `sign(message)`; `what` names the state."""
    if not hmac.compare_digest(sign(message), signature.strip()):
        raise SignatureError(
            f"{what} does not carry this machine's signature (key {key_path()}): it was "
            "changed after Maestro wrote it, or written with another key; refusing to load it"
        )
