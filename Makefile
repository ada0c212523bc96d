# Two commands a newcomer needs: `make train` and `make test`. Both create .venv if missing and
# install the loss package (editable) with every extra the harness and the tests use; the harness
# itself (train.py, conf/, segtrain/, datamodules/, scripts/) runs from this checkout.
PYTHON ?= python3
EXTRAS := train,export,sweep,bench,mlflow,dev
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@# a .venv made before the project's own Optuna sweeper still holds hydra-optuna-sweeper (and
	@# optuna 2.x), whose configs shadow the plugin's: remove it
	$(PY) -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) train.py loss=bce_dice $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) scripts/bench_losses.py

clean:
	rm -rf $(VENV) logs .pytest_cache build dist
