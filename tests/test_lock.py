"""requirements.lock (made by `make lock`) agrees with pyproject.toml, and every install
path (the Makefile, CI, the Docker images) installs through it."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import REPO

# The platform the lock is made for (Makefile, `make lock`).
LOCK_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def locked() -> dict[str, Version]:
    """Package name -> pinned version, from requirements.lock."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and those of every extra, for the lock's platform."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(LOCK_ENVIRONMENT)]


def test_every_requirement_of_pyproject_is_pinned_in_the_lock_within_its_range():
    pins = locked()
    assert len(pins) > 100  # the whole tree, not only the direct requirements
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]} outside pyproject's {requirement}: "
            "run `make lock`"
        )


def test_the_lock_pins_torch_without_a_local_label():
    # One line for both builds: the CPU wheel on these machines, the CUDA one in the image.
    assert str(locked()["torch"]) == "2.13.0"


def test_every_install_goes_through_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "PIP_INSTALL := $(PYTHON) -m pip install -q -c $(LOCK)" in makefile
    assert makefile.count("pip install") == 1  # every install is a $(PIP_INSTALL)
    for dockerfile in sorted((REPO / "docker").glob("Dockerfile.*")):
        text = dockerfile.read_text().replace("\\\n", " ")  # continued lines as one
        for command in re.findall(r"pip install ([^\n&]+)", text):
            if "--no-deps -e ./maestro" in command:
                continue
            assert re.search(r"-c \S*requirements\.lock", command), (dockerfile.name, command)
    assert "make test" in (REPO / ".ci" / "run").read_text()
