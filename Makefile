# Two commands for a newcomer:  `make run`  and  `make test`.
# Both create .venv with Python 3.11+, install what they need, and go.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests drive for real (Redis, nginx, Chromium); installed only when missing.
DEB_PACKAGES = redis-server nginx chromium

.PHONY: run test test-differential deps test-deps system-deps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The compiled hot path (edgeproxy/compiled.py): mypyc builds the listed pure modules in place,
# again whenever one of them changes; without a C compiler their source runs.
# The files of edgeproxy.compiled.MODULES.
COMPILED_SOURCES = edgeproxy/segment.py edgeproxy/identity/sessions.py edgeproxy/mapping/actions.py \
	edgeproxy/mapping/coerce.py edgeproxy/mapping/userprops.py edgeproxy/mapping/useragent.py edgeproxy/mapping/revenue.py \
	edgeproxy/segment_api.py
$(VENV)/.compiled: $(VENV)/.installed $(COMPILED_SOURCES) edgeproxy/compiled.py
	@command -v cc >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq gcc)
	$(BIN)/pip install -q -e '.[compile]'
	$(BIN)/python -m edgeproxy.mypyc_build
	touch $@

deps: $(VENV)/.installed $(VENV)/.compiled

# The demo site needs analytics.js. Without a config of your own, `make run` serves a local
# copy from npm when npm is available (works offline and behind firewalls), else the proxy
# fetches it once from cdn.segment.com.
AJS_VERSION = 1.84.3
AJS_DIR     = $(VENV)/js/node_modules/@segment/analytics-next/dist/umd

run: deps
	@if [ -z "$(CONFIG)" ] && [ -z "$$EDGEPROXY_CDN__ANALYTICS_JS_DIR" ] && [ ! -d $(AJS_DIR) ] && command -v npm >/dev/null; then \
	  echo "fetching @segment/analytics-next@$(AJS_VERSION) from npm for the demo site"; \
	  npm install --prefix $(VENV)/js --no-audit --no-fund --silent @segment/analytics-next@$(AJS_VERSION) || true; \
	fi
	@if [ -z "$(CONFIG)" ] && [ -z "$$EDGEPROXY_CDN__ANALYTICS_JS_DIR" ] && [ -d $(AJS_DIR) ]; then \
	  export EDGEPROXY_CDN__ANALYTICS_JS_DIR=$(AJS_DIR); fi; \
	exec $(BIN)/edgeproxy serve $(if $(CONFIG),--config $(CONFIG),)

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

test-deps: $(VENV)/.installed-test $(VENV)/.compiled system-deps
	@if [ -f tests/js/package.json ]; then cd tests/js && npm ci --no-audit --no-fund --silent; fi
	@# Segment's published Amplitude destination: the reference of the differential mapping test.
	@if [ -f tests/reference/package.json ]; then cd tests/reference && npm ci --no-audit --no-fund --silent --ignore-scripts; fi

test: test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The differential mapping test on thousands of events (the suite runs a few hundred).
DIFFERENTIAL_EVENTS ?= 5000
test-differential: test-deps
	EDGEPROXY_DIFFERENTIAL_EVENTS=$(DIFFERENTIAL_EVENTS) $(BIN)/python -m pytest -q -s tests/test_mapping_differential.py

bench: deps system-deps
	@command -v wrk >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) data .pytest_cache edgeproxy/compiled.json
	find edgeproxy -name "*.so" -delete
