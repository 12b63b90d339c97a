# The two commands of the README, and the benchmarks.
.PHONY: setup setup-dev demo test bench

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

# The demo study end to end: runs -> DuckDB -> reports/demo/index.html
demo: setup
	.venv/bin/snakemake -c2

test: setup-dev
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python -m bench
