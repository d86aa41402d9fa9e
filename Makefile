# Two commands on a fresh machine: `make run` and `make test`. Everything they need is installed here.
# The venv's interpreter: Debian's /usr/bin/python3 when it is 3.11+ with venv, else python3 on PATH. Debian builds
# its interpreter with PGO and LTO; a plain source build (pyenv's default) spends 18-25 % more CPU per proxied request
# (docs/datapath.md, "The interpreter"). The container image runs Debian's python3 too (Dockerfile).
PYTHON ?= $(shell for p in /usr/bin/python3 python3; do $$p -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp names the interpreter's version, so a venv made by another interpreter is made again.
PYVERSION := $(shell $(PYTHON) -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)
STAMP := $(VENV)/.installed-$(PYVERSION)

.PHONY: deps nghttp2 consul browser slowhttptest test lint unit run bench clean soak

$(STAMP): pyproject.toml constraints.txt
	@test -z "$(PYTHON)" && { echo 'no python3 >= 3.11 with venv found: set PYTHON=' >&2; exit 1; } || true
	@if test -x $(PY) && test "$$($(PY) -c 'import sys; print(sys.version.split()[0])')" != "$(PYVERSION)"; then \
		echo "$(VENV) was made by another interpreter: making it again with $(PYTHON)"; rm -rf $(VENV); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

deps: $(STAMP) nghttp2

# Debian's libnghttp2-14, the HTTP/2 engine (router/proxy/nghttp2.py; curl depends on it, so it is usually
# there already); apt-get only when it is missing.
nghttp2:
	@test -e /usr/lib/$$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)/libnghttp2.so.14 \
		|| ldconfig -p | grep -q 'libnghttp2\.so\.14 ' \
		|| (apt-get update && apt-get install -y libnghttp2-14)

# Provides a consul binary: $$CONSUL, else `consul` on PATH, else Debian bullseye's package under .cache/.
consul:
	@scripts/get-consul.sh >/dev/null

# Debian's chromium for the browser tests (tests/test_ui_browser.py); apt-get only when it is missing.
browser:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

# Debian's slowhttptest for the slow-client tests (tests/test_slow_clients.py); apt-get only when it is missing.
slowhttptest:
	@test -x /usr/bin/slowhttptest || (apt-get update && apt-get install -y slowhttptest)

lint: deps
	$(PY) -m ruff check .

test: deps consul browser slowhttptest lint
	CONSUL="$$(scripts/get-consul.sh)" $(PY) -m pytest -q $(PYTEST_ARGS)

# The long variants (10-minute soak, a minute of Consul errors); rewrites docs/reliability.md's figures.
# `-m soak` on the command line overrides pyproject's `-m 'not soak'`.
soak: deps consul slowhttptest
	CONSUL="$$(scripts/get-consul.sh)" $(PY) -m pytest -q -s -m soak $(PYTEST_ARGS)

# The property tests (hypothesis) with ten times the examples `make test` draws (tests/fuzz.py).
.PHONY: fuzz
fuzz: deps
	FUZZ_SCALE=10 $(PY) -m pytest -q tests/test_hostile_input.py $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest -q -m "not consul" $(PYTEST_ARGS)

run: deps consul
	CONSUL="$$(scripts/get-consul.sh)" $(PY) scripts/run_demo.py $(ARGS)

# The image and the compose stack on a real Docker engine: scripts/container_test.sh (root, a few minutes, its own
# dockerd under .cache/container). Not part of `make test`; figures in deploy/README.md.
.PHONY: container-test
container-test: deps consul
	PY="$(abspath $(PY))" scripts/container_test.sh

# Issue 17's Docker end-to-end checks (address reuse, Docker's userland proxy, stop/kill/rolling replacement under
# load): demo containers on a private bridge of their own, the router from this checkout. Root, a few minutes.
.PHONY: container-faults
container-faults: deps consul
	CT_SUITE=faults PY="$(abspath $(PY))" scripts/container_test.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache

include bench/bench.mk
