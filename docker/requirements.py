"""Print requirement lines from pyproject.toml, so the images install exactly the versions
the project pins (pyproject.toml is the one place versions live).

    python requirements.py [EXTRA ...]           # the dependencies, plus those extras
    python requirements.py --only NAME[EXTRAS]   # one package's requirement, e.g. torch

`--pyproject PATH` reads another file (default: the pyproject.toml beside this script, as
copied into an image, else the repository's).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)")


def default_pyproject() -> Path:
    """The pyproject.toml beside this script (in an image), else the repository's."""
    folder = Path(__file__).resolve().parent
    beside = folder / "pyproject.toml"
    return beside if beside.is_file() else folder.parent / "pyproject.toml"


def normalise(name: str) -> str:
    """A package name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The project's dependencies followed by those of each named extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    missing = [extra for extra in extras if extra not in optional]
    if missing:
        raise ValueError(
            f"{pyproject}: no extra {', '.join(missing)} (have: {', '.join(optional)})"
        )
    lines = list(project["dependencies"])
    for extra in extras:
        lines += optional[extra]
    return lines


def only(pyproject: Path, wanted: str) -> str:
    """The requirement of one package (from the dependencies or any extra), with the extras
    asked for in `wanted` (`mlflow[auth]` -> `mlflow[auth]==<pinned version>`)."""
    name, want_extras, _ = NAME.fullmatch(wanted).groups()
    project = tomllib.loads(pyproject.read_text())["project"]
    every = list(project["dependencies"])
    for lines in project.get("optional-dependencies", {}).values():
        every += lines
    for line in every:
        found, _, rest = NAME.fullmatch(line).groups()
        if normalise(found) == normalise(name):
            return f"{found}{want_extras or ''}{rest}"
    raise ValueError(f"{pyproject}: {name} is not a dependency")


def main(argv: list[str] | None = None) -> int:
    """Print the requirements asked for; exit 2 naming what is missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="extras to add to the dependencies")
    parser.add_argument("--only", action="append", default=[], metavar="NAME[EXTRAS]")
    parser.add_argument("--pyproject", type=Path, default=None)
    args = parser.parse_args(argv)
    pyproject = args.pyproject or default_pyproject()
    try:
        if args.only:
            lines = [only(pyproject, name) for name in args.only]
        else:
            lines = requirements(pyproject, args.extras)
    except ValueError as exc:
        print(f"requirements.py: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
