# sealpod: two commands matter. `make demo` runs the main job end to end; `make test` runs the
# whole suite. Both install whatever is missing first (scripts/bootstrap.sh).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bootstrap lint typecheck unit bench clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	@$(PY) scripts/demo.py

lint: bootstrap
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

typecheck: bootstrap
	$(VENV)/bin/mypy

unit: bootstrap
	$(VENV)/bin/pytest -q tests

test: lint typecheck unit

bench: bootstrap
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .pytest_cache .ruff_cache
