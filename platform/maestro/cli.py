"""`maestro`: run experiment specs locally, submit them to a Ray cluster, check the setup.

    maestro run SPEC [--preset P] [--set key.path=value ...] [--new-run]
    maestro sweep SPEC [--preset P] [--set ...] [--new-run]
    maestro report [SPEC | --run RUN_ID | --experiment NAME] [--metric M] [--output FILE]
    maestro submit SPEC --address http://HEAD:8265 [--preset P] [--set ...] [--no-wait]
    maestro doctor

Every failure is one line on stderr naming what failed (`--debug`, or MAESTRO_DEBUG=1,
shows the traceback). Exit codes: 0 success; 1 the experiment (or job) failed, or a service
(Ray, MLflow, the store) failed or could not be reached; 2 bad spec, override or setup.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from maestro.errors import RuntimeSetupError, SignatureError, TrialsFailed
from maestro.report import ReportError, make_report, write_report
from maestro.spec import SpecError, load_spec

# How long `maestro submit` waits for a just-started head node's job agent.
JOB_AGENT_WAIT_S = 180.0
# Forwarded to submitted jobs: where to track and store. Never credentials; those live on
# the cluster (environment, files or instance roles), see docs/operations.md.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MAESTRO_STORE")
UPLOAD_EXCLUDES = [
    ".git",
    ".venv",
    "**/__pycache__",
    "*.egg-info",
    "mlruns.db",
    "mlartifacts",
    "mlruns",
    "maestro-store",
    "reports",
    ".pytest_cache",
    ".ruff_cache",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with help for each command."""
    parser = argparse.ArgumentParser(
        prog="maestro",
        description="Maestro: RL experiments with language-model feedback, on Ray.",
        epilog="Results: `mlflow ui --backend-store-uri sqlite:///mlruns.db` (the default), "
        "artifacts under ./maestro-store unless MAESTRO_STORE is set.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_spec_args(sub: argparse.ArgumentParser, optional: bool = False) -> None:
        sub.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of a failure",
        )
        sub.add_argument(
            "spec",
            nargs="?" if optional else None,
            help="experiment spec (YAML), e.g. jobs/randomist/lqg.yaml",
        )
        sub.add_argument("--preset", help="named overlay from the spec's presets (smoke, full)")
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override one spec field, e.g. --set config.rounds=500 (repeatable)",
        )

    run = commands.add_parser(
        "run",
        help="run (or resume) an experiment here",
        description="Run an experiment spec with Ray started locally, or on the cluster at "
        "RAY_ADDRESS: prepare, every trial of its `trials:` block (arms x seeds) on Ray Tune, "
        "then the summary and claims. Rerunning the same spec resumes an unfinished run "
        "into the same MLflow runs; a finished one is reported, not repeated.",
    )
    add_spec_args(run)

    submit = commands.add_parser(
        "submit",
        help="submit an experiment to a Ray cluster as a job",
        description="Validate the spec here, upload the project to the cluster with the Ray "
        "Jobs SDK, run `maestro run` there, stream its logs and return its exit status. With "
        "RAY_AUTH_MODE=token the token is sent from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
        "~/.ray/auth_token.",
    )
    add_spec_args(submit)
    submit.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="the cluster's dashboard URL, e.g. http://head:8265 (default: RAY_ADDRESS)",
    )
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")

    sweep = commands.add_parser(
        "sweep",
        help="run the spec's hyperparameter sweep on Ray Tune",
        description="Run the spec's `sweep:` block on Ray Tune (locally, or on the cluster at "
        "RAY_ADDRESS): one MLflow parent run for the sweep, one child run per trial (a point "
        "and seed). Rerunning the same spec resumes an interrupted sweep: finished trials are "
        "not rerun and unfinished ones go on into their own MLflow runs. See docs/sweeps.md.",
    )
    add_spec_args(sweep)
    for sub in (run, sweep):
        sub.add_argument(
            "--new-run",
            action="store_true",
            help="start afresh even if this spec has run (named <name>-2, -3, ...)",
        )

    report = commands.add_parser(
        "report",
        help="plots and an HTML page from a run, a sweep or an experiment",
        description="Make PNG plots (logged to MLflow under report/) and one self-contained "
        "HTML page: for a sweep, learning curves over seeds, the metric against each "
        "hyperparameter, parallel coordinates and a comparison of methods or algorithms.",
    )
    # A spec (with the preset and overrides it ran with): its sweep if it ran, else its run.
    add_spec_args(report, optional=True)
    report.add_argument("--run", dest="run_id", help="an MLflow run id (a sweep's parent too)")
    report.add_argument("--experiment", help="an MLflow experiment: compare its runs")
    report.add_argument("--metric", help="the metric to plot (default: the sweep's)")
    report.add_argument("--mode", choices=["min", "max"], help="whether lower or higher is better")
    report.add_argument(
        "--compare", help="param (or tag) to compare by (default: a categorical swept key)"
    )
    report.add_argument("--output", help="HTML file to write (default: reports/<name>.html)")
    report.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")

    commands.add_parser(
        "doctor",
        help="show what is installed and reachable",
        description="Check Python packages, Ray, MLflow, the artifact store, NLE and GPUs.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `maestro` command."""
    from maestro.tracking import tracking_uri

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("MAESTRO_DEBUG") == "1"
    if args.command != "submit":  # which refuses to forward such a URI to a job
        tracking_uri()  # credentials out of the tracking URI before anything can print it
    try:
        if args.command in ("run", "sweep"):
            return command_experiment(args, args.command)
        if args.command == "submit":
            return command_submit(args)
        if args.command == "report":
            return command_report(args)
        from maestro.doctor import run_doctor

        return run_doctor()
    except SpecError as exc:
        print(f"maestro: spec error: {exc}", file=sys.stderr)
        return 2
    except RuntimeSetupError as exc:
        print(f"maestro: setup error: {exc}", file=sys.stderr)
        return 2
    except SignatureError as exc:
        print(f"maestro: {args.command}: {exc}", file=sys.stderr)
        return 2
    except TrialsFailed as exc:
        print(f"maestro: {args.command}: {exc}", file=sys.stderr)
        return 1
    except ReportError as exc:
        print(f"maestro: {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(
            f"maestro: {args.command}: {failure_line(exc)} (--debug shows where)", file=sys.stderr
        )
        return 1


def failure_line(exc: BaseException) -> str:
    """One line naming what failed: the service and the first line of its error, with
    credentials removed from any URI in it."""
    import re

    from maestro.store import StoreError
    from maestro.tracking import redact_uri

    module = type(exc).__module__.split(".")[0]
    service = {"mlflow": "MLflow", "requests": "MLflow", "urllib3": "MLflow", "ray": "Ray"}
    if isinstance(exc, StoreError):
        what = "store"
    elif module in service:
        what = service[module]
    else:
        what = type(exc).__name__
    message = (str(exc).strip().splitlines() or [""])[0][:300]
    message = re.sub(r"[a-z][a-z0-9+.-]*://\S+", lambda m: redact_uri(m.group(0)), message)
    return f"{what}: {message}" if message else what


def command_experiment(args: argparse.Namespace, kind: str) -> int:
    """`maestro run` and `maestro sweep`."""
    spec = load_spec(args.spec, preset=args.preset, overrides=args.overrides)
    from maestro.run import run_experiment
    from maestro.store import open_store

    try:
        result = run_experiment(spec, kind, new_run=args.new_run)
    except KeyboardInterrupt:
        print(f"{kind} interrupted: run the same command again to continue it")
        return 130
    state = "already finished" if result.already_finished else "finished"
    print(f"{kind} {result.run_name}: {state}")
    print(f"  {'mlflow run id:':<18}{result.mlflow_run_id}")
    print_location(result.mlflow_run_id, open_store(spec.store.uri).uri(result.prefix))
    summary = dict(result.summary)
    best = summary.pop("best", [])
    for key, value in sorted(summary.items()):
        print(f"  {key}: {value:.4g}")
    for line in result.claims:
        print(f"  claim {line}")
    metric = (spec.sweep or {}).get("metric")
    for rank, trial in enumerate(best, 1):
        values = ", ".join(f"{k}={v}" for k, v in trial["params"].items())
        print(f"  best {rank}: {metric}={trial[metric]:.4g}  {values}  {trial.get('run_id', '')}")
    return 1 if summary.get("errored") else 0


def print_location(run_id: str | None, store_uri: str | None = None) -> None:
    """Where results are: MLflow (the tracking URI, how to browse run `run_id`, its MLflow
    artifacts) and, given, the run's folder in the Maestro store (datasets, models,
    checkpoints)."""
    from maestro.tracking import run_location

    lines = run_location(run_id) if run_id else {"mlflow": "tracking off"}
    if store_uri:
        lines["store"] = store_uri
    for label, value in lines.items():
        print(f"  {label + ':':<18}{value}")


def command_report(args: argparse.Namespace) -> int:
    """`maestro report`."""
    targets = [t for t in (args.spec, args.run_id, args.experiment) if t]
    if len(targets) != 1:
        raise ReportError("give one of: a spec, --run RUN_ID, --experiment NAME")
    run_id = args.run_id
    if args.spec:
        run_id = spec_run_id(load_spec(args.spec, preset=args.preset, overrides=args.overrides))
    report = make_report(
        run_id=run_id,
        experiment=args.experiment,
        metric=args.metric,
        mode=args.mode,
        compare=args.compare,
    )
    path = write_report(report, args.output, log=not args.no_log)
    print(f"report: {path.resolve()}")
    if report.log_run_id and not args.no_log:
        print(f"  logged to MLflow run {report.log_run_id} under report/")
    for result in report.claims:
        print(f"  claim {result.line()}")
    for figure in report.figures:
        print(f"  figure: {figure.title}")
    return 0


def spec_run_id(spec) -> str:
    """The MLflow run of a spec that has run: its sweep's parent run if the sweep has
    started, else the run of `maestro run`."""
    from maestro.run import Experiment
    from maestro.store import open_store

    store = open_store(spec.store.uri)
    kinds = ["sweep", "run"] if spec.sweep is not None else ["run"]
    for kind in kinds:
        key = f"{Experiment(spec, kind, spec.run_name()).prefix}/run.json"
        if store.exists(key):
            run_id = store.get_json(key).get("mlflow_run_id")
            if not run_id:
                raise ReportError(f"{spec.source}: it ran with tracking off: nothing to report")
            return run_id
    raise ReportError(f"{spec.source}: this spec has not run yet (no state in {store.root})")


def project_root(start: Path) -> Path:
    """The folder holding pyproject.toml above `start` (else the working directory)."""
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / "pyproject.toml").is_file():
            return folder
    return Path.cwd().resolve()


def command_submit(args: argparse.Namespace) -> int:
    """`maestro submit`."""
    spec_path = Path(args.spec)
    load_spec(spec_path, preset=args.preset, overrides=args.overrides)  # fail here, not there
    if not args.address:
        raise RuntimeSetupError("no cluster address: pass --address or set RAY_ADDRESS")
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from maestro.tracking import redact_uri

    root = project_root(spec_path.parent)
    entrypoint = [
        "python",
        "-m",
        "maestro",
        "run",
        spec_path.resolve().relative_to(root).as_posix(),
    ]
    if args.preset:
        entrypoint += ["--preset", args.preset]
    for item in args.overrides:
        entrypoint += ["--set", item]
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    uri = env_vars.get("MLFLOW_TRACKING_URI", "")
    if uri and redact_uri(uri) != uri:
        raise RuntimeSetupError(
            "MLFLOW_TRACKING_URI holds credentials; keep them in MLFLOW_TRACKING_USERNAME/"
            "PASSWORD on the cluster instead"
        )
    runtime_env = {
        "working_dir": str(root),
        "excludes": UPLOAD_EXCLUDES,
        "py_modules": [str(root / "platform" / "maestro")]
        if (root / "platform" / "maestro").is_dir()
        else [],
        "env_vars": env_vars,
    }
    try:
        client = JobSubmissionClient(args.address)
    except AuthenticationError as exc:
        first = str(exc).splitlines()[0]
        raise RuntimeSetupError(f"the cluster at {args.address} refused us: {first}") from None
    except ConnectionError as exc:
        raise RuntimeSetupError(f"cannot reach the cluster at {args.address}: {exc}") from None
    job_id = submit_when_agent_ready(
        client, entrypoint=shlex.join(entrypoint), runtime_env=runtime_env
    )
    print(f"submitted job {job_id} to {args.address}: {shlex.join(entrypoint)}", flush=True)
    if args.no_wait:
        return 0

    async def stream_logs() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(stream_logs())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (ray job stop {job_id})", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    print(f"job {job_id}: {info.status.value} ({info.message})")
    if info.status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


def submit_when_agent_ready(client, wait_s: float = JOB_AGENT_WAIT_S, **job) -> str:
    """`client.submit_job(**job)`, waiting up to `wait_s` while the cluster answers that its
    job agent is not ready (a head node that has just started does so for a while; nothing
    is submitted by such an answer, so asking again cannot duplicate the job)."""
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise RuntimeSetupError(
                    f"the cluster's job agent was not ready after {wait_s:.0f}s: is the "
                    "dashboard agent running on the head node? (`ray status` there)"
                ) from None
            if not waiting:
                print(
                    f"the cluster's job agent is not ready yet; waiting up to {wait_s:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
                waiting = True
            time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
