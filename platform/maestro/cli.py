"""`maestro`: run experiment specs locally, submit them to a Ray cluster, check the setup.

    maestro run SPEC [--preset P] [--set key.path=value ...]
    maestro submit SPEC --address http://HEAD:8265 [--preset P] [--set ...] [--no-wait]
    maestro doctor

Exit codes: 0 success; 1 the experiment (or job) failed; 2 bad spec, override or setup.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

from maestro.runtime import RuntimeSetupError
from maestro.spec import SpecError, load_spec

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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_spec_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("spec", help="experiment spec (YAML), e.g. jobs/randomist/lqg.yaml")
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
        "RAY_ADDRESS. Rerunning the same spec resumes an unfinished run into the same MLflow "
        "run; a finished one is reported, not repeated.",
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

    commands.add_parser(
        "doctor",
        help="show what is installed and reachable",
        description="Check Python packages, Ray, MLflow, the artifact store, NLE and GPUs.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `maestro` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "submit":
            return command_submit(args)
        from maestro.doctor import run_doctor

        return run_doctor()
    except SpecError as exc:
        print(f"maestro: spec error: {exc}", file=sys.stderr)
        return 2
    except RuntimeSetupError as exc:
        print(f"maestro: setup error: {exc}", file=sys.stderr)
        return 2


def command_run(args: argparse.Namespace) -> int:
    """`maestro run`."""
    spec = load_spec(args.spec, preset=args.preset, overrides=args.overrides)
    from maestro.run import run_experiment

    result = run_experiment(spec)
    state = "already finished" if result.already_finished else "finished"
    print(f"run {result.run_name}: {state}")
    print(f"  mlflow run id: {result.mlflow_run_id}")
    from maestro.store import open_store

    print(f"  artifacts:     {open_store(spec.store.uri).uri(result.prefix)}")
    for key, value in sorted(result.summary.items()):
        print(f"  {key}: {value:.4g}")
    return 0


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
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env)
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


if __name__ == "__main__":
    sys.exit(main())
