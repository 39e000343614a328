# nightshift — the README's commands. Everything installs into .venv/ from pinned packages.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_INSTALL := $(UV) pip install --quiet --python $(PY) -c constraints.txt
# Bytecode once, at install: uv writes none, and where PYTHONDONTWRITEBYTECODE is set (as on these machines)
# every Python process (each Airflow task, each CLI) compiles Airflow, pandas and the rest again: 13 s of
# the unit tier's 26-s collection. Files already compiled are skipped.
COMPILE := $(PY) -m compileall -q -j 0 $(VENV)/lib/python3.11/site-packages >/dev/null

.PHONY: install install-test chromium demo backtest test test-fast test-nights lint-imports airflow nights bench bench-serving bench-s3 bench-executors bench-monitor bench-predict lint format lock clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"nightshift needs Python 3.11, found {sys.version.split()[0]}; set PYTHON=/path/to/python3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==0.13.9
	$(UV_INSTALL) -r requirements.txt
	$(COMPILE)
	touch $@

install-test: $(VENV)/.installed-test chromium

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(UV_INSTALL) -r requirements.txt -r requirements-test.txt
	$(COMPILE)
	touch $@

## The browser tests drive Debian's chromium (Playwright's own browser download needs the internet).
CHROMIUM ?= /usr/bin/chromium
APT := DEBIAN_FRONTEND=noninteractive apt-get -y -q
chromium:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && { $(APT) install chromium || { $(APT) update && $(APT) install chromium; }; } >/dev/null; } \
	  || { echo "make: the browser tests need Debian's chromium: sudo apt-get install chromium (or set CHROMIUM=/path)"; exit 1; }

## The main command: embedded Postgres (or DATABASE_URL), migrations, settings, feast apply, the pipeline.
demo: install
	bin/nightshift demo

## The rolling backtest: 4 test weeks across 2013 with the nightly budget, against GBDT (writes .local/backtest/).
## It ingests the windows' days, so it keeps its own embedded Postgres and lake under .local/backtest/.
backtest: install
	NIGHTSHIFT_LOCAL_DIR=$${NIGHTSHIFT_LOCAL_DIR:-$(CURDIR)/.local/backtest} bin/nightshift backtest

## The test command (CI runs exactly this): lint, the import-linter contracts, then every tier.
test: install-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	NIGHTSHIFT_CHROMIUM=$(CHROMIUM) $(PY) -m pytest

## The unit tier: no Postgres, no Airflow metadata database, no servers, no slow-marked test (under a minute).
test-fast: $(VENV)/.installed-test
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not integration and not ui and not slow" -p no:cacheprovider tests/unit tests/dags

## The nights harness's 3-night run with the postgres, promote and landing faults, alone (make test runs it too).
test-nights: $(VENV)/.installed-test
	$(PY) -m pytest -m nights -p no:cacheprovider tests/integration/test_nights.py

## The layers of include/ (pyproject.toml [tool.importlinter], docs/architecture.md).
lint-imports: $(VENV)/.installed-test
	$(VENV)/bin/lint-imports

## The full Airflow on the same Postgres, UI on http://127.0.0.1:8080.
airflow: install
	bin/nightshift airflow

lint: install-test
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: install-test
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

## Re-lock every transitive package after editing requirements*.txt.
lock: install
	$(UV) pip compile requirements.txt requirements-test.txt --python-version 3.11 --no-header --no-annotate -o constraints.txt
	sed -i '1i # Lock file: every package, exact. Regenerate with "make lock" after editing requirements*.txt.' constraints.txt

clean:
	-bin/nightshift db stop
	rm -rf .local

## Time the ingest DAG for 1 and 90 days (writes .local/bench/ingest.json).
bench: install
	PYTHONPATH=. $(PY) -m benchmarks.ingest

## Local serving latency and throughput next to direct SavedModel calls (after `make demo`).
bench-serving: install
	PYTHONPATH=. $(PY) -m benchmarks.serving

## The prediction service under wrk: 1 and 100 flights a request, log on and off, in-process ratio (after `make demo`).
bench-predict: install
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && { $(APT) install wrk || { $(APT) update && $(APT) install wrk; }; } >/dev/null; } \
	  || { echo "make: bench-predict needs Debian's wrk: sudo apt-get install wrk"; exit 1; }
	PYTHONPATH=. $(PY) -m benchmarks.predict

## The demo on an s3:// lake (moto on loopback) and on the file lake, one after the other (writes .local/bench/s3_demo.json).
bench-s3: install-test
	PYTHONPATH=. $(PY) -m benchmarks.s3_demo

## 3 nights on LocalExecutor, then on CeleryExecutor, one after the other (writes .local/bench/executors.json).
bench-executors: install-test
	PYTHONPATH=. $(PY) -m benchmarks.executors

## Evidently report time for 1k, 10k, 100k and 1M rows (after `make demo`).
bench-monitor: install
	PYTHONPATH=. $(PY) -m benchmarks.monitor

## 14 nights of the chain under the real scheduler, with every fault (writes .local/nights/report.json).
NIGHTS ?= 14
FAULTS ?= postgres,scheduler,promote,serving,landing,channels,disk
nights: install
	bin/nightshift nights --nights $(NIGHTS) --faults $(FAULTS)
