# The two commands of the README, and the benchmarks. Every recipe calls the
# venv's programs by path (.venv/bin/...), so nothing needs it on PATH.
.PHONY: setup setup-dev demo test bench

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

# The demo study end to end: runs -> DuckDB -> reports/demo/index.html,
# then where they are and how to query them.
demo: setup
	.venv/bin/snakemake -c2
	@echo ""
	@echo "demo: the report   $${RLRS_REPORTS:-reports}/demo/index.html (open it in a browser; it works offline)"
	@echo "demo: the database $${RLRS_RESULTS:-results}/demo/rlrs.duckdb (its tables and views: README.md, section Querying results)"
	@echo "query it:"
	@echo "  .venv/bin/rlrs query --db $${RLRS_RESULTS:-results}/demo/rlrs.duckdb \"SELECT size, arm, definition, speedup, ci_low, ci_high, bound FROM speedup\""

test: setup-dev
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python -m bench
