# Two commands for a newcomer:  `make run`  and  `make test`.
# Both create .venv with Python 3.11+, install what they need, and go.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests drive for real (Redis, nginx, Chromium); installed only when missing.
DEB_PACKAGES = redis-server nginx chromium

.PHONY: run test deps test-deps system-deps bench clean

$(BIN)/edgeproxy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

deps: $(BIN)/edgeproxy

run: deps
	$(BIN)/edgeproxy serve $(if $(CONFIG),--config $(CONFIG),)

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

test-deps: deps system-deps
	@if [ -f tests/js/package.json ]; then cd tests/js && npm ci --no-audit --no-fund --silent; fi

test: test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: deps
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) data .pytest_cache
