#!/usr/bin/env bash
# Print the absolute path of a usable `consul` binary on stdout (and nothing else; progress goes to stderr).
#
# Order:
#   1. $CONSUL, if set and executable;
#   2. `consul` on PATH;
#   3. .cache/consul/root/usr/bin/consul (a previous download);
#   4. Debian bullseye's `consul` package (1.8.7), fetched with a PRIVATE apt state dir under
#      .cache/consul-apt from the Debian mirror this machine's apt is already configured with
#      (read from /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list at run time).
#      The system apt configuration, lists and cache are never modified.
# Safe to run concurrently (flock) and idempotent.
set -euo pipefail

# Everything except the final answer goes to stderr.
exec 3>&1 1>&2

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
BIN="$CACHE/consul/root/usr/bin/consul"
APTD="$CACHE/consul-apt"
DEB_SHA256="e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9"
DEB_VERSION="1.8.7+dfsg1-2+b3"
SUITE="bullseye"

log() { echo "get-consul: $*" >&2; }
die() { echo "get-consul: ERROR: $*" >&2; exit 1; }
answer() { printf '%s\n' "$1" >&3; exit 0; }

# 1. $CONSUL
if [[ -n "${CONSUL:-}" ]]; then
    if [[ "$CONSUL" == */* ]]; then
        if [[ -f "$CONSUL" && -x "$CONSUL" ]]; then
            answer "$(cd "$(dirname "$CONSUL")" && pwd)/$(basename "$CONSUL")"
        fi
    elif p="$(command -v -- "$CONSUL" 2>/dev/null)" && [[ "$p" == /* ]]; then
        answer "$p"
    fi
    log "warning: CONSUL=$CONSUL is not an executable file; ignoring it"
fi

# 2. consul on PATH
if p="$(command -v consul 2>/dev/null)" && [[ "$p" == /* && -x "$p" ]]; then
    answer "$p"
fi

# 3. previous download
if [[ -x "$BIN" ]]; then
    answer "$BIN"
fi

# 4. download, under a lock so concurrent runs don't trample each other
mkdir -p "$CACHE"
exec 9>"$CACHE/consul.lock"
if ! flock -n 9; then
    log "waiting for another get-consul.sh to finish..."
    flock 9
fi
if [[ -x "$BIN" ]]; then   # another run finished while we waited
    answer "$BIN"
fi

command -v apt-get >/dev/null || die "no consul found (set \$CONSUL or put consul on PATH) and apt-get is not available to fetch one"
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed to unpack the consul package"

# The machine's main (non-security) Debian mirror, from its own apt sources (scripts/apt-mirror.sh).
MIRROR="$("$(dirname "${BASH_SOURCE[0]}")/apt-mirror.sh")" \
    || die "could not read a Debian mirror from /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
MIRROR="${MIRROR%/}"
log "no consul binary found; fetching Debian $SUITE's consul $DEB_VERSION from the configured mirror $MIRROR"

mkdir -p "$APTD/lists/partial" "$APTD/cache/archives/partial" "$APTD/download"
SIGNED_BY=""
if [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
    SIGNED_BY="[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
fi
echo "deb ${SIGNED_BY}${MIRROR} ${SUITE} main" > "$APTD/sources.list"

APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APTD/sources.list"
    -o "Dir::Etc::sourceparts=/dev/null"
    -o "Dir::Etc::preferences=/dev/null"
    -o "Dir::Etc::preferencesparts=/dev/null"
    -o "Dir::State::Lists=$APTD/lists"
    -o "Dir::Cache=$APTD/cache"
    -o "Dir::Cache::pkgcache=$APTD/cache/pkgcache.bin"
    -o "Dir::Cache::srcpkgcache=$APTD/cache/srcpkgcache.bin"
    -o "APT::Get::List-Cleanup=0"
    -o "Debug::NoLocking=1"
    -o "Acquire::Languages=none"
)
if [[ "$(id -u)" == 0 ]]; then
    # The private dirs belong to whoever runs this; don't drop to the _apt user, who may not be able to write them.
    APT_OPTS+=(-o "APT::Sandbox::User=root")
fi

apt-get "${APT_OPTS[@]}" -q update || die "apt-get update (private state in $APTD) failed"

rm -f "$APTD/download/"*.deb
(cd "$APTD/download" && apt-get "${APT_OPTS[@]}" -q download consul) \
    || die "apt-get download consul failed (suite $SUITE, mirror $MIRROR)"

shopt -s nullglob
debs=("$APTD/download/"consul_*.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || die "expected exactly one consul_*.deb in $APTD/download, found ${#debs[@]}"
DEB="${debs[0]}"

got="$(sha256sum "$DEB" | awk '{print $1}')"
if [[ "$got" != "$DEB_SHA256" ]]; then
    die "sha256 mismatch for $DEB:
    expected $DEB_SHA256 (consul $DEB_VERSION)
    got      $got
refusing to use it"
fi
log "sha256 OK ($DEB_SHA256)"

# Unpack into a temporary dir, then move into place atomically.
tmp="$(mktemp -d "$CACHE/consul.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$DEB" "$tmp/root"
[[ -x "$tmp/root/usr/bin/consul" ]] || die "the package did not contain usr/bin/consul"
rm -rf "$CACHE/consul"
mkdir -p "$CACHE/consul"
mv "$tmp/root" "$CACHE/consul/root"
"$BIN" version >&2 || die "$BIN does not run"
answer "$BIN"
