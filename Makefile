# Two entry points (see README): `make demo` and `make test`. Both install first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench docs

# torch goes in first and pinned: a bare `torch` requirement would pull GPU wheels on machines
# that have only a CPU build available.
# Fashion-MNIST ships as a Debian package; install it where we can (root with apt), else its tests skip.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) \
	  >/dev/null 2>&1 || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; fi
	$(PIP) install --quiet -e ".[test,mnist,gurobi]"

demo: install
	$(PYTHON) -m provrepair demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/point_repair.py

# API reference (pdoc) and the task guides as static HTML under docs/_build/; any warning fails.
docs: install
	$(PIP) install --quiet -e ".[docs]"
	$(PYTHON) docs/build.py
