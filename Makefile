# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint docs bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	# The engine's C++ kernels, built once into ~/.cache/hdetach-study/kernels (about 15 s);
	# where they cannot be built this says why and the engine uses its PyTorch path.
	-$(PY) -m trainables.kernels
	touch $(STAMP)

# The main job on the embedded default (local Ray, sqlite:///mlflow.db): a copying ladder at
# reduced scale (delays T = 5, 10, 20 with the smoke budget; vanilla and h-detach p=0.25 on the
# same 6 seeds each, trained together as members of one trial), then one report over the three
# studies, whose claims C1-C3 get verdicts at this scale. Each run makes new experiments, so
# the command can be repeated.
DEMO := demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_DELAYS := 5 10 20
demo: $(STAMP)
	for T in $(DEMO_DELAYS); do \
		$(VENV)/bin/hdetach-study run --task copying --preset smoke --search grid \
			--p-values 0.25 --lr-values 0.01 --clip-values true --trials 1 --seeds 6 \
			--seeds-per-trial 6 --set seq_len=$$T --experiment $(DEMO)-T$$T || exit 1; \
	done
	$(VENV)/bin/hdetach-study report $(foreach T,$(DEMO_DELAYS),--experiment $(DEMO)-T$(T))

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	$(FAST_TESTS)
	$(VENV)/bin/pytest -m slow

# The quick tests in two processes, each test file in one of them, so that both of CI's two cores
# work; the slow end-to-end tests run one at a time after them: each starts Ray studies that use
# every core, and their fault tests time kills against the trials' epochs.
FAST_TESTS := $(VENV)/bin/pytest -m 'not slow' -n 2 --dist loadfile

test-fast: $(STAMP)
	$(FAST_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The docs site (mkdocs.yml, docs/) into site/; --strict: a broken link or missing page fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
