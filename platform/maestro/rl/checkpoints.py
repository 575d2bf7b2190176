"""RLlib algorithms as checkpoint bytes: `Algorithm.save_to_path` tarred into one blob that
a trial hands to `TrialContext.checkpoint` beside the training loop's own `LoopState`, and
restored into a fresh algorithm so that a killed trial continues where it stopped."""

from __future__ import annotations

import io
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoopState:
    """What the training loop itself carries across a restart."""

    env_steps: int = 0
    iterations: int = 0
    resumes: int = 0


def algorithm_bytes(algo) -> bytes:
    """The algorithm's whole state (learner, optimiser, env runner state) as a tar."""
    with tempfile.TemporaryDirectory() as tmp:
        algo.save_to_path(tmp)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(tmp, arcname=".")
    return buffer.getvalue()


def restore_algorithm(algo, data: bytes) -> None:
    """Load `algorithm_bytes` into `algo` and push its weights to the env runners (RLlib
    restores the learner; the samplers must act with the same policy)."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tmp, filter="data")
        algo.restore_from_path(str(Path(tmp)))
    algo.env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )
