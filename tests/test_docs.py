"""The repository's own text cites only what the repository holds."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from maestro.methods import MODULES

REPO = Path(__file__).resolve().parents[1]
# Spelled in two parts so that this file does not cite it itself.
PLANNING_NOTE = "METHODS" + ".md"


def repository_files() -> list[Path]:
    """Files git tracks, plus new ones it does not ignore."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = (REPO / name for name in listed.decode().split("\0") if name)
    return [path for path in paths if path.is_file()]


def test_no_file_cites_the_planning_note():
    """A planning note outside the repository is no reference for a reader: cite the paper
    (authors, year, arXiv id) and `docs/methods/<name>.md` instead."""
    citing = [
        str(path.relative_to(REPO))
        for path in repository_files()
        if PLANNING_NOTE.encode() in path.read_bytes()
    ]
    assert citing == []


def test_cited_method_pages_exist():
    """Every `docs/methods/<name>.md` named anywhere exists, and every registered method
    has its page."""
    pattern = re.compile(rb"docs/methods/([a-z0-9_]+)\.md")
    cited = {
        match.decode(): str(path.relative_to(REPO))
        for path in repository_files()
        for match in pattern.findall(path.read_bytes())
    }
    missing = {
        name: by
        for name, by in cited.items()
        if not (REPO / "docs/methods" / f"{name}.md").is_file()
    }
    assert missing == {}
    assert [name for name in MODULES if not (REPO / "docs/methods" / f"{name}.md").is_file()] == []
