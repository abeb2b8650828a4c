# Sourced by .ci/run: makes a PostgreSQL server answer on 127.0.0.1:5432 and exports
# REELGEN_TEST_POSTGRES_URL for the tests.

pg_ready() {
    python3 - <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.1", 5432))
except OSError:
    sys.exit(1)
PY
}

ensure_postgres() {
    export REELGEN_TEST_POSTGRES_URL="${REELGEN_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
    if pg_ready; then return 0; fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        echo "PostgreSQL is not installed; installing it from Debian's packages" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    local conf="/etc/postgresql/$version/main"
    # Trust local loopback connections, as on the development machines.
    if ! grep -q "reelgen-ci" "$conf/pg_hba.conf"; then
        sed -i '1i host all all 127.0.0.1/32 trust # reelgen-ci\nhost all all ::1/128 trust # reelgen-ci' "$conf/pg_hba.conf"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main start
    for _ in $(seq 1 30); do
        if pg_ready; then return 0; fi
        sleep 1
    done
    echo "PostgreSQL did not start" >&2
    return 1
}
