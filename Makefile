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
	# the C++ GRU kernel, compiled once here (~11 s) rather than by the first job's processes
	$(PY) -m decnode.nn.native
	touch $(STAMP)

# The XLA placement (issue #15) lives in its own venv: torch_xla 2.9.0 loads only with torch 2.9.0, and the main
# venv pins torch 2.13.0. PyPI's torch 2.9.0 is the CUDA build and its libtorch_cpu.so itself links libcudart and
# libcupti, so the nvidia-* wheels must be there even on CPU; only triton (a GPU compiler, never loaded by CPU
# XLA devices) is left out: torch goes in with --no-deps, then its own requirement list minus triton. pip then
# warns that triton is missing: expected.
XVENV  ?= .venv-xla
XPY    := $(XVENV)/bin/python
XSTAMP := $(XVENV)/.installed-stamp

$(XSTAMP): pyproject.toml
	python3 -m venv $(XVENV)
	$(XPY) -m pip install -q --upgrade pip
	$(XPY) -m pip install -q --no-deps torch==2.9.0
	$(XPY) -c "import importlib.metadata as m; print('\\n'.join(r for r in m.requires('torch') \
		if 'extra ==' not in r and not r.startswith('triton')))" > $(XVENV)/torch-deps.txt
	$(XPY) -m pip install -q -r $(XVENV)/torch-deps.txt torch_xla==2.9.0 \
		'numpy>=1.26' 'pyyaml>=6.0' 'tqdm>=4.66' 'tensorboard>=2.16' 'matplotlib>=3.8' 'pytest>=8' 'pytest-timeout>=2.3' \
		'ninja>=1.11'
	$(XPY) -m pip install -q --no-deps -e .
	$(XPY) -m decnode.nn.native
	touch $(XSTAMP)

.PHONY: install run test test-slurm bench install-xla test-xla
install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/decnode-run --nproc $(NPROC) --k $(K) $(ARGS)

# Two tests at a time (pytest-xdist): a test is mostly processes starting (~1 core busy), and there are 2 cores. The
# tests that compare wall-clock or simulated time with the host's (marked serial) then run alone.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=20 -m "not slurm and not serial"
	$(PY) -m pytest -q --durations=10 -m "serial and not slurm"

# A real one-machine SLURM (launch/slurm_local.sh: munge, slurmctld, slurmd; apt-get installs them once when
# missing), started and stopped by tests/test_slurm.py; root only, else skipped. 94-131 s here, so apart from make test.
test-slurm: $(STAMP)
	$(PY) -m pytest -q --durations=10 -m slurm tests/test_slurm.py

install-xla: $(XSTAMP)

# 4 XLA devices on the CPU in one process, one thread per device (tests/xla/xla_run.py sets the same for the
# processes it starts). Seen here, on 2 cores, with the sync lock and barrier of comm_xla: with parameter
# aliasing on, a graph that updates one of its own inputs in place (the caller changing x while its gossip is
# pending) ran inside sync() and waited there for the other devices, which could not sync: the n=8 gossip test
# deadlocked in every run until XLA_ENABLE_PARAM_ALIASING=0. A graph waiting in a collective also holds
# torch_xla pool threads: one of those graphs deadlocked in 2 of 3 runs with XLA_THREAD_POOL_SIZE=8 and in
# none of 3 with 64 (aliasing still on). 8 with aliasing off was not tried; 64 costs nothing but idle threads.
XLA_CPU_ENV := PJRT_DEVICE=CPU CPU_NUM_DEVICES=4 XLA_THREAD_POOL_SIZE=64 XLA_ENABLE_PARAM_ALIASING=0
test-xla: $(XSTAMP)
	$(XLA_CPU_ENV) $(XPY) -m pytest -q -p no:cacheprovider tests/xla

bench: $(STAMP)
	$(PY) benchmarks/comm.py
	$(PY) benchmarks/env.py
	$(PY) benchmarks/iteration.py
