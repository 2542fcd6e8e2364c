# Two commands for a newcomer: `make run` and `make test`. Everything else is in scripts/.
.PHONY: run test test-multihost lint bench slurm

run:
	@bash scripts/run

test:
	@bash scripts/test

# The portal on nine hosts (network namespaces; root), under host failures: bench/multihost.py.
test-multihost:
	@bash scripts/multihost-test

lint:
	@bash scripts/bootstrap && .venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	@bash scripts/bootstrap && .venv/bin/python bench/submit.py

slurm:
	@bash scripts/slurm-dev-cluster start
