# The checks CI runs (.ci/run), and the fixes ruff can make. Tests: `make test` (all) or `make quick`.
.PHONY: check fix test quick

check:
	ruff check .
	mypy
	lint-imports

fix:
	ruff check --fix .

test:
	python -m pytest

quick:
	python -m pytest -m "not slow" -x
