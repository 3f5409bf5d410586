# One command each: `make demo` runs the whole pipeline on the demo dataset, `make test` runs the tests.
# Both create the virtual environment (.venv) on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export NO_ALBUMENTATIONS_UPDATE := 1
# mkdocs-material's banner about its successor, printed at every build
export NO_MKDOCS_2_WARNING := 1

.PHONY: install test fuzz demo docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade "pip>=24"
	$(BIN)/pip install -e ".[dev,docs]"
	touch $(STAMP)

test: install
	$(BIN)/hadolint Dockerfile
	$(BIN)/ruff check gaugan pipeline bench tests docs/ext
	$(BIN)/ruff format --check gaugan pipeline bench tests docs/ext
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --site-dir .cache/site
	$(BIN)/python -m pytest -q

# The generated-input tests (docs/robustness.md) with more cases than make test's and a new seed each run
FUZZ_TESTS = tests/test_params_fuzz.py tests/test_app_schema.py tests/test_serving.py \
	tests/test_ingest_fuzz.py tests/test_checkpoint_fuzz.py
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --hypothesis-show-statistics $(FUZZ_TESTS)

demo: install
	$(BIN)/gaugan-pipeline demo

# The documentation (docs/, mkdocs.yml), served with live reload on this machine only
docs: install
	$(BIN)/mkdocs serve -a 127.0.0.1:8000

# The benchmarks that need no arguments; the others (quality, reference_step: an NVlabs/SPADE
# checkout; scale, retrain, promotion: long runs) are run by hand as docs/benchmarks.md says.
bench: install
	$(BIN)/pip install -e ".[dev,bench]"
	for b in train_step train_throughput ingest evaluate app; do $(BIN)/python -m bench.$$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
