# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default (local Ray, sqlite:///mlflow.db): a copying smoke
# study (two h-detach configurations and their paired vanilla baseline, 3 seeds each), then
# its report. Each run is a new experiment, so the command can be repeated.
DEMO_EXPERIMENT := demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(PY) study/run.py --task copying --preset smoke --search grid \
		--p-values 0.25,0.5 --lr-values 0.01 --clip-values true --trials 2 --seeds 3 \
		--experiment $(DEMO_EXPERIMENT)
	$(VENV)/bin/hdetach-study report --experiment $(DEMO_EXPERIMENT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m 'not slow'

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
