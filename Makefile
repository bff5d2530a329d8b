# Two commands do all the set-up on a fresh machine: `make run` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NPROC  ?= 10
K      ?= 4
ARGS   ?=

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: the CPU wheel, not a multi-GB CUDA build
	$(PY) -m pip install -q -e '.[smax,test]'
	touch $(STAMP)

.PHONY: install run test bench
install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/decnode-run --nproc $(NPROC) --k $(K) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/comm.py
	$(PY) benchmarks/env.py
	$(PY) benchmarks/iteration.py
