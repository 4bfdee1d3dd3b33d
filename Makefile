# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU torch for the demo and CI; `make TORCH_CONSTRAINTS=` keeps a torch you installed yourself.
TORCH_CONSTRAINTS ?= constraints/cpu.txt
PIP_C := $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS),)
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_work

.PHONY: venv services test demo clean

$(STAMP): setup.cfg pyproject.toml $(TORCH_CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_C) -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The multi-worker search tests need a PostgreSQL server: install Debian's package when it is missing.
services:
	bash tests/postgres.sh install

test: venv services
	$(PY) -m pytest -q tests

# Phantoms -> MONAI data analysis + proxy-data selection (with its report) -> two-phase search (6 trials on the
# proxy data, top 2 retrained on all the data) -> the template's default configuration trained as a baseline ->
# winner and baseline scored on the validation fold and the external site. 12 epochs of 32^3 volumes: about 60
# optimiser steps per full trial, enough for rising learning curves on 2 CPU cores. The network is already 8
# filters wide for CPU; a proxy network of it (4 filters) is still learning the background after 12 epochs, and so
# is short training (hpo's default method: 3 of the 12 epochs scored Dice 0 for all 6 trials here), so the demo
# uses proxy data only. Re-running resumes; `make clean` starts over.
# The phantoms are generated once: regenerating them would change the files under a finished search,
# which `hpo` then refuses to resume (its study is keyed to the input files); phantom_meta.json is written last.
$(DEMO_DIR)/spleen_ct/phantom_meta.json: | venv
	$(PY) -m proxy_bundle phantoms --task spleen_ct --out $(DEMO_DIR)/spleen_ct --num_cases 12 --num_external 4 --size 32

demo: venv $(DEMO_DIR)/spleen_ct/phantom_meta.json
	$(PY) -m proxy_bundle hpo --input $(DEMO_DIR)/spleen_ct --work_dir $(DEMO_DIR)/work --n_trials 6 --top_k 2 \
		--proxy data --data_fraction 0.5 --epochs 12 --pruner median \
		--overrides '{"roi_size": [32,32,32], "network#init_filters": 8}'

clean:
	rm -rf $(VENV) $(DEMO_DIR)
