# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install demo test train-demo clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

# generates data/dance when missing, trains the demo model, prints validation PSNR per epoch
train-demo: $(INSTALLED)
	$(BIN)/python -m cvae.train --config configs/demo.yaml

demo: train-demo

clean:
	rm -rf runs reports mlflow.db mlartifacts
