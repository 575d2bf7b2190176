"""`maestro report`: statistics by hand, a report of a real sweep checked in headless
Chromium (images present and decoded), and reports of a `maestro run` experiment, of one
trial and of an MLflow experiment."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from maestro import report as report_module
from maestro.report import (
    aggregate_curves,
    make_report,
    mean_band,
    rank_by_progress,
    render_html,
    write_report,
)
from maestro.run import run_experiment
from maestro.spec import load_spec

from .conftest import REPO
from .test_cli import maestro
from .test_sweep import ray_cluster  # noqa: F401  (the module's own local Ray cluster)

SPEC = REPO / "jobs" / "randomist" / "sweep.yaml"
LQG = REPO / "jobs" / "randomist" / "lqg.yaml"
# 2 algorithms x 2 exploration values x 3 seeds = 12 short trials.
OVERRIDES = [
    "config.rounds=60",
    "config.log_every=20",
    "config.value_samples=1000",
    "sweep.space.config.algorithm={grid: [optimist, ucb1]}",
    "sweep.space.config.exploration={grid: [0.1, 1.0]}",
    "trials.seeds=3",
]
# A run of 2 arms x 2 seeds = 4 short trials, with the spec's first claim (RANDOMIST below
# UCB1).
RUN_OVERRIDES = [
    "config.rounds=60",
    "config.log_every=20",
    "config.value_samples=1000",
    "trials.seeds=2",
    "trials.arms={randomist: {algorithm: randomist}, ucb1: {algorithm: ucb1}}",
    "claims=[{name: randomist_below_ucb1, metric: final_regret, better: lower, "
    "compare: [randomist, ucb1]}]",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Appended to a copy of the page: after load, writes what the browser made of each image.
IMAGE_CHECK = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(
    (i) => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, alt: i.alt}));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>
"""


def test_mean_and_band_by_hand():
    # mean 2, sample std 1, half-width 1.96 / sqrt(3)
    mean, half, count = mean_band([1.0, 2.0, 3.0])
    assert (mean, count) == (2.0, 3)
    assert half == pytest.approx(1.96 / math.sqrt(3))
    assert mean_band([5.0]) == (5.0, 0.0, 1)
    assert math.isnan(mean_band([])[0])
    # A run stopped early counts until its last step.
    steps, mean, half, count = aggregate_curves([[(1, 1.0), (2, 3.0)], [(1, 3.0)]])
    assert steps.tolist() == [1, 2]
    assert mean.tolist() == [2.0, 3.0]
    assert count.tolist() == [2, 1]
    assert half[0] == pytest.approx(1.96 * math.sqrt(2) / math.sqrt(2))
    assert half[1] == 0.0
    # Runs logged at different steps meet on a common grid, each interpolated between its
    # own steps and counted only within them.
    steps, mean, _, count = aggregate_curves([[(0, 0.0), (10, 10.0)], [(5, 1.0), (15, 3.0)]])
    assert steps.tolist() == [0, 5, 10, 15]
    assert mean.tolist() == [0.0, 3.0, 6.0, 3.0]  # at 10: (10 + 2) / 2
    assert count.tolist() == [1, 2, 2, 1]


def test_runs_that_went_further_rank_first_then_by_their_score():
    # A trial stopped at step 500 has less cumulative regret than one that ran to 2000.
    items = [("stopped", 500, 10.0), ("finished", 2000, 40.0), ("better", 2000, 30.0)]
    assert rank_by_progress(items, "min") == ["better", "finished", "stopped"]
    items.append(("nan", 2000, math.nan))
    assert rank_by_progress(items, "max") == ["finished", "better", "nan", "stopped"]


def test_step_labels_and_smoothing_by_hand():
    from maestro.methods.randomist import plot_regret
    from maestro.tracking import format_steps, smooth

    values = [0, 5, 950, 1000, 1500, 12345, 100_000, 999_999, 1_500_000, 2e9, 0.25]
    labels = ["0", "5", "950", "1k", "1.5k", "12.3k", "100k", "1M", "1.5M", "2B", "0.25"]
    assert [format_steps(v) for v in values] == labels
    # A centred moving average whose window shrinks at the ends.
    assert smooth([0.0, 0.0, 3.0, 0.0, 0.0], window=3).tolist() == [0, 1, 1, 1, 0]
    assert smooth([4.0, 2.0], window=3).tolist() == [3, 3]
    assert smooth(list(range(30))).tolist() == pytest.approx([0.5, *range(1, 29), 28.5])
    # The training plots use them: 2000 rounds read as 2k.
    figure = plot_regret({"ucb1": np.ones((3, 2000)).cumsum(axis=1)})
    formatter = figure.axes[0].xaxis.get_major_formatter()
    assert formatter(2000, 0) == "2k" and formatter(150_000, 0) == "150k"


def x_labels(monkeypatch) -> list[str]:
    """The x-axis labels of the plots that reports draw from now on."""
    labels = []

    def step_axis(axis, label: str) -> None:
        labels.append(label)
        real_step_axis(axis, label)

    real_step_axis = report_module.step_axis
    monkeypatch.setattr(report_module, "step_axis", step_axis)
    return labels


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium")
    assert browser, "the report test needs Debian's chromium package (apt-get install chromium)"
    return subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def workdir_env(tmp_path, monkeypatch) -> dict[str, str]:
    """MLflow and the store in the test's folder (here and for subprocesses), and that
    folder as the working directory."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "MAESTRO_STORE": str(tmp_path / "store"),
    }
    for key in ("MLFLOW_TRACKING_URI", "MAESTRO_STORE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(tmp_path)
    return env


@pytest.mark.usefixtures("ray_cluster")
def test_sweep_report_opens_in_chromium_with_its_plots(tmp_path, monkeypatch):
    env = workdir_env(tmp_path, monkeypatch)
    swept = run_experiment(load_spec(SPEC, preset="smoke", overrides=OVERRIDES), "sweep")
    assert swept.summary["trials"] == 12 and swept.summary["errored"] == 0

    sets = [part for item in OVERRIDES for part in ("--set", item)]
    page = tmp_path / "report.html"
    made = maestro(
        "report",
        str(SPEC),
        "--preset",
        "smoke",
        *sets,
        "--output",
        str(page),
        cwd=tmp_path,
        env=env,
    )
    assert made.returncode == 0, made.stdout + made.stderr[-3000:]
    titles = re.findall(r"figure: (.+)", made.stdout)
    assert titles == [
        "Learning curves (regret)",
        "Metric against each hyperparameter",
        "Parallel coordinates",
        "Comparison by algorithm",
    ]

    # Self-contained: every image is inline PNG data, nothing else is referenced.
    text = page.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 4
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert "12" in text and "optimist" in text and "ucb1" in text

    # The browser loads the page and decodes every plot.
    check = tmp_path / "check.html"
    check.write_text(text.replace("</body>", IMAGE_CHECK + "</body>"))
    dom = chromium(
        "--virtual-time-budget=10000", "--dump-dom", check.as_uri(), profile=tmp_path / "p1"
    )
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:] + dom.stderr[-2000:]
    decoded = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(decoded) == 4
    assert all(i["complete"] and i["width"] > 400 and i["height"] > 200 for i in decoded), decoded

    # The same figures and page are in MLflow, on the sweep's parent run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent_id = re.search(r"logged to MLflow run (\w+)", made.stdout).group(1)
    assert client.get_run(parent_id).data.tags["maestro.kind"] == "sweep"
    logged = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert logged == {
        "report/curves.png",
        "report/hyperparameters.png",
        "report/parallel.png",
        "report/comparison.png",
        "report/index.html",
    }
    copy = client.download_artifacts(parent_id, "report/index.html", str(tmp_path / "dl"))
    assert Path(copy).read_text() == text
    assert parent_id == swept.mlflow_run_id

    # The table: every trial with its coordinates (the seed apart from the setting), best
    # first by its regret at the last round, which the sweep's parent run also names.
    # The curves' x-axis is what RANDOMIST's steps count.
    labels = x_labels(monkeypatch)
    report = make_report(run_id=parent_id)
    assert labels == ["rounds", "rounds"]  # the curves, the comparison's curves
    assert report.table_head == [
        "rank", "trial", "algorithm", "exploration", "seed", "steps", "regret", "outcome",
    ]  # fmt: skip
    assert [row[0] for row in report.table_rows] == [str(rank) for rank in range(1, 13)]
    assert sorted(tuple(row[2:5]) for row in report.table_rows) == [
        (algorithm, exploration, str(seed))
        for algorithm in ("optimist", "ucb1")
        for exploration in ("0.1", "1")
        for seed in range(3)
    ]
    assert all((row[5], row[7]) == ("3", "completed") for row in report.table_rows)
    scores = [float(row[6]) for row in report.table_rows]
    assert scores == sorted(scores)
    best = swept.summary["best"][0]
    assert scores[0] == pytest.approx(best["regret"], rel=1e-5)
    assert report.table_rows[0][1] == best["trial"]
    summary = dict(report.summary)
    assert summary["trials"] == "12" and summary["outcomes"] == "completed: 12"
    assert summary["best trial"].startswith(f"{best['trial']}: algorithm=")

    # A single trial's run gets its own report.
    child = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=1,
    )[0]
    labels.clear()
    single = make_report(run_id=child.info.run_id)
    assert [figure.name for figure in single.figures] == ["regret", "return_regret"]
    assert labels == ["rounds", "rounds"]  # the trial's parent says what its steps count
    write_report(single, tmp_path / "run.html", log=False)
    assert (tmp_path / "run.html").read_text().count("data:image/png;base64,") == 2
    assert client.list_artifacts(child.info.run_id, "report") == []


@pytest.mark.usefixtures("ray_cluster")
def test_run_report_draws_each_arms_mean_over_seeds_and_its_claims(tmp_path, monkeypatch):
    env = workdir_env(tmp_path, monkeypatch)
    done = run_experiment(load_spec(LQG, preset="smoke", overrides=RUN_OVERRIDES))
    assert done.kind == "run" and sorted(done.summary) == [
        f"{metric}/{arm}"
        for metric in ("final_regret", "final_return_regret", "late_share")
        for arm in ("randomist", "ucb1")
    ]

    # The parent run's report: one figure of the per-arm mean regret curves (their
    # `regret_band/<arm>` drawn as bands; the summaries and counts are single values, in
    # the table), and the claim the run checked.
    labels = x_labels(monkeypatch)
    report = make_report(run_id=done.mlflow_run_id)
    assert report.kind == "run" and report.log_run_id == done.mlflow_run_id
    assert [figure.name for figure in report.figures] == ["regret"]
    assert labels == ["rounds"]
    table = dict(report.table_rows)
    assert table["trials/trials"] == "4" and table["trials/errored"] == "0"
    for key, value in done.summary.items():
        assert float(table[f"summary/{key}"]) == pytest.approx(value, rel=1e-5)
    # The curves' last points are those means.
    for arm in ("randomist", "ucb1"):
        assert float(table[f"regret/{arm}"]) == pytest.approx(
            done.summary[f"final_regret/{arm}"], rel=1e-5
        )
    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_run(done.mlflow_run_id).data.tags
    assert tags["maestro.kind"] == "run"
    assert [(c.name, c.verdict) for c in report.claims] == [
        ("randomist_below_ucb1", tags["maestro.claim.randomist_below_ucb1"])
    ]
    assert [c.line() for c in report.claims] == done.claims

    # `maestro report` of the spec finds the run (not a sweep: the spec has none).
    sets = [part for item in RUN_OVERRIDES for part in ("--set", item)]
    page = tmp_path / "run.html"
    made = maestro(
        "report", str(LQG), "--preset", "smoke", *sets, "--output", str(page), "--no-log",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr[-3000:]
    assert re.findall(r"figure: (.+)", made.stdout) == ["regret"]
    assert f"claim {done.claims[0]}" in made.stdout
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 1 and "<h2>Paper claims</h2>" in html


def test_experiment_report_compares_methods_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)
    from maestro.tracking import Tracker

    # Two methods, three seeds each; "fast" reaches a lower loss.
    for method, scale in (("fast", 1.0), ("slow", 3.0)):
        for seed in range(3):
            tracker = Tracker.start(
                "compare", f"{method}-{seed}", {"seed": seed}, {"maestro.method": method}
            )
            for step in (10, 20, 30):
                tracker.log_metrics({"loss": scale * (1 + seed) / step}, step=step)
            tracker.end()
    report = make_report(experiment="compare", metric="loss", mode="min")
    assert [f.name for f in report.figures] == ["curves", "comparison"]
    summary = dict(report.summary)
    assert summary["runs"] == "6 with loss (of 6)"
    assert summary["best loss"].startswith(f"{1 / 30:.6g} (fast-0)")
    assert [row[2] for row in report.table_rows[:3]] == ["fast", "fast", "slow"]
    path = write_report(report, tmp_path / "compare.html")
    assert path.read_text().count("data:image/png;base64,") == 2
    # The experiment's report lives in its own run, marked so later reports skip it.
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(report.log_run_id)
    assert run.data.tags["maestro.kind"] == "report"
    assert make_report(experiment="compare", metric="loss").summary == report.summary

    # The table lists every run here; cut, it says so.
    assert report.table_note == "" and "showing" not in path.read_text()
    monkeypatch.setattr(report_module, "MAX_TABLE_ROWS", 4)
    cut = make_report(experiment="compare", metric="loss", mode="min")
    assert len(cut.table_rows) == 4
    assert cut.table_note == "showing the 4 best of 6 runs (by loss)"
    assert '<p class="meta">showing the 4 best of 6 runs (by loss)</p>' in render_html(cut)


def test_report_errors_name_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)
    from maestro.cli import main

    assert main(["report", "--experiment", "nothing-here", "--metric", "loss"]) == 2
    assert "no MLflow experiment named 'nothing-here'" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "give one of" in capsys.readouterr().err
    assert main(["report", str(SPEC), "--preset", "smoke"]) == 2
    assert "has not run yet" in capsys.readouterr().err
