# The two commands of the README. Each creates the isolated environment .venv/ in the repo when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test quick env clean-demo

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

## demo: generate the synthetic concept world, train its CNN, dissect it (outputs/netdissect_synthetic/)
demo: $(STAMP)
	$(PY) trainer_cli.py fit --config configs/synthetic_classifier.yaml
	$(PY) trainer_cli.py predict --config configs/netdissect_synthetic.yaml

## test: the test suite; the two-process (ddp) tests run in a pytest process of their own, so no state left by an
## in-process test (threads, process groups, hooks) can reach the processes they spawn
test: $(STAMP)
	$(PY) -m pytest -q -m "not ddp" tests
	$(PY) -m pytest -q -m ddp tests

## quick: the suite without the two-process (ddp) and slow tests
quick: $(STAMP)
	$(PY) -m pytest -q -m "not ddp and not slow" tests

clean-demo:
	rm -rf outputs data/synthetic_world
