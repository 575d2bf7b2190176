"""Specs: presets, overrides, and a corpus of bad input that must each get one clear line
and exit code 2 with nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest

from maestro.cli import main
from maestro.spec import SpecError, flatten, load_spec

from .conftest import REPO

LQG = REPO / "jobs" / "randomist" / "lqg.yaml"


def test_preset_and_overrides_apply_with_types():
    spec = load_spec(LQG, preset="full", overrides=["config.rounds=300", "config.lqg.gamma=0.9"])
    assert spec.method == "randomist"
    assert spec.config.rounds == 300  # the override wins over the preset
    assert spec.trials.seeds == 30  # from the full preset
    assert spec.seeds()[:3] == [0, 1, 2]
    assert spec.arm_names() == [
        "randomist", "randomist_th", "optimist", "ucb1", "gpucb", "thompson", "phe"
    ]  # fmt: skip
    assert spec.config.lqg.gamma == 0.9
    assert spec.preset == "full"
    flat = flatten(spec.resolved())
    assert flat["config.rounds"] == 300
    assert flat["config.lqg.horizon"] == 20


def test_same_spec_same_run_name_and_changes_change_it():
    a = load_spec(LQG, preset="smoke")
    b = load_spec(LQG, preset="smoke")
    c = load_spec(LQG, preset="smoke", overrides=["seed=1"])
    assert a.run_name() == b.run_name()
    assert a.run_name() != c.run_name()
    assert a.run_name().startswith("lqg-smoke-")


def test_a_spec_extends_another_and_merges_into_it():
    task = load_spec(REPO / "jobs" / "motif" / "staircase_lvl3.yaml", preset="full")
    quickstart = load_spec(REPO / "jobs" / "motif" / "quickstart.yaml", preset="full")
    assert task.config.task == "staircase_lvl3"
    assert task.config.collect.task == "staircase_lvl3"
    # Everything else, presets included, is the quickstart's.
    assert task.config.train == quickstart.config.train
    assert task.config.train.num_env_runners == 24
    assert task.config.annotator == quickstart.config.annotator
    assert task.run_name().startswith("staircase_lvl3-full-")


def write(tmp: Path, text: str) -> Path:
    path = tmp / "bad.yaml"
    path.write_text(text)
    return path


GOOD = "method: randomist\nconfig: {rounds: 100}\n"

# (spec text, overrides, words the one-line error must contain)
BAD_CASES = [
    ("method: [not, a, name\n", [], ["not valid YAML", "line"]),
    ("- just\n- a list\n", [], ["must be a mapping"]),
    ("config: {}\n", [], ["method:", "required"]),
    ("method: motifff\n", [], ["method:", "no method 'motifff'", "randomist"]),
    ("method: randomist\nconfg: {}\n", [], ["confg", "unknown key"]),
    ("method: randomist\nconfig: {roundz: 5}\n", [], ["config.roundz", "unknown key"]),
    ("method: randomist\nconfig: {rounds: many}\n", [], ["config.rounds", "integer", "many"]),
    ("method: randomist\nconfig: {rounds: -3}\n", [], ["config.rounds", "greater than"]),
    ("method: randomist\nconfig: {algorithm: ucb2}\n", [], ["config.algorithm", "ucb2"]),
    (
        "method: randomist\ntrials: {arms: {a: {algorithm: ucb2}}}\n",
        [],
        ["trials.arms.a.algorithm", "ucb2"],
    ),
    ("method: randomist\ntrials: {seeds: 0}\n", [], ["trials.seeds"]),
    ("method: randomist\nconfig: {theta_min: 1, theta_max: 0}\n", [], ["theta_min"]),
    ("method: randomist\nresources: {num_cpus: 0}\n", [], ["resources.num_cpus"]),
    ("method: randomist\ntracking: {enabled: sometimes}\n", [], ["tracking.enabled"]),
    ("method: randomist\nconfig: 5\n", [], ["config:", "mapping"]),
    ("method: randomist\npresets: {smoke: {method: ucb}}\n", ["--preset", "smoke"], ["method"]),
    (GOOD, ["--preset", "tiny"], ["no preset 'tiny'"]),
    (GOOD, ["--set", "config.rounds=abc"], ["config.rounds", "abc"]),
    (GOOD, ["--set", "config.lqg.nope=1"], ["config.lqg.nope", "unknown key"]),
    (GOOD, ["--set", "config.rounds.deeper=1"], ["config.rounds", "not a mapping"]),
    (GOOD, ["--set", "rounds"], ["expected KEY.PATH=VALUE"]),
    (GOOD, ["--set", "config..rounds=3"], ["expected KEY.PATH=VALUE"]),
    (GOOD, ["--set", "seed=[1"], ["seed", "not valid YAML"]),
    ("extends: bad.yaml\n", [], ["extends:", "extends itself"]),
    ("extends: [a]\nmethod: randomist\n", [], ["extends:", "path of another spec"]),
    ("extends: gone.yaml\n", [], ["gone.yaml: file not found"]),
]


@pytest.mark.parametrize(("text", "extra", "words"), BAD_CASES)
def test_bad_spec_one_line_exit_2_nothing_created(workdir, capsys, text, extra, words):
    path = write(workdir, text)
    before = sorted(p.name for p in workdir.iterdir())
    code = main(["run", str(path), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"maestro: spec error: {path}")
    for word in words:
        assert word in err, (word, err)
    assert sorted(p.name for p in workdir.iterdir()) == before  # no mlruns.db, no store


def test_missing_file_is_a_spec_error(workdir):
    with pytest.raises(SpecError, match="nope.yaml: file not found"):
        load_spec(workdir / "nope.yaml")


def test_submit_validates_before_contacting_anything(workdir, capsys):
    path = write(workdir, "method: randomist\nconfig: {rounds: x}\n")
    code = main(["submit", str(path), "--address", "http://127.0.0.1:1"])
    assert code == 2
    assert "config.rounds" in capsys.readouterr().err


def test_a_trials_spec_holds_its_arm_even_when_another_arm_would_not_fit_it():
    """Each arm is checked on the spec's config; a trial's config already holds its arm, and
    another arm's overlay on it (members 1 on top of CERL's heads) is not that trial's."""
    from maestro.spec import build_spec, trial_data

    spec = load_spec(REPO / "jobs/cerl/ensemble.yaml", preset="smoke")
    data = trial_data(spec.resolved(), {"arm": "ensemble_cerl", "seed": 0})
    trial = build_spec(data, "trial", arm_applied=True)
    assert trial.config.cerl and trial.config.members == 5
    with pytest.raises(SpecError, match="trials.arms.single"):
        build_spec(data, "trial")
