# The two commands of the README: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TSTAMP := $(VENV)/.installed-test-stamp
DEMO   ?= demo_out
export OMP_NUM_THREADS ?= 2
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: demo test install clean

install: $(STAMP)

# constraints.txt pins the versions CI tests (the CPU torch wheel among them); pyproject.toml stays loose.
# [mpi] brings Open MPI's mpirun and mpi4py from PyPI (a cluster builds mpi4py against its MPI: jobs/README.md).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[mpi]'
	touch $(STAMP)

$(TSTAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,mpi,pyg]'
	touch $(TSTAMP)

demo: $(STAMP)
	$(VENV)/bin/meshgnn demo --out $(DEMO)

test: $(TSTAMP)
	$(PY) -m pytest -q --timeout=900 tests

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
