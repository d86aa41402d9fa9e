#!/usr/bin/env bash
# Print the machine's main (non-security) Debian mirror, read from its own apt sources
# (/etc/apt/sources.list.d/debian.sources in deb822 form, else /etc/apt/sources.list). Nothing else on stdout.
# Used by scripts/get-consul.sh (the consul package) and scripts/container_test.sh (debootstrap).
set -euo pipefail

find_mirror() {
    local f=/etc/apt/sources.list.d/debian.sources
    if [[ -r "$f" ]]; then
        awk '
            function flush() {
                if (uris != "" && types ~ /(^|[ \t])deb([ \t]|$)/ && suites !~ /security/) { print uris; found = 1; exit }
                uris = ""; types = ""; suites = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "uris:"   { uris = $2 }
            tolower($1) == "types:"  { $1 = ""; types = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            END { if (!found) flush() }
        ' "$f" | head -n1
    fi
    if [[ -r /etc/apt/sources.list ]]; then
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' /etc/apt/sources.list \
            | awk '$1 == "deb" && $3 !~ /security/ { print $2; exit }'
    fi
}

m="$(find_mirror | head -n1)"
[[ -n "$m" ]] || { echo "apt-mirror: no Debian mirror in the machine's apt sources" >&2; exit 1; }
printf '%s\n' "${m%/}"
