# The two commands a newcomer needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench deps clients lock

# requirements.lock pins the runtime, the `sandbox` extra (moto[server], which `make run`'s
# --local-cloud needs) and the `test` extra: `make run` and `make test` both get all three.
$(VENV)/.installed: requirements.lock pyproject.toml setup.py proxy/_frames.c proxy/_relay.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

deps: $(VENV)/.installed
	bash scripts/ensure-postgres.sh

run: deps
	$(VENV)/bin/iasql serve --local-cloud

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# pgjdbc, a headless JRE and node-postgres, for tests/test_clients.py
clients:
	bash scripts/ensure-clients.sh

# The suite's tests mostly wait (on moto, on timeouts of faults they inject): three workers,
# each with its own Postgres cluster and iasql server, one test file per worker at a time.
TEST_WORKERS ?= 3
# The suite runs with the native data plane where it was built (--relay auto); then the relay's
# own test files run again with every session on the asyncio relay (IASQL_RELAY=python). The
# second pass is left out when PYTEST_ARGS picks tests.
RELAY_TESTS := tests/test_relay.py tests/test_interception.py tests/test_nested_calls.py \
	tests/test_clients.py tests/test_fuzz.py tests/test_connection_abuse.py tests/test_tls.py
test: deps clients lint
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
ifeq ($(PYTEST_ARGS),)
	IASQL_RELAY=python $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile $(RELAY_TESTS)
endif

# Re-resolves requirements.lock from pyproject.toml (newest allowed versions), in a temporary venv.
lock:
	bash scripts/lock.sh

bench: deps
	bash scripts/ensure-postgres.sh pgbouncer
	$(PY) bench/proxy_overhead.py
