# Two commands for a fresh machine: `make run` and `make test`.
#
# Both install exactly what uv.lock pins (uv itself is pinned below and comes
# from PyPI), so a fresh machine runs the versions the suite last passed with.
# Upgrading is deliberate: `make test-latest` runs the suite on the newest
# releases the ranges in pyproject.toml allow, `make lock-upgrade` moves the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.9
LATEST := .venv-latest

# uv installs into .venv with the machine's Python; it never downloads one.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test test-latest lock lock-upgrade lint typecheck unit integration clean browser js

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# --locked: fail, rather than quietly re-resolve, when pyproject.toml and
# uv.lock disagree (run `make lock` after changing a dependency).
$(STAMP): pyproject.toml tools/pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --python $(PYTHON)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/hourglass up --demo --bucket 1m

lint: $(STAMP)
	$(BIN)/ruff check src tools tests bench
	$(BIN)/ruff format --check src tools tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers (pytest-xdist): most tests wait on processes, sockets and clocks,
# not the CPU. --dist loadgroup keeps each group of tests/groups.py on one
# worker: the tests that assert on time never run two at once. PYTEST_ARGS: more
# for pytest, e.g. `make test PYTEST_ARGS=--durations=80`.
PYTEST_WORKERS ?= 2
test: lint typecheck browser js
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=15 $(PYTEST_ARGS)

# The browser SDK: its npm packages exactly as sdk/js/package-lock.json pins
# them, its type check, its build (dist/, which the page tests load) and its
# Node tests. Node.js and npm are the machine's (Debian's when missing).
JS := sdk/js
$(JS)/node_modules/.installed: $(JS)/package.json $(JS)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing Debian's nodejs and npm for the browser SDK"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm; }
	cd $(JS) && npm ci --no-audit --no-fund
	touch $@

js: $(JS)/node_modules/.installed
	cd $(JS) && npm test

# The page tests drive Debian's chromium (tests/integration/browser.py); it is
# installed from Debian's packages when missing (as root, or with sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the page tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

# The suite against the newest releases, in a venv of its own; the lock is untouched.
test-latest: | $(UV)
	$(UV) venv --quiet --clear --python $(PYTHON) $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade -e '.[dev]' -e ./tools
	$(LATEST)/bin/mypy
	$(LATEST)/bin/pytest -q

lock: | $(UV)
	$(UV) lock --python $(PYTHON)

lock-upgrade: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

clean:
	rm -rf $(VENV) $(LATEST) $(TOOLS) hourglass-data .pytest_cache .mypy_cache .ruff_cache $(JS)/node_modules $(JS)/dist
