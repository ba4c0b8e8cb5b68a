# `make demo`: set up and run the demo. `make test`: set up and run the test suite (CI runs this).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench rtl-tools clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: setup
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q

demo: setup
	$(VENV)/bin/wageubn-sim demo --out wageubn-demo --force

# Icarus Verilog for the RTL testbench (tests/test_rtl.py skips without it; CI requires it).
rtl-tools:
	command -v iverilog >/dev/null || (apt-get update -qq && apt-get install -y -qq iverilog)

bench: setup
	$(PY) tools/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
