"""Ray Tune callbacks of an experiment's driver: thin adapters from Tune's events to
`TrialRunsWriter` (MLflow), `SweepMetrics` (Prometheus), checkpoint pruning and the
signatures on Tune's state (`maestro.sweep.driver.sign_tune_files`).

Import this module only after `maestro.runtime.init_ray`: it imports Ray Tune, and Ray must
not be imported before its authentication mode is settled. Tune pickles the callbacks with
its experiment state and finds them here again on restore.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from maestro.metrics import SweepMetrics
from maestro.sweep.driver import sign_tune_files, signed_files
from maestro.sweep.tracking import TrialRunsWriter, trial_name

if TYPE_CHECKING:
    from maestro.run import Experiment

# A checkpoint that a newer one supersedes is deleted once the experiment state saved this
# long ago already pointed past it (Tune uploads its state in the background).
PRUNE_AFTER_S = 30.0


class TrialTracking(Callback):
    """Each trial into its MLflow child run (`TrialRunsWriter`). Only the experiment and
    the parent run id are pickled; `setup` reads the experiment's runs back from MLflow."""

    def __init__(self, experiment: Experiment, parent_run_id: str):
        self.runs = TrialRunsWriter(experiment, parent_run_id)

    def __getstate__(self) -> dict[str, Any]:
        return {"runs": TrialRunsWriter(self.runs.experiment, self.runs.parent_run_id)}

    def setup(self, **info: Any) -> None:
        self.runs.open()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.trial_started(trial_name(trial), dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        self.runs.trial_result(trial_name(trial), dict(trial.config), result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.trial_completed(trial_name(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.trial_failed(trial_name(trial), str(trial.get_error() or "?"))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.runs.tick()

    def get_state(self) -> None:
        self.runs.save()  # Tune is saving its experiment state

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        complete = len(trials) >= self.runs.experiment.total_trials() and all(
            trial.status in ("TERMINATED", "ERROR") for trial in trials
        )
        self.runs.close([trial_name(trial) for trial in trials], complete)


class TrialStateMetrics(Callback):
    """The experiment's trials per state, for Prometheus (the sweeps dashboard)."""

    def __init__(self, name: str):
        self.metrics = SweepMetrics(name)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.metrics.record_trials(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.metrics.record_trials(trials)


class CheckpointPruning(Callback):
    """Deletes the checkpoints that newer ones supersede. Tune keeps every checkpoint
    (`num_to_keep` would delete the one its last uploaded experiment state points to before
    the next state is uploaded, and a driver killed then cannot resume); here a trial's
    older checkpoints go once an experiment state saved `PRUNE_AFTER_S` ago, which is on
    storage by now, pointed past them. Checkpoints made before a driver was killed are
    kept."""

    def setup(self, **info: Any) -> None:
        self.checkpoints: dict[str, list[Any]] = {}
        self.saves: list[tuple[float, dict[str, Any]]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info):
        self.checkpoints.setdefault(trial.trial_id, []).append(checkpoint)

    def get_state(self) -> None:
        self.prune()  # Tune is saving its experiment state

    def prune(self) -> None:
        """Delete each trial's checkpoints older than the one an experiment state saved
        `PRUNE_AFTER_S` ago pointed to: that state, or a later one, is on storage."""
        now = time.monotonic()
        self.saves.append((now, {t: c[-1] for t, c in self.checkpoints.items()}))
        uploaded = [saved for when, saved in self.saves if now - when >= PRUNE_AFTER_S]
        if not uploaded:
            return
        self.saves = [(when, saved) for when, saved in self.saves if now - when < PRUNE_AFTER_S]
        for trial_id, kept in uploaded[-1].items():
            history = self.checkpoints[trial_id]
            old, self.checkpoints[trial_id] = (
                history[: history.index(kept)],
                history[history.index(kept) :],
            )
            for checkpoint in old:
                with contextlib.suppress(OSError):
                    checkpoint.filesystem.delete_dir(checkpoint.path)


class StateSigning(Callback):
    """Signs Tune's experiment state each time Tune saves it, so that a restore can check
    it (`maestro.sweep.driver.check_tune_state`). Tune calls `get_state` once its state is
    in the driver's staging folder and before uploading it, so the signatures reach storage
    first. The staging folder is learnt from a trial; a save made before one was seen is
    signed at the end of the step, or of the experiment."""

    def setup(self, **info: Any) -> None:
        self.storage: Any = None
        self.unsigned = False

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if trials:
            self.storage = trials[0].storage

    def get_state(self) -> None:
        self.unsigned = True  # Tune is saving its experiment state
        self.sign()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.on_step_begin(iteration, trials)
        self.sign()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.on_step_end(0, trials)  # a restored experiment may end with no step at all

    def sign(self) -> None:
        if not self.unsigned or self.storage is None:
            return
        staging = Path(self.storage.experiment_driver_staging_path)
        found = [p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()]
        sign_tune_files(
            self.storage.storage_filesystem,
            self.storage.experiment_fs_path,
            {path: (staging / path).read_bytes() for path in signed_files(found)},
        )
        self.unsigned = False
