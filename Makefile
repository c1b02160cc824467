# make demo: the whole pipeline on the embedded default (local processes, nano, sqlite, ./.herd)
# make test: the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export HERD_HOME ?= $(CURDIR)/.herd

.PHONY: install corpus demo test plan bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[airflow,train,dev]'
	touch $@

install: $(VENV)/.installed

corpus: install
	$(PY) -m tasks.cli corpus fetch

demo: corpus
	$(PY) -m tasks.demo $(ARGS)

plan: install
	$(PY) -m tasks.cli plan $(ARGS)

# Up to two pytest-xdist workers, one a core (each process on one torch thread, see tests/conftest.py); a file's
# tests stay on one worker, so its module fixtures are built once; the longest files start first.
# TEST_WORKERS=0: one process, as before.
TEST_WORKERS ?= auto
test: install
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --maxprocesses=2 --dist loadfile --no-loadscope-reorder \
		$(PYTEST_ARGS)

bench: install
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PY) bench/datamix_throughput.py $(ARGS)

clean:
	rm -rf $(HERD_HOME)

# make stack: the docker-compose stack (PostgreSQL, MinIO, MLflow, Airflow 3) where Docker runs;
# secrets from .env (see .env.example). make images: the three images the Helm chart deploys.
.PHONY: stack stack-down images
COMPOSE ?= docker compose
REVISION = $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

stack: corpus
	@test -f .env || { echo "make stack: copy .env.example to .env and replace its values"; exit 1; }
	@if grep -q '=change-me' .env; then echo "make stack: .env still holds change-me values"; exit 1; fi
	HERD_CORPUS_DIR=$(HERD_HOME)/corpus HERD_REVISION=$(REVISION) $(COMPOSE) up --build --detach --wait

stack-down:
	$(COMPOSE) down

images:
	docker build -f images/trainer/Dockerfile --build-arg HERD_REVISION=$(REVISION) -t herd-trainer:0.1.0 .
	docker build -f images/airflow/Dockerfile --target airflow --build-arg HERD_REVISION=$(REVISION) -t herd-airflow:0.1.0 .
	docker build -f images/mlflow/Dockerfile --build-arg HERD_REVISION=$(REVISION) -t herd-mlflow:0.1.0 .
