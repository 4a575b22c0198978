# ebmm_tf: everything runs from a virtual environment inside the checkout.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= cpu,test

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-slow train bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q --durations=20

test-slow: install
	$(PY) -m pytest -q -m slow

train: install
	$(PY) -m ebmm_tf.train --gin_file=gin/binary_strings_cpu.gin --workdir=runs/binary_strings_cpu

bench: install
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) build *.egg-info
