"""Runs and sweeps on a local Ray cluster with Tune and MLflow, on the real RANDOMIST trial.

Every experiment here uses `jobs/randomist/sweep.yaml` or `lqg.yaml` with tiny `rounds`, so
a trial takes a fraction of a second; runs are read back with the MLflow client from a
sqlite database in the test's own folder. One Ray cluster (2 CPUs) serves the module:
in-process experiments use it, and the driver that gets killed joins it from a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from maestro.cli import main
from maestro.methods.randomist.bandit import BanditState, simulate
from maestro.methods.randomist.config import RandomistConfig
from maestro.run import Experiment, run_experiment, start_parent
from maestro.spec import SpecError, apply_params, load_spec, trial_data
from maestro.sweep.spec import flatten_space, load_sweep

from .conftest import REPO

SPEC = REPO / "jobs" / "randomist" / "sweep.yaml"
LQG = REPO / "jobs" / "randomist" / "lqg.yaml"
# Two reports per trial (rounds 20 and 40), a checkpoint with each.
TINY = [
    "config.rounds=40",
    "config.log_every=20",
    "config.checkpoint_every=20",
    "config.value_samples=1000",
    "trials.max_concurrent=2",
    "trials.cpus=1",
]


def tiny_spec(tmp_path: Path, *overrides: str):
    return load_spec(
        SPEC, preset="smoke", overrides=[*TINY, f"store.uri={tmp_path / 'store'}", *overrides]
    )


def mlflow_client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")


def children(client, parent_run_id: str) -> list:
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000
    )


def tiny_sweep(tmp_path: Path, trials: int, *overrides: str):
    """Run a tiny sweep that must make `trials` trials, none errored: its result and runs."""
    result = run_experiment(tiny_spec(tmp_path, *overrides), "sweep")
    assert result.summary["trials"] == trials and result.summary["errored"] == 0
    return result, children(mlflow_client(tmp_path), result.mlflow_run_id)


def histories(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_curve(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """The same steps exactly, the same values to float precision."""
    assert [step for step, _ in got] == [step for step, _ in expected]
    assert [value for _, value in got] == pytest.approx([value for _, value in expected])


@pytest.fixture(scope="module")
def ray_cluster():
    """A private local Ray cluster with 2 CPUs for the whole module; yields its address."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    address = os.environ.pop("RAY_ADDRESS", None)  # never join someone else's cluster
    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec

    started = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    # Ray reads its authentication mode when imported: init_ray settles it first.
    init_ray(ResourcesSpec(num_cpus=2))
    import ray

    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """This test's own MLflow database, and its working directory."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- the sweep block


def test_space_keys_nest_or_dot_and_apply_to_the_spec():
    flat = flatten_space({"config": {"exploration": {"grid": [1, 2]}}, "x": {"randint": [0, 9]}})
    assert flat == {"config.exploration": {"grid": [1, 2]}, "x": {"randint": [0, 9]}}
    assert flatten_space({"config.lqg.noise_std": {"uniform": [0, 1]}}) == {
        "config.lqg.noise_std": {"uniform": [0, 1]}
    }
    with pytest.raises(ValueError, match="config.x is given twice"):
        flatten_space({"config.x": {"grid": [1]}, "config": {"x": {"grid": [2]}}})
    base = {"seed": 0, "config": {"exploration": 0.3, "lqg": {"horizon": 10}}}
    trial = apply_params(base, {"config.lqg.horizon": 5, "seed": 3})
    assert trial == {"seed": 3, "config": {"exploration": 0.3, "lqg": {"horizon": 5}}}
    assert base["config"]["lqg"]["horizon"] == 10  # the base is not changed

    spec = load_spec(SPEC, preset="smoke")
    sweep = load_sweep(spec)
    assert sorted(sweep.space) == ["config.algorithm", "config.exploration"]
    experiment = Experiment(spec, "sweep", spec.run_name(), sweep)
    assert experiment.total_trials() == 6 * 3 * 3  # algorithms x exploration values x seeds
    assert experiment.prefix == f"sweeps/randomist/{spec.run_name()}"
    # A trial's spec: its arm's overlay, its seed, its swept values; nothing else.
    lqg = load_spec(LQG, preset="smoke").resolved()
    params = {"arm": "ucb1", "seed": 3, "config.exploration": 1.0}
    trial = trial_data(lqg, params)
    assert trial["seed"] == 3
    assert trial["config"]["algorithm"] == "ucb1" and trial["config"]["exploration"] == 1.0
    assert {k: v for k, v in trial.items() if k not in ("seed", "config")} == {
        k: v for k, v in lqg.items() if k not in ("seed", "config")
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sweep.space.config.exploration={grid: [1], uniform: [0, 1]}", "exactly one of"),
        ("sweep.space.config.exploration={loguniform: [0, 1]}", "loguniform needs low > 0"),
        ("sweep.space.config.exploraton={grid: [1]}", "config.exploraton: unknown key"),
        ("sweep.space.config.exploration={grid: [-1, 1]}", "value -1: config.exploration"),
        ("sweep.space.resources.num_cpus={grid: [1]}", "only `config.<field>`"),
        ("sweep.space.seed={grid: [1, 2]}", "seeds: trials.seeds"),
        ("sweep.search=random", "trials.seeds and trials.arms must be single"),
        ("sweep.space.config.exploration={uniform: [0, 1]}", "search grid takes grid or choice"),
        ("sweep.mode=maximise", "sweep.mode"),
        ("sweep.scheduler=hyperband", "sweep.scheduler"),
    ],
)
def test_bad_sweep_blocks_are_one_line_errors(override, message, tracking, capsys):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_sweep(load_spec(SPEC, preset="smoke", overrides=[override]))
    # The CLI says the same in one line and exits 2, before Ray or MLflow start.
    assert main(["sweep", str(SPEC), "--preset", "smoke", "--set", override]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("maestro: spec error:") and "\n" not in error
    assert not (tracking / "mlruns.db").exists()


# ---------------------------------------------------------------- kill the driver, resume


# 4 reports per trial, a checkpoint with each; a RANDOMIST or OPTIMIST trial takes seconds,
# most of it after its first checkpoint.
LONGER = ["config.rounds=8000", "config.log_every=2000", "config.checkpoint_every=2000"]
LOGGED = [2000, 4000, 6000, 8000]


def resume_command(tmp_path: Path) -> list[str]:
    """`maestro run` arguments of the run that gets killed: 7 algorithms x 3 seeds = 21
    trials."""
    # Every log a report: running trials have checkpoints in Tune and curves in MLflow.
    overrides = [*TINY, *LONGER, "trials.seeds=3", "trials.report_seconds=0"]
    overrides.append(f"store.uri={tmp_path / 'store'}")
    return ["run", str(LQG), "--preset", "smoke", *[f"--set={item}" for item in overrides]]


def driver_process(tmp_path: Path, address: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "maestro", *resume_command(tmp_path)]
    env = {
        **os.environ,
        "RAY_ADDRESS": address,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "TUNE_GLOBAL_CHECKPOINT_S": "0.5",  # Tune saves its experiment state twice a second
    }
    log = tmp_path / f"driver{len(list(tmp_path.glob('driver*')))}.log"
    with open(log, "wb") as output:
        return subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def saved_since(folder: Path, since: float) -> bool:
    """Whether Tune wrote an experiment state under `folder` after time `since`."""
    for state in folder.glob("experiment_state-*"):
        with contextlib.suppress(FileNotFoundError):  # replaced while being looked at
            if state.stat().st_mtime > since:
                return True
    return False


def test_killed_run_resumes_its_trials_into_the_same_runs(ray_cluster, tmp_path):
    total = 21
    driver = driver_process(tmp_path, ray_cluster)
    client = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.5)
        states = list((tmp_path / "store" / "runs" / "randomist").glob("*/run.json"))
        if not states:
            continue
        parent_id = json.loads(states[0].read_text())["mlflow_run_id"]
        if not parent_id:  # the run's identity is stored first, its MLflow run id next
            continue
        client = client or mlflow_client(tmp_path)
        try:
            runs = children(client, parent_id)
        except MlflowException:  # the driver held the database's write lock too long
            continue
        # Kill with trials in flight, one of them past a checkpoint (each report carries
        # one), as soon as Tune has saved a state after that (which then holds it): a
        # trial has about two seconds left after its first checkpoint, so waiting longer
        # lets the checkpointed ones finish. The driver is not frozen for the read:
        # frozen, it can hold sqlite's write lock.
        finished = sum(r.info.status == "FINISHED" for r in runs)
        checkpointed = [r for r in runs if r.info.status != "FINISHED" and r.data.metrics]
        if finished >= 10 and checkpointed:
            seen = time.time()
            while not saved_since(states[0].parent / "tune", seen) and time.time() < seen + 30:
                time.sleep(0.02)
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and anything it started
            driver.wait()
            break
    assert driver.returncode == -signal.SIGKILL, (tmp_path / "driver0.log").read_text()[-3000:]

    before = {r.data.tags["maestro.trial"]: r for r in children(client, parent_id)}
    finished_before = {name: r for name, r in before.items() if r.info.status == "FINISHED"}
    unfinished_before = {name: r for name, r in before.items() if r.info.status != "FINISHED"}
    assert 10 <= len(finished_before) < total
    assert len(before) < total

    resumed = driver_process(tmp_path, ray_cluster)
    assert resumed.wait(timeout=300) == 0, (tmp_path / "driver1.log").read_text()[-3000:]

    after = children(client, parent_id)
    names = Counter(r.data.tags["maestro.trial"] for r in after)
    assert len(after) == total and len(names) == total  # one run per trial, no duplicates
    assert all(r.info.status == "FINISHED" for r in after)
    by_name = {r.data.tags["maestro.trial"]: r for r in after}
    arms = load_spec(LQG).arm_names()
    assert {(r.data.tags["arm"], r.data.tags["seed"]) for r in after} == {
        (arm, str(seed)) for arm in arms for seed in range(3)
    }
    for name, run in finished_before.items():
        # Finished trials were not rerun: same run, untouched since.
        assert by_name[name].info.run_id == run.info.run_id
        assert by_name[name].info.end_time == run.info.end_time
    for name, run in unfinished_before.items():
        assert by_name[name].info.run_id == run.info.run_id  # continued, not replaced
    for run in after:
        steps = [step for step, _ in histories(client, run.info.run_id, "regret")]
        assert steps == LOGGED, (run.data.tags["maestro.trial"], steps)
    # A resumed trial's curve is the one an uninterrupted run of its config draws, and
    # some went on from a checkpoint rather than from round 0.
    base = load_spec(LQG, preset="smoke", overrides=[*TINY, *LONGER]).resolved()
    assert unfinished_before  # the kill landed with trials in flight
    restored = 0
    for name in unfinished_before:
        run = by_name[name]
        trial = trial_data(base, json.loads(run.data.tags["maestro.trial.params"]))
        cfg = RandomistConfig.model_validate(trial["config"])
        curve = list(simulate(cfg, BanditState.start(cfg, trial["seed"])))
        expected = [(t, curve[t - 1]) for t in LOGGED]
        assert_curve(histories(client, run.info.run_id, "regret"), expected)
        restored += "resumed_at_step" in client.get_run(run.info.run_id).data.metrics
    assert restored >= 1
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials/trials"] == total
    assert parent.data.metrics["trials/errored"] == 0
    assert parent.data.metrics["summary/final_regret/ucb1"] > 0


def test_a_trial_restarted_from_its_own_checkpoint_continues_its_curve(tracking):
    """A trial whose last checkpoint Tune does not hold (its experiment state was saved
    before it; the store has it) is restarted by a resumed experiment from Tune iteration 1
    while its step goes on from that checkpoint: the resumed driver's writer logs every
    new step into the same run and skips only the steps already there."""
    from maestro.store import open_store
    from maestro.sweep.tracking import TrialRunsWriter

    spec = tiny_spec(tracking)
    experiment = Experiment(spec, "sweep", spec.run_name(), load_sweep(spec))
    parent = start_parent(experiment, None, open_store(spec.store.uri))
    params = {"arm": "default", "seed": 0, "config.algorithm": "ucb1", "config.exploration": 0.3}

    def driver(reports: list[tuple[int, int]]) -> None:
        """One driver's writer seeing the trial report (iteration, rounds)."""
        runs = TrialRunsWriter(experiment, parent.run_id)
        runs.open()
        runs.trial_started("trial_00000", params)
        for iteration, rounds in reports:
            result = {"training_iteration": iteration, "step": rounds, "regret": rounds / 10}
            runs.trial_result("trial_00000", params, result)
        runs.save()  # Tune saves its state: everything reaches MLflow

    driver([(1, 20), (2, 40), (3, 60)])  # killed after round 60, checkpointed at round 20
    driver([(1, 40), (2, 60), (3, 80), (4, 100)])
    client = mlflow_client(tracking)
    (run,) = children(client, parent.run_id)
    expected = [(rounds, rounds / 10) for rounds in (20, 40, 60, 80, 100)]
    assert_curve(histories(client, run.info.run_id, "regret"), expected)


def test_batched_reports_become_one_point_per_step(tracking):
    """A batched report carries the steps logged before its own (`earlier`); each is a
    point of the trial's curve. A trial restarted from an older checkpoint reports steps
    MLflow has again: only the new ones are added, and its final metrics, at its last
    step, join that step's point."""
    from maestro.store import open_store
    from maestro.sweep.tracking import EARLIER, TrialRunsWriter

    spec = tiny_spec(tracking)
    experiment = Experiment(spec, "run", spec.run_name())
    parent = start_parent(experiment, None, open_store(spec.store.uri))
    params = {"arm": "default", "seed": 0}
    runs = TrialRunsWriter(experiment, parent.run_id)
    runs.open()
    runs.trial_started("trial_00000", params)
    earlier = [[20, {"regret": 2.0}], [40, {"regret": 4.0}]]
    runs.trial_result(
        "trial_00000",
        params,
        {"training_iteration": 1, "step": 60, "regret": 6.0, EARLIER: earlier},
    )
    # Restarted from its checkpoint at round 40: Tune counts from 1 again.
    earlier = [[60, {"regret": 6.0}], [80, {"regret": 8.0}]]
    final = {"regret": 10.0, "final_regret": 10.0}
    runs.trial_result(
        "trial_00000", params, {"training_iteration": 1, "step": 100, **final, EARLIER: earlier}
    )
    runs.trial_completed("trial_00000")
    runs.save()
    client = mlflow_client(tracking)
    (run,) = children(client, parent.run_id)
    assert histories(client, run.info.run_id, "regret") == [(s, s / 10) for s in range(20, 101, 20)]
    assert histories(client, run.info.run_id, "final_regret") == [(100, 10.0)]


# ---------------------------------------------------------------- 200 trials


def test_two_hundred_trials_one_child_run_each(ray_cluster, tracking):
    spec = tiny_spec(
        tracking,
        "trials.seeds=8",
        "sweep.space.config.algorithm={grid: [randomist, optimist, ucb1, phe, thompson]}",
        "sweep.space.config.exploration={grid: [0.03, 0.1, 0.3, 1.0, 3.0]}",
    )
    started = time.monotonic()
    result = run_experiment(spec, "sweep")
    elapsed = time.monotonic() - started
    summary = result.summary
    assert summary["trials"] == 200 and summary["errored"] == 0
    assert summary["stopped_early"] == 0
    print(f"200 trials in {elapsed:.1f} s")

    client = mlflow_client(tracking)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.data.tags["maestro.kind"] == "sweep"
    runs = children(client, result.mlflow_run_id)
    assert len(runs) == 200
    assert len({r.data.tags["maestro.trial"] for r in runs}) == 200
    combos = {
        (
            r.data.params["config.algorithm"],
            r.data.params["config.exploration"],
            r.data.tags["seed"],
        )
        for r in runs
    }
    assert len(combos) == 200  # every grid point and seed once
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["maestro.trial.outcome"] == "completed"
        assert run.data.params["config.rounds"] == "40"
        assert run.data.params["seed"] == run.data.tags["seed"]
        assert run.data.metrics["step"] == 40
        assert run.data.metrics["final_regret"] == run.data.metrics["regret"]
    sample = runs[0]
    curve = histories(client, sample.info.run_id, "regret")
    assert [step for step, _ in curve] == [20, 40]  # rounds as the step
    assert curve[0][1] <= curve[1][1]  # cumulative regret does not fall

    # The parent summarises the best trials, which are the lowest final regrets.
    lowest = min(r.data.metrics["regret"] for r in runs)
    assert parent.data.metrics["best/regret"] == pytest.approx(lowest)
    assert summary["best"][0]["regret"] == pytest.approx(lowest)
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "sweep")}
    assert artifacts == {"sweep/best_trials.json", "sweep/trials.json"}

    # Running the finished sweep again reports it and starts nothing.
    again = run_experiment(spec, "sweep")
    assert again.already_finished and again.mlflow_run_id == result.mlflow_run_id
    assert len(children(client, result.mlflow_run_id)) == 200


# ---------------------------------------------------------------- schedulers


def test_asha_stops_the_over_exploring_trials_early(ray_cluster, tracking):
    # OPTIMIST with a huge exploration bonus plays arms nearly uniformly: its regret grows
    # linearly. Good values come first in the grid, so each rung already holds them when
    # the bad trials arrive.
    result, runs = tiny_sweep(
        tracking,
        12,
        "config.rounds=100",
        "config.log_every=10",
        "trials.seeds=2",
        "sweep.space.config.algorithm={grid: [optimist]}",
        "sweep.space.config.exploration={grid: [0.01, 0.03, 0.1, 10.0, 30.0, 100.0]}",
        "sweep.scheduler={type: asha, max_t: 10, grace_period: 2, reduction_factor: 3}",
    )
    client = mlflow_client(tracking)
    reports: dict[float, list[tuple[int, str]]] = {
        float(r.data.params["config.exploration"]): [] for r in runs
    }
    for run in runs:
        steps = len(histories(client, run.info.run_id, "regret"))
        reports[float(run.data.params["config.exploration"])].append(
            (steps, run.data.tags["maestro.trial.outcome"])
        )
    for exploration, outcomes in reports.items():
        if exploration >= 10:
            assert all(steps < 10 and outcome == "stopped" for steps, outcome in outcomes), (
                exploration,
                outcomes,
            )
    completed = [e for e, outcomes in reports.items() for s, o in outcomes if o == "completed"]
    assert completed and max(completed) <= 0.1
    assert result.summary["stopped_early"] >= 6
    assert result.summary["best"][0]["params"]["config.exploration"] <= 0.1


def test_pbt_exploits_go_on_from_the_copied_state_and_record_the_new_values(ray_cluster, tracking):
    result, runs = tiny_sweep(
        tracking,
        4,
        "config.rounds=100",
        "config.log_every=10",
        "config.checkpoint_every=10",
        "trials.seeds=1",
        "sweep.search=random",
        "sweep.space={config: {algorithm: {grid: [optimist]}, exploration: {choice: [0.03, 3.0]}}}",
        "sweep.num_samples=4",
        "sweep.scheduler={type: pbt, perturbation_interval: 2, "
        "mutations: {config.exploration: {choice: [0.03, 0.3, 3.0]}}}",
    )
    client = mlflow_client(tracking)
    assert len(runs) == 4
    perturbed = falls = 0
    for run in runs:
        # In the order logged: two exploits can each restart the trial at the same step.
        points = client.get_metric_history(run.info.run_id, "hp/config.exploration")
        history = [(m.step, m.value) for m in sorted(points, key=lambda m: (m.step, m.timestamp))]
        assert history and history[0][0] == 10  # the first value, at the first report
        values = [value for _, value in history]
        assert all(value in (0.03, 0.3, 3.0) for value in values)
        changes = int(run.data.tags["maestro.pbt.perturbations"])
        assert changes == len(values) - 1
        assert float(run.data.tags["maestro.hp.config.exploration"]) == values[-1]
        perturbed += changes
        # Cumulative regret never falls within one history: where it does, the trial went
        # on from a better trial's copied checkpoint (its history and its lower regret).
        regret = [value for _, value in histories(client, run.info.run_id, "regret")]
        falls += any(later < earlier for earlier, later in zip(regret, regret[1:], strict=False))
    assert perturbed >= 1
    assert falls >= 1


# ---------------------------------------------------------------- Optuna, with Tune's state on S3


def test_optuna_search_with_tune_state_and_checkpoints_on_s3(ray_cluster, tracking, s3_env):
    from maestro.sweep.driver import tune_storage

    path, filesystem = tune_storage(f"s3://{s3_env.bucket}/tune")
    assert path == f"{s3_env.bucket}/tune"
    assert filesystem.type_name == "s3"

    result, runs = tiny_sweep(
        tracking,
        4,
        f"sweep.storage=s3://{s3_env.bucket}/tune",
        "sweep.search=optuna",
        "sweep.num_samples=4",
        "trials.seeds=1",
        "trials.report_seconds=0",  # trials of a second checkpoint only when not batched
        "config.algorithm=optimist",
        "sweep.space={config: {exploration: {loguniform: [0.01, 10.0]}}}",
    )
    values = sorted(float(r.data.params["config.exploration"]) for r in runs)
    assert len(set(values)) == 4 and values[0] >= 0.01 and values[-1] <= 10.0
    assert {r.data.params["seed"] for r in runs} == {"0"}

    listing = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="tune/")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    prefix = f"tune/{result.run_name}/"
    assert any(k.startswith(prefix) and "experiment_state" in k for k in keys)
    checkpoints = {k.split("/")[2] for k in keys if k.endswith("/state.json")}
    assert len(checkpoints) == 4  # each trial's checkpoints are in the bucket
