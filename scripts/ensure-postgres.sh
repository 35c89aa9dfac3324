#!/usr/bin/env bash
# Installs the Postgres server binaries (and pgbench, psql) from Debian's packages when
# they are missing; with the argument "pgbouncer", PgBouncer too (for the benchmark).
set -euo pipefail

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

want=()
have_postgres || want+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || want+=(postgresql-client)
if [[ "${1:-}" == "pgbouncer" ]] && ! command -v pgbouncer >/dev/null 2>&1 \
    && [[ ! -x /usr/sbin/pgbouncer ]]; then
    want+=(pgbouncer)
fi
[[ ${#want[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "missing: ${want[*]}; install them with: sudo apt-get install ${want[*]}" >&2
    exit 1
fi
echo "installing ${want[*]} from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# Debian's postgresql package would start a cluster of its own; we only want the binaries.
policy=/usr/sbin/policy-rc.d
[[ -e $policy ]] || { printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; trap 'rm -f "$policy"' EXIT; }
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
