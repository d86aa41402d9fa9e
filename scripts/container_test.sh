#!/usr/bin/env bash
# `make container-test`: build the Dockerfile and run the image and the compose stack on a real Docker engine.
#
#   1. installs Debian's docker.io, debootstrap and docker-compose when missing (needs root);
#   2. starts a dockerd of its own (data root and socket under .cache/container/docker, --iptables=false,
#      --bridge=none: no bridge, no NAT, nothing outside loopback), stopped by its PID on every exit;
#   3. makes the local base image once (debootstrap of bookworm + python3 from the mirror the machine's apt
#      sources name, `docker import`; the rootfs tarball is cached), and the images built on it: the
#      build stage's base (plus this machine's CA bundle), Consul (the binary the test suite uses), the demo;
#   4. builds the project's Dockerfile for real, without the layer cache, with BASE/BUILD_BASE pointing at
#      the local bases and host networking for the build, so pip reaches the package index as the machine does;
#   5. starts an empty container with --network none whose network namespace (only its own loopback) every
#      test container joins, and runs tests/container/ inside that namespace: default ports, no clash with
#      anything on the machine, no address outside 127.0.0.0/8.
# Figures (build time, image size, time to healthy, drain time, requests and failures while scaling) are
# printed at the end and written to .cache/container/figures.json.
#
# CT_SUITE=faults (`make container-faults`) runs tests/container_faults/ instead: steps 1-3 (the local base and the
# demo image only, no project image: the router runs from this checkout's venv), then a user-defined bridge
# network of its own (FAULTS_SUBNET, private; no NAT: --ip-masq=false, and forwarding off on its bridge, so a
# packet from a container to any address off the bridge is dropped, never routed off the machine) and
# pytest in the network namespace of a container on it: Consul and the router on that namespace's loopback,
# the demo containers at their bridge addresses, and Docker's userland proxy on the bridge's gateway address.
#
# Skips (exit 0, saying so) when no engine can start and CI or CONTAINER_TEST_ALLOW_SKIP is set; fails otherwise
# (`DOCKERD=/bin/false CI=1 make container-test` shows that path). PYTEST_ARGS go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/container"
D="$CACHE/docker"
PY="${PY:-$ROOT/.venv/bin/python}"
DOCKERD="${DOCKERD:-/usr/sbin/dockerd}"
DOCKER=/usr/bin/docker          # Debian's client, the same release as its dockerd (not a newer one on PATH)
COMPOSE=/usr/bin/docker-compose
BASE_IMAGE=consul-router-ct/bookworm-python:3.11
BUILD_BASE_IMAGE=consul-router-ct/bookworm-python-build:3.11
CONSUL_IMAGE=consul-router-ct/consul:local
DEMO_IMAGE=consul-router-demo:local
IMAGE=consul-router:local
NETNS=consul-router-ct-netns
# python3-venv: the Dockerfile makes its venvs with `python3 -m venv` (ensurepip), as on python:3.11-slim.
DEBOOTSTRAP_ARGS=(--variant=minbase --include=python3,python3-venv bookworm)
SUITE="${CT_SUITE:-image}"
FAULTS_NET=ct-faults
FAULTS_BRIDGE=ctfaults0
FAULTS_SUBNET=10.213.47.0/24       # private, not routed anywhere; containers get .2-.127, the client .200
FAULTS_GATEWAY=10.213.47.1
FAULTS_CLIENT=ct-faults-client

log() { echo "container-test: $*" >&2; }
die() { echo "container-test: FAILED: $*" >&2; exit 1; }
skip() {
    if [[ -n "${CI:-}" || -n "${CONTAINER_TEST_ALLOW_SKIP:-}" ]]; then
        echo "container-test: SKIPPED: $* (CI or CONTAINER_TEST_ALLOW_SKIP is set, so this is not a failure)"
        exit 0
    fi
    die "$* (set CONTAINER_TEST_ALLOW_SKIP=1 to skip instead)"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[[ "$SUITE" == image || "$SUITE" == faults ]] || die "CT_SUITE=$SUITE: expected image or faults"
[[ "$(id -u)" == 0 ]] || skip "needs root (to install packages and run dockerd)"
[[ -x "$PY" ]] || die "$PY missing: run make deps first"
mkdir -p "$CACHE" "$D"
exec 8>"$CACHE/lock"
flock -n 8 || { log "another container-test of this checkout is running; waiting"; flock 8; }

# ---- 1. packages
missing=()
for pkg in docker.io debootstrap docker-compose; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get -o DPkg::Lock::Timeout=900 update -q >/dev/null \
             && apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
        || skip "could not install ${missing[*]} with apt-get"
fi

# ---- 2. our own dockerd
# containerd's socket lives under the exec root, and a unix socket path has at most 107 bytes.
EXEC_ROOT="$D/exec"
if ((${#EXEC_ROOT} > 60)); then
    EXEC_ROOT="/run/consul-router-ct-$(printf '%s' "$ROOT" | sha1sum | cut -c1-10)"
fi
SOCK="$D/docker.sock"
((${#SOCK} <= 100)) || SOCK="$EXEC_ROOT/docker.sock"
export DOCKER_HOST="unix://$SOCK"
PIDFILE="$D/dockerd.pid"

stop_dockerd() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    log "dockerd $pid did not stop in 30 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}
# A dockerd left over by an earlier run of this checkout that was killed: stop it by its recorded PID.
if [[ -s "$PIDFILE" ]]; then
    old="$(cat "$PIDFILE")"
    if [[ "$(cat "/proc/$old/comm" 2>/dev/null)" == dockerd ]] && grep -qF -- "$D/data" "/proc/$old/cmdline"; then
        log "stopping the dockerd ($old) an earlier run left behind"
        stop_dockerd "$old"
    fi
    rm -f "$PIDFILE"
fi

DOCKERD_PID=""
cleanup() {
    local rc=$?
    set +e
    if [[ -n "$DOCKERD_PID" ]]; then
        "$COMPOSE" -p ctstack -f "$CACHE/compose.test.yml" down -t 20 >/dev/null 2>&1
        ids="$("$DOCKER" ps -aq 2>/dev/null)"
        [[ -n "$ids" ]] && "$DOCKER" rm -f $ids >/dev/null 2>&1
        "$DOCKER" network rm "$FAULTS_NET" >/dev/null 2>&1
        stop_dockerd "$DOCKERD_PID"
        # dockerd stops the containerd it started; if it could not, stop that one by its PID too.
        cpid="$(cat "$EXEC_ROOT/containerd/containerd.pid" 2>/dev/null)"
        [[ -n "$cpid" ]] && kill -0 "$cpid" 2>/dev/null && { sleep 2; kill -TERM "$cpid" 2>/dev/null; }
        # What dockerd leaves mounted under its own directories (the default netns handle).
        awk -v a="$D/" -v b="$EXEC_ROOT/" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' /proc/self/mounts \
            | sort -r | while read -r m; do umount "$m" 2>/dev/null; done
        log "dockerd $DOCKERD_PID stopped"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$EXEC_ROOT"
log "starting dockerd (data root $D/data, socket $SOCK, log $D/dockerd.log)"
"$DOCKERD" --data-root "$D/data" --exec-root "$EXEC_ROOT" --pidfile "$PIDFILE" -H "$DOCKER_HOST" \
    --iptables=false --ip-masq=false --bridge=none --log-level=warn >"$D/dockerd.log" 2>&1 &
DOCKERD_PID=$!
t=$(now)
until "$DOCKER" version >/dev/null 2>&1; do
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
        DOCKERD_PID=""
        tail -n 20 "$D/dockerd.log" >&2
        skip "no container engine could start here (dockerd exited; its log is above)"
    fi
    if (($(date +%s) - ${t%.*} > 60)); then
        tail -n 20 "$D/dockerd.log" >&2
        skip "dockerd did not answer within 60 s"
    fi
    sleep 0.2
done
log "dockerd $DOCKERD_PID up in $(since "$t") s: $("$DOCKER" info --format '{{.ServerVersion}}, {{.Driver}}')"

# ---- 5b. CT_SUITE=faults: the demo containers on a private bridge, the tests in a container's namespace on it
run_faults() {
    "$DOCKER" rm -f "$FAULTS_CLIENT" >/dev/null 2>&1 || true
    "$DOCKER" network rm "$FAULTS_NET" >/dev/null 2>&1 || true
    "$DOCKER" network create --driver bridge --subnet "$FAULTS_SUBNET" --ip-range "${FAULTS_SUBNET%.*}.0/25" \
        --gateway "$FAULTS_GATEWAY" -o "com.docker.network.bridge.name=$FAULTS_BRIDGE" \
        -o com.docker.network.bridge.enable_ip_masquerade=false "$FAULTS_NET" >/dev/null
    # Packets that arrive on the bridge are never forwarded (the machine forwards on its other interfaces).
    sysctl -qw "net.ipv4.conf.$FAULTS_BRIDGE.forwarding=0" \
        || die "could not turn forwarding off on $FAULTS_BRIDGE"
    [[ "$(cat "/proc/sys/net/ipv4/conf/$FAULTS_BRIDGE/forwarding")" == 0 ]] || die "$FAULTS_BRIDGE still forwards"
    "$DOCKER" run -d --name "$FAULTS_CLIENT" --network "$FAULTS_NET" --ip "${FAULTS_SUBNET%.*}.200" \
        --entrypoint /bin/sleep "$BASE_IMAGE" infinity >/dev/null
    local nspid
    nspid="$("$DOCKER" inspect -f '{{.State.Pid}}' "$FAULTS_CLIENT")"
    export CT_DOCKER_HOST="$DOCKER_HOST" CT_DOCKER="$DOCKER" CT_BASE_IMAGE="$BASE_IMAGE" CT_DEMO_IMAGE="$DEMO_IMAGE" \
           CT_CACHE="$CACHE" CT_FAULTS_NET="$FAULTS_NET" CT_FAULTS_GATEWAY="$FAULTS_GATEWAY" \
           CONSUL="$("$ROOT/scripts/get-consul.sh")"
    rm -f "$CACHE/faults.json"
    log "running tests/container_faults/ in the network namespace of $FAULTS_CLIENT (pid $nspid, on $FAULTS_SUBNET)"
    nsenter --net="/proc/$nspid/ns/net" -- "$PY" -m pytest -q -p no:cacheprovider -o addopts= -ra \
        tests/container_faults ${PYTEST_ARGS:-}
    if [[ -s "$CACHE/faults.json" ]]; then
        echo "container-faults figures ($CACHE/faults.json):"
        "$PY" -c 'import json, sys; [print(f"  {k}: {v}") for k, v in json.load(open(sys.argv[1])).items()]' \
            "$CACHE/faults.json"
    fi
}

# ---- 3. local base images
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    key="$(printf '%s ' "${DEBOOTSTRAP_ARGS[@]}" | sha1sum | cut -c1-10)"
    TAR="$CACHE/rootfs-$key.tar"
    if [[ ! -s "$TAR" ]]; then
        MIRROR="$("$ROOT/scripts/apt-mirror.sh")"
        log "debootstrap ${DEBOOTSTRAP_ARGS[*]} from the machine's mirror $MIRROR (once; cached in $TAR)"
        t=$(now)
        tmp="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
        debootstrap "${DEBOOTSTRAP_ARGS[@]}" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap.log" >&2; rm -rf "$tmp"; die "debootstrap failed"; }
        # What the slim images leave out too: package caches and lists, docs, man pages, locales.
        rm -rf "$tmp"/var/cache/apt/* "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* \
               "$tmp"/usr/share/locale/* "$tmp"/var/log/*.log "$tmp"/tmp/*
        tar -C "$tmp" --numeric-owner -cf "$TAR.part" .
        mv "$TAR.part" "$TAR"
        rm -rf "$tmp"
        log "debootstrap done in $(since "$t") s"
    fi
    "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
        --message "debootstrap ${DEBOOTSTRAP_ARGS[*]}" "$TAR" "$BASE_IMAGE" >/dev/null
    log "imported $BASE_IMAGE"
fi

"$DOCKER" build -q --network host --build-arg "BASE=$BASE_IMAGE" -t "$DEMO_IMAGE" "$ROOT/deploy/demo" >/dev/null
if [[ "$SUITE" == faults ]]; then
    run_faults
    exit 0
fi

CERT="$("$PY" -m pip config get global.cert 2>/dev/null || true)"
[[ -r "$CERT" ]] || CERT=/etc/ssl/certs/ca-certificates.crt
ctx="$CACHE/ctx-build-base"; rm -rf "$ctx"; mkdir -p "$ctx"
cp "$CERT" "$ctx/ca-certificates.crt"
"$DOCKER" build -q --network host --build-arg "BASE=$BASE_IMAGE" -t "$BUILD_BASE_IMAGE" \
    -f "$ROOT/tests/container/build-base.Dockerfile" "$ctx" >/dev/null

CONSUL_BIN="$("$ROOT/scripts/get-consul.sh")"
ctx="$CACHE/ctx-consul"; rm -rf "$ctx"; mkdir -p "$ctx"
cp "$CONSUL_BIN" "$ctx/consul"
"$DOCKER" build -q --network host --build-arg "BASE=$BASE_IMAGE" -t "$CONSUL_IMAGE" \
    -f "$ROOT/tests/container/consul.Dockerfile" "$ctx" >/dev/null
log "consul image from $CONSUL_BIN ($("$CONSUL_BIN" version | head -n1))"

# ---- 4. the project's Dockerfile, for real
build_args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "BUILD_BASE=$BUILD_BASE_IMAGE"
            --build-arg "VERSION=$("$PY" -c 'import router; print(router.__version__)')"
            --build-arg "REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)")
# An index the machine's pip is configured with (http/https only: file:// paths are not in the build).
for key in index-url extra-index-url; do
    val="$("$PY" -m pip config get "global.$key" 2>/dev/null || true)"
    urls="$(printf '%s\n' $val | grep -E '^https?://' | paste -sd' ' || true)"
    [[ -n "$urls" ]] && build_args+=(--build-arg "PIP_$(echo "$key" | tr a-z- A-Z_)=$urls")
done
log "docker build --no-cache --network host ${build_args[*]} -t $IMAGE ."
t=$(now)
"$DOCKER" build --no-cache --network host "${build_args[@]}" -t "$IMAGE" "$ROOT" >"$CACHE/build.log" 2>&1 \
    || { tail -n 30 "$CACHE/build.log" >&2; die "docker build failed (log: $CACHE/build.log)"; }
BUILD_SECONDS="$(since "$t")"
log "image built in $BUILD_SECONDS s"
"$DOCKER" image prune -f >/dev/null  # the previous run's image and this build's stage: the data root stays put

# ---- 5. the tests, inside the loopback-only namespace
"$DOCKER" rm -f "$NETNS" >/dev/null 2>&1 || true
"$DOCKER" run -d --name "$NETNS" --network none --entrypoint /bin/sleep "$BASE_IMAGE" infinity >/dev/null
NSPID="$("$DOCKER" inspect -f '{{.State.Pid}}' "$NETNS")"
export CT_DOCKER_HOST="$DOCKER_HOST" CT_DOCKER="$DOCKER" CT_COMPOSE="$COMPOSE" CT_NETNS="$NETNS" \
       CT_IMAGE="$IMAGE" CT_BASE_IMAGE="$BASE_IMAGE" CT_CONSUL_IMAGE="$CONSUL_IMAGE" CT_DEMO_IMAGE="$DEMO_IMAGE" \
       CT_CACHE="$CACHE" CT_BUILD_SECONDS="$BUILD_SECONDS"
rm -f "$CACHE/figures.json"
log "running tests/container/ in the network namespace of $NETNS (pid $NSPID)"
nsenter --net="/proc/$NSPID/ns/net" -- "$PY" -m pytest -q -p no:cacheprovider -o addopts= -ra tests/container \
    ${PYTEST_ARGS:-}
if [[ -s "$CACHE/figures.json" ]]; then
    echo "container-test figures ($CACHE/figures.json):"
    "$PY" -c 'import json, sys; [print(f"  {k}: {v}") for k, v in json.load(open(sys.argv[1])).items()]' \
        "$CACHE/figures.json"
fi
