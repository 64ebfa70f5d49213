# Everything runs from the project's own virtualenv in .venv. Targets that are already done
# cost a file-time comparison: the stamps inside .venv are newer than pyproject.toml.

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# python3.11 when there is one, else python3 (checked below to be 3.11 or newer).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
PYTEST_ARGS ?=

.PHONY: .venv install install-test install-bench deps test run bench bench-quick bench-http bench-hello bench-hello-quick bench-sessions clean

.venv: $(PY)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fcgi-cluster needs Python 3.11 or newer, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	@touch $@

install-test: $(VENV)/.installed-test

# The test extra includes the package itself, so it also satisfies `install`.
$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

deps:
	bash scripts/install-deps.sh

test: install-test deps
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole cluster on this machine: the front-end on 127.0.0.1:8080 and two worker pools
# (127.0.0.1:9001, 127.0.0.1:9002) from workers/cluster.toml. Ctrl-C stops everything.
run: install
	$(VENV)/bin/fcgi-cluster up -c workers/cluster.toml

install-bench: $(VENV)/.installed-bench

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[bench]'
	@touch $@ $(VENV)/.installed

# The benchmark suite (benchmarks/suite.py): every part, our stack beside nginx, HAProxy, uWSGI,
# gunicorn, granian, php-fpm and flup in one run; results in benchmarks/results/<UTC timestamp>/.
# BENCH_OUT moves them elsewhere.
BENCH_OUT ?= benchmarks/results

bench: install-bench deps
	$(PY) benchmarks/suite.py --out $(BENCH_OUT)

bench-quick: install-bench deps
	$(PY) benchmarks/suite.py --quick --out $(BENCH_OUT)

bench-http: install-bench deps
	$(PY) benchmarks/end_to_end.py

# The headline alone (benchmarks/hello_world.py): workers/hello.py through ours as shipped,
# nginx -> uWSGI, nginx -> gunicorn, granian, nginx -> php-fpm hello.php.
bench-hello: install-bench deps
	$(PY) benchmarks/hello_world.py --out $(BENCH_OUT)

bench-hello-quick: install-bench deps
	$(PY) benchmarks/hello_world.py --quick --out $(BENCH_OUT)

# Sessions in Redis under wrk (benchmarks/sessions.py): ours vs nginx -> php-fpm + phpredis.
bench-sessions: install-bench deps
	$(PY) benchmarks/sessions.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
