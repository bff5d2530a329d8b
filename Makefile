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

# The XLA placement (issue #15) lives in its own venv: torch_xla 2.9.0 loads only with torch 2.9.0, and the main
# venv pins torch 2.13.0. PyPI's torch 2.9.0 is the CUDA build; --no-deps leaves out its nvidia-* and triton
# wheels (≈ 4 GB) that CPU XLA devices never load, so its pure-Python deps are listed by hand.
XVENV  ?= .venv-xla
XPY    := $(XVENV)/bin/python
XSTAMP := $(XVENV)/.installed-stamp

$(XSTAMP): pyproject.toml
	python3 -m venv $(XVENV)
	$(XPY) -m pip install -q --upgrade pip
	$(XPY) -m pip install -q --no-deps torch==2.9.0
	$(XPY) -m pip install -q torch_xla==2.9.0 filelock typing-extensions sympy networkx jinja2 fsspec \
		'numpy>=1.26' 'pyyaml>=6.0' 'tqdm>=4.66' 'pytest>=8' 'pytest-timeout>=2.3'
	$(XPY) -m pip install -q --no-deps -e .
	touch $(XSTAMP)

.PHONY: install run test bench install-xla test-xla
install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/decnode-run --nproc $(NPROC) --k $(K) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

install-xla: $(XSTAMP)

# 4 XLA devices on the CPU in one process, one thread per device; the pool must hold all four device threads
# even on a 2-core host, or a collective waits on a device that never runs.
test-xla: $(XSTAMP)
	PJRT_DEVICE=CPU CPU_NUM_DEVICES=4 XLA_THREAD_POOL_SIZE=8 $(XPY) -m pytest -q -p no:cacheprovider tests/xla

bench: $(STAMP)
	$(PY) benchmarks/comm.py
	$(PY) benchmarks/env.py
	$(PY) benchmarks/iteration.py
