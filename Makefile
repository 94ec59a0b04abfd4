# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install demo test train-demo sweep-demo report clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

# two pytest-xdist workers, each taking whole test modules (module fixtures are built once) in the order
# tests/conftest.py gives them: the modules with most slow tests first
test: $(INSTALLED)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# generates data/dance when missing, trains the demo model, prints validation PSNR per epoch
train-demo: $(INSTALLED)
	$(BIN)/python -m cvae train --config configs/demo.yaml

# generates data/dance when missing, runs the quick sweep (6 trials on 2 CPU workers), logged to mlflow.db
sweep-demo: $(INSTALLED)
	$(BIN)/python run_sweep.py sweeps/quick.yaml

# the report of the latest sweep (or SWEEP=name) in reports/<name>/; prints the path of report.md
report: $(INSTALLED)
	$(BIN)/python report.py $(if $(SWEEP),--sweep $(SWEEP))

# what users type: a sweep, then its report (`make train-demo` is the one-model walk-through)
demo: sweep-demo
	$(BIN)/python report.py --sweep quick

clean:
	rm -rf runs reports mlflow.db mlartifacts
