# Set-up and everyday commands.  `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
C_SOURCES := $(wildcard _tarsum/*.c _tarsum/*.h)

.PHONY: run test test-fast typecheck bench fuzz system-deps clean

$(STAMP): pyproject.toml setup.py build_ext.py $(C_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the real-client tests need (docker.io, skopeo, podman,
# the reference registry, redis).  Idempotent; a no-op once installed.
system-deps:
	bash scripts/install-system-deps.sh

run: $(STAMP)
	mkdir -p var/registry
	$(VENV)/bin/twistd -n --pidfile var/twistd.pid registry

test: $(STAMP) system-deps typecheck
	$(PY) -m pytest -q tests

# mypy + mypy-zope over registry/ and twisted/plugins ([tool.mypy] in pyproject.toml).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not clients" tests

# Options passed on to the sections, e.g. BENCH_ARGS="--soak-minutes 1" (versus reads them).
BENCH_ARGS ?=

bench: $(STAMP)
	$(PY) -m registry.bench all $(BENCH_ARGS)

fuzz:
	bash fuzz/run.sh

clean:
	rm -rf build *.egg-info registry/_hashing*.so registry/_hashing.c
