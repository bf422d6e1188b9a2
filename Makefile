# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV    ?= .venv
PYTHON  ?= python3
STAMP   := $(VENV)/.sparsec-installed
OUT     ?= out/demo

.PHONY: demo test lint clean

# torch is installed first and pinned: the CPU build of 2.13.0 lies on this machine's disk;
# an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml $(wildcard setup.py) $(wildcard kernels/src/*)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	# An editable install compiles none of our modules, and with PYTHONDONTWRITEBYTECODE set
	# every `sparsec` run compiled ~180 of them again (0.15 s of each command's start).
	$(VENV)/bin/python -m compileall -q -j 0 sparsec passes backends kernels models_zoo > /dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sparsec compile --demo -o $(OUT)

# Two pytest-xdist workers, one test file each at a time (module fixtures are built once):
# 21.5 -> 17 min on 2 cores, as many tests are single-threaded Python (exports, graph edits).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff check sparsec passes backends kernels models_zoo tests bench

clean:
	rm -rf $(VENV) out build *.egg-info
