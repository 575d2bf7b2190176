"""Paper claims checked over seeds: verdicts on scores whose truth is known by construction,
spec validation, and a RANDOMIST run whose claims are read back from MLflow."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from maestro.claims import Claim, check_claim, check_claims, interquartile_mean
from maestro.spec import SpecError, load_spec

from .conftest import REPO

LQG = str(REPO / "jobs" / "randomist" / "lqg.yaml")
HIGH = np.array([10.0, 11.0, 12.0])
LOW = np.array([0.0, 1.0, 2.0])


def claim(better: str = "higher", statistic: str = "iqm") -> Claim:
    return Claim(name="a_wins", metric="m", better=better, compare=("a", "b"), statistic=statistic)


@pytest.mark.parametrize("statistic", ["iqm", "mean", "median"])
def test_a_true_claim_is_reproduced_a_false_one_contradicted_a_void_one_inconclusive(statistic):
    reproduced = check_claim(claim(statistic=statistic), {"a": HIGH, "b": LOW})
    assert reproduced.verdict == "reproduced"
    assert reproduced.difference.value == pytest.approx(10.0)
    # Any resample of a is at least 10, of b at most 2: the interval is inside [8, 12].
    assert 8.0 <= reproduced.difference.low <= 10.0 <= reproduced.difference.high <= 12.0
    assert reproduced.winner_estimate.value == pytest.approx(11.0)
    assert reproduced.seeds == (3, 3)
    swapped = check_claim(claim(statistic=statistic), {"a": LOW, "b": HIGH})
    assert swapped.verdict == "contradicted"
    assert swapped.difference.high < 0
    identical = check_claim(claim(statistic=statistic), {"a": HIGH, "b": HIGH.copy()})
    assert identical.verdict == "inconclusive"
    assert identical.difference.low < 0 < identical.difference.high


def test_the_interquartile_mean_drops_a_quarter_of_the_scores_at_each_end():
    assert interquartile_mean(np.array([[100.0], [1.0], [2.0], [-50.0]])) == 1.5
    assert interquartile_mean(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])) == 4.5
    assert interquartile_mean(np.array([3.0, 9.0, 6.0])) == 6.0  # a quarter of 3 is none
    assert interquartile_mean(np.array([7.0])) == 7.0


def test_a_margin_tolerates_that_fraction_of_the_losers_statistic():
    # a is 10% worse than b (lower is better): reproduced within a 20% margin, contradicted
    # within 5%.
    a, b = np.array([110.0, 110.0, 110.0]), np.array([100.0, 100.0, 100.0])
    within = Claim(name="n", metric="m", better="lower", compare=("a", "b"), margin=0.2)
    assert check_claim(within, {"a": a, "b": b}).difference.value == pytest.approx(10.0)
    assert check_claim(within, {"a": a, "b": b}).verdict == "reproduced"
    beyond = within.model_copy(update={"margin": 0.05})
    result = check_claim(beyond, {"a": a, "b": b})
    assert result.verdict == "contradicted" and result.difference.value == pytest.approx(-5.0)
    assert "+ 0.05 x |b|" in result.line()


def test_lower_is_better_turns_the_difference_around():
    result = check_claim(claim(better="lower"), {"a": LOW, "b": HIGH})
    assert result.verdict == "reproduced"
    assert result.difference.value == pytest.approx(10.0)


def test_overlapping_seeds_are_inconclusive_and_the_check_is_deterministic():
    a, b = np.array([1.0, 5.0, 9.0, 2.0]), np.array([0.0, 4.0, 8.0, 1.0])
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    first = check_claim(claim(statistic="mean"), {"a": a, "b": b})
    assert np.array_equal(np.random.get_state()[1], before)  # numpy's generator put back
    assert first.verdict == "inconclusive"
    assert first == check_claim(claim(statistic="mean"), {"a": a, "b": b})


def test_a_missing_arm_is_named():
    with pytest.raises(KeyError, match="no arm 'b'"):
        check_claim(claim(), {"a": HIGH})


GOOD = {"name": "c", "metric": "final_regret", "better": "lower", "compare": ["randomist", "ucb1"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metric": "regret"}, "claims.0.metric: a randomist trial returns no metric 'regret'"),
        ({"compare": ["randomist", "phe"]}, r"claims.0.compare: no arm 'phe'"),
        ({"compare": ["ucb1", "ucb1"]}, "two different arms"),
        ({"better": "more"}, "claims.0.better"),
        ({"name": "a b"}, "claims.0.name"),
    ],
)
def test_a_claim_that_does_not_fit_the_spec_is_refused(change, message):
    arms = "trials.arms={randomist: {algorithm: randomist}, ucb1: {algorithm: ucb1}}"
    assert load_spec(LQG, overrides=[arms, f"claims={json.dumps([GOOD])}"]).claims
    bad = json.dumps([{**GOOD, **change}])
    with pytest.raises(SpecError, match=message):
        load_spec(LQG, overrides=[arms, f"claims={bad}"])


def test_a_randomist_run_records_its_claims_in_mlflow(workdir):
    # GP-UCB below UCB1 (true at this scale by a wide margin), the same claim turned
    # around, and GP-UCB against itself (an arm of the same config: the same seeds give
    # the same regrets), over three seeds, each (arm, seed) a trial.
    claims = [
        {"name": "gpucb_below_ucb1", "metric": "final_regret", "better": "lower",
         "compare": ["gpucb", "ucb1"]},
        {"name": "ucb1_below_gpucb", "metric": "final_regret", "better": "lower",
         "compare": ["ucb1", "gpucb"]},
        {"name": "gpucb_below_itself", "metric": "final_regret", "better": "lower",
         "compare": ["gpucb", "gpucb_again"]},
    ]  # fmt: skip
    arms = "{gpucb: {algorithm: gpucb}, ucb1: {algorithm: ucb1}, "
    arms += "gpucb_again: {algorithm: gpucb}}"
    done = subprocess.run(
        [sys.executable, "-m", "maestro", "run", LQG, "--preset", "smoke"]
        + ["--set", "config.rounds=1000", "--set", "trials.seeds=3"]
        + ["--set", f"trials.arms={arms}", "--set", f"claims={json.dumps(claims)}"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "claim gpucb_below_ucb1: reproduced" in done.stdout
    assert "claim ucb1_below_gpucb: contradicted" in done.stdout
    assert "claim gpucb_below_itself: inconclusive" in done.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("randomist").experiment_id
    (run,) = client.search_runs([experiment], "tags.`maestro.kind` = 'run'")
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted((t.data.tags["arm"], t.data.tags["seed"]) for t in trials) == [
        (arm, str(seed)) for arm in ("gpucb", "gpucb_again", "ucb1") for seed in range(3)
    ]
    assert run.data.tags["maestro.claim.gpucb_below_ucb1"] == "reproduced"
    assert run.data.tags["maestro.claim.ucb1_below_gpucb"] == "contradicted"
    assert run.data.tags["maestro.claim.gpucb_below_itself"] == "inconclusive"
    assert run.data.metrics["claim/gpucb_below_itself/difference"] == 0
    difference = run.data.metrics["claim/gpucb_below_ucb1/difference"]
    assert run.data.metrics["claim/gpucb_below_ucb1/difference_low"] > 0
    assert difference == pytest.approx(-run.data.metrics["claim/ucb1_below_gpucb/difference"])
    # The difference is UCB1's final regret less GP-UCB's, as their trials' runs have them.
    final = {
        arm: [t.data.metrics["final_regret"] for t in trials if t.data.tags["arm"] == arm]
        for arm in ("gpucb", "ucb1")
    }
    summary = run.data.metrics
    for arm, values in final.items():
        assert summary[f"summary/final_regret/{arm}"] == pytest.approx(np.mean(values))
    expected = summary["summary/final_regret/ucb1"] - summary["summary/final_regret/gpucb"]
    assert difference == pytest.approx(expected, rel=0.05)
    folder = client.download_artifacts(run.info.run_id, "claims.json", str(workdir))
    with open(folder) as file:
        recorded = {c["name"]: c for c in json.load(file)}
    assert recorded["gpucb_below_ucb1"]["seeds"] == [3, 3]

    # `maestro report` shows the reproduction table.
    page = workdir / "report.html"
    report = subprocess.run(
        [sys.executable, "-m", "maestro", "report", "--run", run.info.run_id]
        + ["--output", str(page), "--no-log"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert "claim gpucb_below_ucb1: reproduced" in report.stdout
    html = page.read_text()
    assert "<h2>Paper claims</h2>" in html
    table = html.split("<h2>Paper claims</h2>")[1].split("</table>")[0]
    assert table.count("<tr>") == 4  # the head and the three claims
    assert "reproduced" in table and "contradicted" in table and "inconclusive" in table


def test_two_metrics_of_one_arm_compare_with_a_loser_metric():
    paired = Claim(
        name="passive_below_active", metric="active", loser_metric="passive", better="higher",
        compare=("tandem", "tandem"),
    )  # fmt: skip
    (result,) = check_claims([paired], {"active": {"tandem": HIGH}, "passive": {"tandem": LOW}})
    assert result.verdict == "reproduced" and result.metric == "active vs passive"
    assert (result.winner, result.loser) == ("tandem:active", "tandem:passive")
    with pytest.raises(ValueError, match="two different arms"):
        Claim(name="x", metric="m", better="higher", compare=("a", "a"))
