"""State read back from the store is signed (`maestro.signing`): a trial checkpoint, a
stored agent and Tune's experiment state that someone changed are refused before anything
in them is unpickled, with one line and exit code 2."""

from __future__ import annotations

import json
import pickle
import stat
from pathlib import Path

import pytest

from maestro.errors import SignatureError
from maestro.rl.training import ALGORITHM, load_stored_agent
from maestro.run import SIGNATURE_FILE, STATE_FILE, checkpoint_files, read_checkpoint
from maestro.signing import KEY_PATH_ENV, check, sign
from maestro.store import open_store

from .test_failures import LQG, TINY, maestro, one_line_error


@pytest.fixture
def key_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "keys" / "signing_key"
    monkeypatch.setenv(KEY_PATH_ENV, str(path))
    return path


def test_the_key_is_made_once_owner_only_and_signs(key_path):
    signature = sign(b"message")
    assert key_path.read_bytes().strip() != b""
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    check(b"message", signature, "it")
    with pytest.raises(SignatureError, match="it does not carry"):
        check(b"messagE", signature, "it")


def test_a_key_too_short_is_refused(tmp_path, monkeypatch):
    short = tmp_path / "short_key"
    short.write_text("abc")
    monkeypatch.setenv(KEY_PATH_ENV, str(short))
    with pytest.raises(SignatureError, match="shorter than 32 bytes"):
        sign(b"message")


def test_a_checkpoint_reads_back_only_as_written(key_path):
    files = checkpoint_files(40, {"loop": {"iterations": 4}, ALGORITHM: b"tar bytes"})
    assert set(files) == {STATE_FILE, SIGNATURE_FILE, ALGORITHM}
    expected = (40, {"loop": {"iterations": 4}, ALGORITHM: b"tar bytes"})
    assert read_checkpoint(files, "here") == expected
    for changed in (
        {**files, ALGORITHM: b"other bytes"},
        {**files, STATE_FILE: files[STATE_FILE].replace(b"40", b"41")},
        {**files, "extra.pkl": b"\x80\x04."},
        {k: v for k, v in files.items() if k != SIGNATURE_FILE},
    ):
        with pytest.raises(SignatureError, match="here does not carry"):
            read_checkpoint(changed, "here")


def test_another_machines_key_is_refused(key_path, tmp_path, monkeypatch):
    files = checkpoint_files(1, {"x": 1})
    monkeypatch.setenv(KEY_PATH_ENV, str(tmp_path / "other" / "signing_key"))
    with pytest.raises(SignatureError):
        read_checkpoint(files, "here")


def test_a_stored_agent_changed_in_the_store_is_not_loaded(key_path, tmp_path):
    store = open_store(str(tmp_path / "store"))
    folder = "runs/motif/agent/tune/trial_00000_x/checkpoint_000003"
    for name, data in checkpoint_files(3, {"loop": {}, ALGORITHM: b"the agent"}).items():
        store.put_bytes(f"{folder}/{name}", data)
    assert load_stored_agent(store, f"{folder}/{ALGORITHM}") == b"the agent"
    store.put_bytes(f"{folder}/{ALGORITHM}", b"a pickle that runs code")
    with pytest.raises(SignatureError, match=folder):
        load_stored_agent(store, f"{folder}/{ALGORITHM}")


class RunsCode:
    """Unpickling this touches `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_tunes_state_changed_in_the_store_is_refused_before_it_is_unpickled(workdir):
    done, _ = maestro(workdir, "run", LQG, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    (state_file,) = (workdir / "maestro-store").rglob("run.json")
    state = json.loads(state_file.read_text())
    # As if killed mid-run: the rerun restores Tune's experiment, whose state is signed.
    state_file.write_text(json.dumps({**state, "status": "RUNNING"}))
    again, _ = maestro(workdir, "run", LQG, *TINY)
    assert again.returncode == 0, again.stderr[-3000:]

    state_file.write_text(json.dumps({**state, "status": "RUNNING"}))
    (tuner,) = (workdir / "maestro-store").rglob("tune/tuner.pkl")
    marker = workdir / "code-ran"
    tuner.write_bytes(pickle.dumps(RunsCode(marker)))
    refused, _ = maestro(workdir, "run", LQG, *TINY)
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = one_line_error(refused, "maestro: run: Tune's state")
    assert "tuner.pkl is not a version this run signed" in line
    assert not marker.exists()
