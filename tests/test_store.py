"""The artifact store on a local folder and on a real S3-compatible server (moto)."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from maestro.store import LocalStore, S3Store, StoreError, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3_env")
    return S3Store(f"s3://{s3.bucket}/store-{request.node.name[-8:].strip('[]')}-{id(tmp_path)}")


def test_put_get_list_checksum_delete(store):
    digest = store.put_bytes("a/b/one.bin", b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert store.get_bytes("a/b/one.bin") == b"hello"
    assert store.exists("a/b/one.bin")
    assert not store.exists("a/b/two.bin")
    store.put_json("a/meta.json", {"x": [1, 2]})
    store.put_array("c/values.npy", np.arange(5.0))
    assert store.list() == ["a/b/one.bin", "a/meta.json", "c/values.npy"]
    assert store.list("a") == ["a/b/one.bin", "a/meta.json"]
    assert store.list("missing") == []
    assert store.checksum("a/b/one.bin") == digest
    assert store.get_json("a/meta.json") == {"x": [1, 2]}
    np.testing.assert_array_equal(store.get_array("c/values.npy"), np.arange(5.0))
    store.delete("a/b/one.bin")
    assert not store.exists("a/b/one.bin")
    with pytest.raises(StoreError, match="no object at"):
        store.get_bytes("a/b/one.bin")


def test_keys_cannot_escape_the_root(store):
    for key in ("../x", "a/../../x", "", "/"):
        with pytest.raises(StoreError, match="invalid store key"):
            store.put_bytes(key, b"x")


def test_readers_never_see_a_partial_object(store):
    """A writer alternates two large versions; a reader only ever sees one or the other."""
    versions = [bytes([i]) * 3_000_000 for i in (1, 2)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    store.put_bytes("big.bin", versions[0])
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            store.put_bytes("big.bin", versions[i % 2])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(15):
            assert hashlib.sha256(store.get_bytes("big.bin")).hexdigest() in digests
    finally:
        stop.set()
        thread.join()
    assert not [k for k in store.list() if k != "big.bin"]  # no temporary leftovers


def test_s3_objects_are_real_objects_in_the_bucket(s3_env):
    store = open_store(f"s3://{s3_env.bucket}/direct")
    store.put_bytes("x/y.txt", b"payload")
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key="direct/x/y.txt")
    assert body["Body"].read() == b"payload"
    assert body["Metadata"]["sha256"] == hashlib.sha256(b"payload").hexdigest()


def test_unreachable_s3_gives_a_clear_error(s3_env):
    import boto3
    from botocore.config import Config

    client = boto3.client(  # nothing listens on port 9; one retry keeps the test short
        "s3", endpoint_url="http://127.0.0.1:9", config=Config(retries={"max_attempts": 2})
    )
    store = S3Store(f"s3://{s3_env.bucket}/gone", client=client)
    with pytest.raises(StoreError, match=r"writing s3://maestro-test/gone/k failed"):
        store.put_bytes("k", b"x")


def test_open_store_defaults_and_refusals(workdir, monkeypatch):
    assert open_store().root == (workdir / "maestro-store").as_uri()
    monkeypatch.setenv("MAESTRO_STORE", str(workdir / "elsewhere"))
    assert open_store().root.endswith("/elsewhere")
    with pytest.raises(StoreError, match="unsupported store URI"):
        open_store("ftp://host/x")
