"""Every metric a Grafana dashboard panel queries is exported by the job that records it.

Each dashboard is checked against the job that exports its metrics. One local Ray cluster
(token auth, metrics on a free port) runs the Motif quickstart, shortened
(`maestro run jobs/motif/quickstart.yaml --preset smoke`: collection, the embedding judge,
the reward model and a little APPO training: rollout, annotation, learner and return
metrics), then the annotation job with the `hf` backend on a tiny random-weight Llama built
here, whose answers are noise, so the invalid-answer counter is recorded as a 70B judge's
unparseable answers are, then a tiny RANDOMIST sweep (`jobs/randomist/sweep.yaml`: trials
per state). Ray records its own task, actor, resource and node metrics. The endpoint is
scraped over HTTP: every metric that a panel of annotation.json, training.json,
sweeps.json or cluster.json (or a template variable) selects must be in the scrape, with the
label values it matches exactly, and Maestro's values must equal what the runs logged to
MLflow: collection and annotation (an experiment's `prepare`) on its parent run, labelled
with the experiment's name; training on each trial's child run, labelled
`<experiment>/<trial>`. GPU metrics cannot appear on a machine without a GPU; for those the
test checks that Ray's node agent declares them.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from maestro import metrics

from .conftest import REPO, free_port
from .tiny_llm import build_random_llama

DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
QUICKSTART = REPO / "jobs" / "motif" / "quickstart.yaml"
ANNOTATE_SMALL = [
    "config.collect.num_shards=2",
    "config.collect.max_episode_steps=200",
    "config.collect.num_actors=1",
    "config.pairs.num_draws=300",
    "config.annotation.batch_size=32",
]
TRAIN_SMALL = [
    "config.train.env_steps=2048",
    "config.train.num_envs_per_env_runner=4",
    "config.train.max_episode_steps=100",
    "config.train.min_iteration_seconds=1",
    "config.train.eval_episodes=1",
]
# The tiny Llama answers with noise: almost every answer is invalid (truncated).
NOISY_JUDGE = [  # collection and annotation only
    "config.stages=[collect, annotate]",
    "config.annotator.backend=hf",
    "config.annotator.max_tokens=16",
    "config.pairs.num_draws=40",
    "config.annotation.batch_size=8",
]
SWEEP = REPO / "jobs" / "randomist" / "sweep.yaml"
# Twelve tiny RANDOMIST trials (6 algorithms x 2 exploration coefficients x 1 seed), two
# reports each.
SWEEP_SMALL = [
    "config.rounds=40",
    "config.log_every=20",
    "config.value_samples=1000",
    "sweep.space.config.exploration={grid: [0.1, 1.0]}",
    "trials.seeds=1",
]


# ---------------------------------------------------------------- reading the dashboards


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    expr: str


def dashboard_queries() -> list[Query]:
    """Every PromQL expression of every panel target and template variable."""
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                queries.append(Query(path.name, panel["title"], target["expr"]))
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                expr = label_values_metric(variable["query"]["query"])
                queries.append(Query(path.name, f"variable {variable['name']}", expr))
    return queries


def label_values_metric(query: str) -> str:
    """`label_values(metric, label)` -> `metric` (Grafana's variable query syntax)."""
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
    assert match, f"unexpected variable query {query!r}"
    return match.group(1)


def as_promql(expr: str) -> str:
    """Grafana's variables replaced by what they stand for, so the expression parses."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, labels matched with `=`) of every vector selector in `expr`."""
    found = []

    def visit(node, *_):
        if isinstance(node, promql_parser.VectorSelector):
            exact = {
                m.name: m.value
                for m in node.matchers.matchers
                if m.op == promql_parser.MatchOp.Equal and m.name != "__name__"
            }
            name = node.name or next(
                m.value for m in node.matchers.matchers if m.name == "__name__"
            )
            found.append((name, exact))

    promql_parser.walk(promql_parser.parse(as_promql(expr)), visit)
    return found


# ---------------------------------------------------------------- static checks


def test_dashboards_are_well_formed_grafana_json():
    assert {p.name for p in DASHBOARDS} == {
        "annotation.json",
        "training.json",
        "sweeps.json",
        "cluster.json",
    }
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        assert board["title"].startswith("Maestro / ")
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']}"
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]
                promql_parser.parse(as_promql(target["expr"]))  # raises on bad PromQL


def test_every_maestro_metric_is_shown_and_every_shown_one_is_declared():
    used = {name for q in dashboard_queries() for name, _ in selectors(q.expr)}
    exported = {sample for names in metrics.exported_names().values() for sample in names}
    maestro_used = {name for name in used if name.startswith("ray_maestro_")}
    assert maestro_used <= exported, maestro_used - exported
    for base, samples in metrics.exported_names().items():
        assert used & set(samples), f"{base} is exported but no dashboard shows it"


def test_the_dashboards_cover_what_operators_watch():
    titles = {
        path.stem: {panel["title"] for panel in json.loads(path.read_text())["panels"]}
        for path in DASHBOARDS
    }
    assert {"Labelled pairs/s", "Invalid answer rate", "Annotation queue depth"} <= titles[
        "annotation"
    ]
    assert {
        "Env steps/s",
        "Learner throughput (samples/s)",
        "Intrinsic vs extrinsic return",
    } <= titles["training"]
    assert {"Trials running", "Trials finished", "Trials errored"} <= titles["sweeps"]
    assert {"CPU utilisation per node", "GPU utilisation", "Active nodes by type"} <= titles[
        "cluster"
    ]


# ---------------------------------------------------------------- the live cluster


@dataclass
class Scrape:
    samples: list  # prometheus_client Sample objects

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def has(self, name: str, labels: dict[str, str]) -> bool:
        return any(
            s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            for s in self.samples
        )

    def total(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return Scrape([s for family in text_string_to_metric_families(text) for s in family.samples])


class GaugeWatch:
    """Scrapes the endpoint every second in a thread and keeps the latest samples of gauge
    `name` it saw. A trial's gauges are exported only while its process lives, and that
    process ends with its run, seconds before the jobs after it are done."""

    def __init__(self, port: int, name: str):
        self.port, self.name = port, name
        self.seen: dict[tuple, Any] = {}  # sorted labels -> latest sample
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                samples = scrape(self.port).samples
            except OSError:
                continue
            for sample in samples:
                if sample.name == self.name:
                    self.seen[tuple(sorted(sample.labels.items()))] = sample

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def add_to(self, result: Scrape) -> Scrape:
        """`result` with the samples seen earlier whose series it no longer has."""
        present = {tuple(sorted(s.labels.items())) for s in result.samples if s.name == self.name}
        gone = [sample for labels, sample in self.seen.items() if labels not in present]
        return Scrape(result.samples + gone)


def mlflow_client():
    from mlflow.tracking import MlflowClient

    from maestro.tracking import tracking_uri

    return MlflowClient(tracking_uri())


def trial_runs(result) -> list:
    """The child runs (one per trial) of experiment `result` (a `RunResult`)."""
    client = mlflow_client()
    parent = client.get_run(result.mlflow_run_id)
    return client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )


def trial_label(result, trial) -> str:
    """The `run` label of a trial's metrics: `<experiment>/<trial>`."""
    return f"{result.run_name}/{trial.data.tags['maestro.trial']}"


def history_sum(run_id: str, key: str) -> float:
    """The sum of every value metric `key` of run `run_id` logged (one per iteration)."""
    return sum(m.value for m in mlflow_client().get_metric_history(run_id, key))


def job_expectations(result, batch_size: int) -> dict[str, dict[str, float]]:
    """What a Motif job's metrics must read, by their `run` label, from what it logged to
    MLflow: collection and annotation (`prepare`, on the parent run) under the experiment's
    name, and training under each trial that trained (on the trial's own run)."""
    logged = mlflow_client().get_run(result.mlflow_run_id).data.metrics
    labelled, invalid = logged["annotation/pairs_labelled"], logged["annotation/invalid"]
    prepared = {
        # Env steps: each episode's rows are its first observation and one per step.
        "ray_maestro_rollout_env_steps_total": logged["collect/rows"] - logged["collect/episodes"],
        "ray_maestro_rollout_episodes_total": logged["collect/episodes"],
        "ray_maestro_annotation_batch_seconds_count": -(-(labelled + invalid) // batch_size),
        "ray_maestro_annotation_queue_depth": 0.0,  # nothing left waiting at the end
    }
    # Ray exports a counter once it has been incremented.
    if labelled:
        prepared["ray_maestro_annotation_labelled_pairs_total"] = labelled
    if invalid:
        prepared["ray_maestro_annotation_invalid_answers_total"] = invalid
    expected = {result.run_name: prepared}
    for trial in trial_runs(result):
        if "env_steps" not in trial.data.metrics:
            continue  # the job stops before training: its trial trains nothing
        run_id = trial.info.run_id
        expected[trial_label(result, trial)] = {
            "ray_maestro_rollout_env_steps_total": trial.data.metrics["env_steps"],
            "ray_maestro_rollout_episodes_total": history_sum(run_id, "train/episodes"),
            "ray_maestro_learner_samples_total": history_sum(run_id, "learner/env_steps_trained"),
            "ray_maestro_learner_updates_total": history_sum(run_id, "learner/gradient_updates"),
        }
    return expected


def value_problems(result: Scrape, expected: dict[str, dict[str, float]]) -> list[str]:
    """Where the scrape differs from the values the runs recorded."""
    return [
        f"run {run}: {name} reads {result.total(name, run=run)}, expected {value}"
        for run, values in expected.items()
        for name, value in values.items()
        if not result.has(name, {"run": run}) or result.total(name, run=run) != value
    ]


def panel_problems(result: Scrape) -> list[str]:
    """Metrics (and exactly matched label values) that panels select and the scrape lacks,
    except GPU metrics on a machine without a GPU."""
    from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES

    names = result.names()
    has_gpu = "ray_node_gpus_available" in names
    problems = []
    for query in dashboard_queries():
        for name, labels in selectors(query.expr):
            where = f"{query.dashboard} / {query.panel}: {name}{labels or ''}"
            if name in names:
                if not result.has(name, labels):
                    problems.append(f"{where}: no series with these labels")
            elif has_gpu or name.removeprefix("ray_") not in METRICS_GAUGES:
                problems.append(f"{where}: not exported")
            elif not ("gpu" in name or "gram" in name):
                problems.append(f"{where}: declared by Ray's node agent but not exported")
    return problems


# Ray's metric report interval here (10 s by default): values reach the endpoint sooner, and
# Ray drops a gauge not recorded for two intervals sooner too.
REPORT_INTERVAL_S = 3


@dataclass
class Exported:
    result: Scrape  # once it showed everything (or at the deadline), with the trial's returns
    later: Scrape  # three report intervals after that: gauges must still be there
    expected: dict[str, dict[str, float]]  # run label -> metric -> value
    quickstart_run: str
    quickstart_trial: str  # the `run` label of the quickstart's training (its one trial)
    quickstart_trial_run_id: str  # the trial's MLflow run
    noisy_run: str
    sweep: dict  # the sweep's name and trial count


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Iterator[Exported]:
    """Run the quickstart, the noisy annotation job and a tiny RANDOMIST sweep on one local
    Ray cluster and scrape its endpoint."""
    from maestro.runtime import auth_mode, create_local_token, token_available
    from maestro.spec import load_spec

    folder = tmp_path_factory.mktemp("dashboards")
    model = build_random_llama(folder / "tiny-llama")
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for name in ("MLFLOW_TRACKING_URI", "MAESTRO_STORE", "RAY_ADDRESS"):
            patch.delenv(name, raising=False)
        # Ray reads its authentication mode when imported: settle it first, as init_ray does.
        patch.setenv("RAY_AUTH_MODE", auth_mode())
        if auth_mode() == "token" and not token_available():
            create_local_token()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        # "local": our own cluster, never one that `ray start` left on this machine. One
        # logical GPU so that the GPU resource series exists without a physical GPU.
        ray.init(
            address="local",
            num_cpus=2,
            num_gpus=1,
            include_dashboard=False,
            log_to_driver=False,
            _metrics_export_port=port,
            _system_config={"metrics_report_interval_ms": REPORT_INTERVAL_S * 1000},
        )
        returns = GaugeWatch(port, "ray_maestro_episode_return")
        try:
            from maestro.run import run_experiment

            expected = {}
            results = []
            jobs = [
                (QUICKSTART, TRAIN_SMALL),
                (QUICKSTART, [*NOISY_JUDGE, f"config.annotator.model={model}"]),
            ]
            for path, overrides in jobs:
                spec = load_spec(str(path), preset="smoke", overrides=ANNOTATE_SMALL + overrides)
                result = run_experiment(spec)  # joins the cluster started above
                batch_size = spec.config.annotation.batch_size
                expected.update(job_expectations(result, batch_size))
                results.append(result)
            quickstart, noisy = results
            (trial,) = trial_runs(quickstart)
            spec = load_spec(str(SWEEP), preset="smoke", overrides=SWEEP_SMALL)
            sweep = run_experiment(spec, "sweep")
            sweep_trials = {"sweep": sweep.run_name, "trials": sweep.summary["trials"]}
            deadline = time.monotonic() + 60
            latest = returns.add_to(scrape(port))
            while value_problems(latest, expected) or panel_problems(latest):
                if time.monotonic() > deadline:
                    break
                time.sleep(1)
                latest = returns.add_to(scrape(port))
            time.sleep(3 * REPORT_INTERVAL_S)
            yield Exported(
                latest,
                scrape(port),
                expected,
                quickstart.run_name,
                trial_label(quickstart, trial),
                trial.info.run_id,
                noisy.run_name,
                sweep_trials,
            )
        finally:
            returns.stop()
            ray.shutdown()


def test_recorded_values_reach_the_metrics_endpoint(exported):
    expected = exported.expected
    assert not value_problems(exported.result, expected)
    # The quickstart's one trial trained; the annotation job has none that did.
    assert exported.quickstart_trial == f"{exported.quickstart_run}/trial_00000"
    assert set(expected) == {exported.quickstart_run, exported.quickstart_trial, exported.noisy_run}
    quickstart, noisy = expected[exported.quickstart_run], expected[exported.noisy_run]
    training = expected[exported.quickstart_trial]
    # The embedding judge always answers; the random Llama's answers are mostly noise.
    assert "ray_maestro_annotation_invalid_answers_total" not in quickstart
    assert quickstart["ray_maestro_annotation_labelled_pairs_total"] > 0
    assert noisy["ray_maestro_annotation_invalid_answers_total"] > 0
    assert quickstart["ray_maestro_rollout_env_steps_total"] > 0  # collection
    assert training["ray_maestro_rollout_env_steps_total"] >= 2048  # training
    assert training["ray_maestro_learner_samples_total"] >= 2048
    assert training["ray_maestro_learner_updates_total"] >= 1
    # The return gauges hold the last returns the trial logged, one series per kind.
    logged = mlflow_client().get_run(exported.quickstart_trial_run_id).data.metrics
    for kind, key in (
        ("intrinsic", "train/intrinsic_return"),
        ("extrinsic", "train/extrinsic_return"),
    ):
        labels = {"run": exported.quickstart_trial, "kind": kind}
        values = [
            s.value
            for s in exported.result.samples
            if s.name == "ray_maestro_episode_return"
            and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert values == [pytest.approx(logged[key])], (kind, values)
    # Gauges set once stay exported (Ray alone would drop them after two report intervals)
    # while the process that set them lives: the queue depth, set by `prepare` in the
    # driver. (The return gauges are the trial's: its worker process ended with the run.)
    for run in (exported.quickstart_run, exported.noisy_run):
        assert exported.later.has("ray_maestro_annotation_queue_depth", {"run": run})


def test_sweep_trial_counts_reach_the_metrics_endpoint(exported):
    sweep = exported.sweep
    assert sweep["trials"] == 12

    def trials(state: str, name: str = sweep["sweep"]) -> list[float]:
        labels = {"sweep": name, "state": state}
        return [
            s.value
            for s in exported.later.samples
            if s.name == "ray_maestro_sweep_trials"
            and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    assert trials("finished") == [12]
    for state in ("pending", "running", "paused", "errored"):
        assert trials(state) == [0]
    # A run's trials are counted too: the quickstart and the annotation job had one each.
    for run in (exported.quickstart_run, exported.noisy_run):
        assert trials("finished", run) == [1]


def test_every_metric_a_panel_queries_is_exported(exported):
    problems = panel_problems(exported.result)
    assert not problems, "\n".join(problems)
