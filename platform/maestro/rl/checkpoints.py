"""RLlib algorithms as checkpoint bytes: `Algorithm.save_to_path` tarred into one blob that
a trial hands to `TrialContext.checkpoint` beside the training loop's own `LoopState`, and
restored into a fresh algorithm so that a killed trial continues where it stopped, or read
for its agent alone (`learner_rl_module`)."""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def unpacked(data: bytes) -> Iterator[Path]:
    """`algorithm_bytes` unpacked into a temporary folder (removed on leaving)."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


def restore_algorithm(algo, data: bytes) -> None:
    """Load `algorithm_bytes` into `algo` and push its weights to the env runners (RLlib
    restores the learner; the samplers must act with the same policy)."""
    with unpacked(data) as folder:
        algo.restore_from_path(str(folder))
    algo.env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )


def learner_rl_module(data: bytes, module_id: str = "default_policy"):
    """The learner's RLModule `module_id` in `algorithm_bytes`, without building the
    algorithm (to act with a trained policy elsewhere)."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    with unpacked(data) as folder:
        return RLModule.from_checkpoint(
            folder / "learner_group" / "learner" / "rl_module" / module_id
        )
