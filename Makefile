# Two commands on a fresh machine: `make run` and `make test`. Both set up first (idempotent).
.PHONY: setup run test lint format bench clean

VENV := .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m app --camera sim --arm sim --model builtin

# The slow tests (the 50-episode oracle run, the SIGKILL recovery) add ~30 s, so `make test` runs
# everything but the hardware tests; a bare `pytest` skips the slow ones for quick iteration.
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not hardware"

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

bench: setup
	$(PY) -m rt2_cot bench --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
