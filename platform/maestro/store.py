"""The artifact store: datasets, checkpoints and models under one URI root.

`open_store(uri)` gives a `LocalStore` for a folder (the default, `./maestro-store`) or an
`S3Store` for `s3://bucket/prefix`. Keys are `/`-separated paths relative to the root.

Writes are atomic: a local write goes to a temporary file in the same folder and is
renamed into place; an S3 object only becomes visible once its upload is complete. So a
reader sees the old object, the new one, or none; never half of one. Every object carries
its SHA-256 (as S3 metadata, or computed locally) for `checksum`.

S3 settings come from the environment only (never from specs): credentials through boto3's
usual chain (env vars, profile, instance role), `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`
for S3-compatible servers, `AWS_DEFAULT_REGION`. Every call has a deadline: connect and
read timeouts of `MAESTRO_S3_TIMEOUT_S` seconds (default 15) and at most `AWS_MAX_ATTEMPTS`
attempts (default 3) with botocore's exponential backoff, so a stalled endpoint fails a
call in under a minute.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_STORE = "./maestro-store"


class StoreError(RuntimeError):
    """An artifact could not be read or written; the message names the URI."""


class ArtifactStore(ABC):
    """Objects under a root URI, addressed by relative keys."""

    root: str

    def uri(self, key: str) -> str:
        """The full URI of `key`."""
        return f"{self.root.rstrip('/')}/{clean_key(key)}"

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Write `data` atomically at `key`; returns its SHA-256."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object at `key`; `StoreError` if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is at `key`."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys of all objects under `prefix` (a folder-like prefix), sorted."""

    @abstractmethod
    def checksum(self, key: str) -> str:
        """The SHA-256 (hex) of the object at `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at `key` if present."""

    def put_file(self, key: str, path: str | Path) -> str:
        """Upload a local file to `key`; returns its SHA-256."""
        return self.put_bytes(key, Path(path).read_bytes())

    def get_file(self, key: str, path: str | Path) -> Path:
        """Download `key` to a local file (written atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, self.get_bytes(key))
        return path

    def put_json(self, key: str, value: Any) -> str:
        """Write a JSON document."""
        return self.put_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        """Read a JSON document."""
        return json.loads(self.get_bytes(key))

    def put_array(self, key: str, array: Any) -> str:
        """Write a numpy array (`.npy` format)."""
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        return self.put_bytes(key, buffer.getvalue())

    def get_array(self, key: str) -> Any:
        """Read a numpy array written by `put_array`."""
        import numpy as np

        return np.load(io.BytesIO(self.get_bytes(key)), allow_pickle=False)


def clean_key(key: str) -> str:
    """Normalise a key and refuse ones that would leave the root."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise StoreError(f"invalid store key {key!r}")
    return "/".join(parts)


def sha256(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStore(ArtifactStore):
    """A folder on a local (or shared) filesystem."""

    def __init__(self, root: str | Path):
        self.path = Path(root).expanduser().resolve()
        self.root = self.path.as_uri()

    def _file(self, key: str) -> Path:
        return self.path / clean_key(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        atomic_write(self._file(key), data)
        return sha256(data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"no object at {self.uri(key)}") from None

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._file(prefix) if prefix.strip("/") else self.path
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.path).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        )

    def checksum(self, key: str) -> str:
        return sha256(self.get_bytes(key))

    def delete(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)

    def put_file(self, key: str, path: str | Path) -> str:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.checksum(key)


class S3Store(ArtifactStore):
    """`s3://bucket/prefix` through boto3."""

    def __init__(self, uri: str, client: Any = None):
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StoreError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.root = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = client or s3_client()

    def _key(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise StoreError(f"no object at {self.uri(key)}") from None
            raise StoreError(f"{what} {self.uri(key)} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"{what} {self.uri(key)} failed: {exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> str:
        digest = sha256(data)
        self._call(
            "writing",
            key,
            self.client.put_object,
            Key=self._key(key),
            Body=data,
            Metadata={"sha256": digest},
        )
        return digest

    def get_bytes(self, key: str) -> bytes:
        response = self._call("reading", key, self.client.get_object, Key=self._key(key))
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._call("checking", key, self.client.head_object, Key=self._key(key))
        except StoreError as exc:
            if str(exc).startswith("no object"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = (
            self._key(prefix) + "/"
            if prefix.strip("/")
            else (self.prefix + "/" if self.prefix else "")
        )
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as exc:
            raise StoreError(f"listing {self.root}/{prefix} failed: {exc}") from exc
        return sorted(keys)

    def checksum(self, key: str) -> str:
        head = self._call("checking", key, self.client.head_object, Key=self._key(key))
        digest = head.get("Metadata", {}).get("sha256")
        return digest or sha256(self.get_bytes(key))

    def delete(self, key: str) -> None:
        self._call("deleting", key, self.client.delete_object, Key=self._key(key))


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment, with deadlines (module doc)."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    timeout = float(os.environ.get("MAESTRO_S3_TIMEOUT_S", "15"))
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", "3"))
    config = Config(
        retries={"max_attempts": attempts, "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    return boto3.client("s3", endpoint_url=endpoint or None, config=config)


def open_store(uri: str | None = None) -> ArtifactStore:
    """The store at `uri`, else `MAESTRO_STORE`, else `./maestro-store`."""
    uri = uri or os.environ.get("MAESTRO_STORE") or DEFAULT_STORE
    if uri.startswith("s3://"):
        return S3Store(uri)
    if uri.startswith("file://"):
        return LocalStore(urlparse(uri).path)
    if "://" in uri:
        raise StoreError(f"unsupported store URI {uri!r} (use a folder or s3://bucket/prefix)")
    return LocalStore(uri)
