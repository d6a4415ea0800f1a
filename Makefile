# Gantry — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
GATEWAY_PORT ?= $(shell expr $(PORT) + 1)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint format bench install install-dev migrate clean images

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	$(BIN)/python manage.py migrate --noinput

## The portal, a Celery worker and celery beat on the embedded default (Ctrl-C or a SIGTERM
## to make stops all, engines included).
# `exec`: make forwards a SIGTERM to its child only, so honcho must be that child (a shell
# in between would die and leave honcho and everything under it running). GANTRY_INSTANCE
# tags every process of this run, engines included, so the local-pool guard in the
# Procfile stops exactly this run's engines.
run: migrate
	$(BIN)/python manage.py demo
	@echo ""
	@echo "  Gantry is starting on http://$(HOST):$(PORT)/"
	@echo "  OpenAI-compatible gateway: http://$(HOST):$(GATEWAY_PORT)/v1"
	@echo "  Sign in as demo / gantry-demo — Ctrl-C stops the web server, gateway, worker and beat."
	@echo ""
	exec env GANTRY_INSTANCE="$${GANTRY_INSTANCE:+$$GANTRY_INSTANCE/}run-$$$$" \
	GANTRY_BIND=$(HOST):$(PORT) SITE_URL=http://$(HOST):$(PORT) \
	GANTRY_GATEWAY_HOST=$(HOST) GANTRY_GATEWAY_PORT=$(GATEWAY_PORT) \
	GATEWAY_URL=http://$(HOST):$(GATEWAY_PORT) $(BIN)/honcho start -f Procfile

## The whole suite (real services where present; CI=true makes them mandatory).
test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## ruff (with the bandit and datetime rule sets), mypy on the service layers, Django's
## system checks and a check that no model change lacks its migration.
MYPY_TARGETS = $(sort $(wildcard */services.py */services/*.py */selectors.py */access.py))
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(MYPY_TARGETS)
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install-dev
	@set -e; for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf var/celery var/static

## Engine images for the docker driver, built locally (needs a Docker engine).
images: install
	bash scripts/build-engine-images.sh
