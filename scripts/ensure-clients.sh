#!/usr/bin/env bash
# Installs the client libraries tests/test_clients.py drives, when they are missing: pgjdbc
# (Debian's libpostgresql-jdbc-java) with a headless JRE, and node-postgres (`pg` from npm,
# into tests/clients/node_modules, from the committed package-lock.json). Quick when all is
# there: nothing is downloaded and no package manager runs.
set -euo pipefail
cd "$(dirname "$0")/.."

JDBC_JAR=/usr/share/java/postgresql.jar
CLIENTS=tests/clients
STAMP=$CLIENTS/node_modules/.iasql-installed

have_java() {
    # Single-file source mode (java File.java) needs the jdk.compiler module, which Debian's
    # headless JRE ships too.
    command -v java >/dev/null 2>&1 && java --list-modules 2>/dev/null | grep '^jdk.compiler@' >/dev/null
}

want=()
have_java || want+=(default-jre-headless)
[[ -f $JDBC_JAR ]] || want+=(libpostgresql-jdbc-java)
command -v node >/dev/null 2>&1 || want+=(nodejs)
command -v npm >/dev/null 2>&1 || want+=(npm)

if [[ ${#want[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing: ${want[*]}; install them with: sudo apt-get install ${want[*]}" >&2
        exit 1
    fi
    echo "installing ${want[*]} from Debian's packages..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi

# npm ci replaces node_modules whole: run it only when the lock file is newer than the last run.
if [[ ! -f $STAMP || $CLIENTS/package-lock.json -nt $STAMP || $CLIENTS/package.json -nt $STAMP ]]; then
    echo "installing node-postgres into $CLIENTS/node_modules (npm ci)..." >&2
    (cd "$CLIENTS" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$STAMP"
fi
