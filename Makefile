# Two commands on a fresh Debian 12 machine, as root: `make demo` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install vm-assets lab-images check test unit e2e demo bench lab-down fmt

install:
	@scripts/install-deps.sh

# The VM that tests kernel WireGuard (this machine's kernel has none): Debian's kernel and a
# bookworm root, cached in /var/cache/shoal-vm/<recipe hash>; a few minutes once, then instant.
vm-assets: install
	$(BIN)/python -m tests.vm.assets build

# The examples' images (redis, postgres, app, the sidecar) from Debian's packages: two root
# filesystems cached in /var/cache/shoal-images/<recipe hash>; 1-2 minutes each once (the
# sidecar's: 51-91 s), then instant (see shoal/lab/images.py).
lab-images: install
	$(BIN)/python -m shoal.lab.images build

check: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest -q -m "not e2e"

e2e: install vm-assets lab-images
	$(BIN)/pytest -q -m e2e

# Every test, the end-to-end ones in a real lab included; the code checks first.
test: check vm-assets lab-images
	$(BIN)/pytest -q

demo: install
	@scripts/demo.sh

# Side by side with the alternatives, in one run; writes docs/benchmarks.{md,json,png}.
# benchmarks/ is not part of the shoal package: it runs from this checkout.
bench:
	@scripts/install-deps.sh bench
	$(BIN)/python -m benchmarks --out docs

lab-down: install
	$(BIN)/shoal lab down

fmt: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks
