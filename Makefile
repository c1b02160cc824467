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
	$(PY) -m herd_airflow.demo $(ARGS)

plan: install
	$(PY) -m tasks.cli plan $(ARGS)

test: install
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: install
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PY) bench/datamix_throughput.py $(ARGS)

clean:
	rm -rf $(HERD_HOME)
