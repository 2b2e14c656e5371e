# `make train`: the offline quickstart. `make test`: the test suite. Both install what they need
# into .venv first (PyTorch and the project in editable mode with its dev extras).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train test table1-cpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m vaegan.run +experiment=quickstart $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# Table 1 at CPU scale on the shared CIFAR-10 subset (README, Reproducing Table 1): under an hour.
table1-cpu: $(STAMP)
	$(PY) experiments/table1.py --scale cpu $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
