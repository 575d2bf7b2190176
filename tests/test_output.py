"""What a person reads while a run works: progress bars that end at their total, and Ray's
noise dropped (in the driver and in Ray workers) while every other warning still shows."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import ray
from tqdm import tqdm

# maestro.methods.motif (through maestro.rl) settles Ray's authentication mode on import;
# `ray` is only used for its path.
from maestro.rl.evaluate import evaluate_with_progress
from maestro.rl.training import advance
from maestro.runtime import RAY_DEPRECATION_LOGGER, quiet_third_party_logs

REPO = Path(__file__).resolve().parents[1]


def bar(total: int) -> tqdm:
    return tqdm(total=total, file=io.StringIO())


def test_training_bar_ends_at_its_total():
    """Env steps come in iterations that overshoot the target: the bar stops at it."""
    progress = bar(1000)
    advance(progress, 300)  # resumed from a checkpoint at 300 env steps
    for _ in range(3):
        advance(progress, 384)
    assert progress.n == progress.total == 1000
    advance(progress, 5000)  # a checkpoint past a smaller target moves nothing back
    assert progress.n == 1000


def test_evaluation_bars_count_episodes_to_their_total():
    """One bar per evaluation, one tick per finished episode."""
    bars = []

    def progress(total, desc, unit="it"):
        bars.append(bar(total))
        return bars[-1]

    games = {"task": "score", "episodes": 2, "seed": 3, "max_episode_steps": 20}
    records = evaluate_with_progress(None, games, progress, "evaluate random play")
    assert len(records) == 2
    assert [(b.n, b.total) for b in bars] == [(2, 2)]
    assert evaluate_with_progress(None, {**games, "episodes": 0}, progress, "none") == []
    assert len(bars) == 1


def record(logger: str, message: str, pathname: str) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, pathname, 1, message, None, None)


def passes(item: logging.LogRecord) -> bool:
    return logging.getLogger(item.name).filter(item) is not False


def test_ray_noise_is_dropped_and_other_warnings_kept():
    quiet_third_party_logs()
    quiet_third_party_logs()  # idempotent: one filter per logger
    assert len(logging.getLogger(RAY_DEPRECATION_LOGGER).filters) == 1
    inside_ray = os.path.join(os.path.dirname(ray.__file__), "rllib", "core", "rl_module.py")
    deprecation = "DeprecationWarning: `old` has been deprecated. Use `new` instead."
    assert not passes(record(RAY_DEPRECATION_LOGGER, deprecation, inside_ray))
    assert passes(record(RAY_DEPRECATION_LOGGER, deprecation, __file__))
    config_logger = "ray.rllib.algorithms.algorithm_config"
    notice = "You are running APPO on the new API stack! This is the new default behavior"
    assert not passes(record(config_logger, notice, inside_ray))
    assert passes(record(config_logger, "train_batch_size is not divisible", inside_ray))
    assert passes(record("ray.tune.trainable.trainable", "a real warning", inside_ray))


def test_ray_workers_drop_the_noise_too():
    """`init_ray` makes every worker run the same filters (Ray's worker setup hook)."""
    script = """
import logging
from maestro.runtime import RAY_DEPRECATION_LOGGER, init_ray
from maestro.spec import ResourcesSpec
init_ray(ResourcesSpec(num_cpus=1))
import ray

@ray.remote(num_cpus=1)
def filters():
    return len(logging.getLogger(RAY_DEPRECATION_LOGGER).filters)

print("worker filters:", ray.get(filters.remote()))
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "worker filters: 1" in done.stdout
