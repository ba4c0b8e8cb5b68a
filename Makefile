# `make demo`: set up and run the demo. `make test`: set up and run the test suite (CI runs this).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: setup
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q

demo: setup
	$(VENV)/bin/wageubn-sim demo --out wageubn-demo --force

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
