# Two commands for a newcomer: `make run` and `make test`. Everything else is in scripts/.
.PHONY: run test lint bench slurm

run:
	@bash scripts/run

test:
	@bash scripts/test

lint:
	@bash scripts/bootstrap && .venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	@bash scripts/bootstrap && .venv/bin/python bench/submit.py

slurm:
	@bash scripts/slurm-dev-cluster start
