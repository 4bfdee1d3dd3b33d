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

demo: venv
	$(PY) -m proxy_bundle phantoms --task spleen_ct --out $(DEMO_DIR)/spleen_ct --num_cases 24 --num_external 6 --size 48

clean:
	rm -rf $(VENV) $(DEMO_DIR)
