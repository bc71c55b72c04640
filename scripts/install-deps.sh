#!/usr/bin/env bash
# Installs what shoal's demo, tests and benchmarks need on a fresh Debian 12 machine (as root).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
# `install-deps.sh bench` adds what the benchmarks compare against (Nebula) and chart with.
extra="${1:-}"

# docker-compose: Debian's compose (v1) runs the examples; debootstrap builds the lab's images.
apt_packages=(docker.io wireguard-go wireguard-tools iptables nftables conntrack iproute2 iperf3
              busybox-static tcpdump util-linux procps postgresql chromium
              docker-compose debootstrap)
[ "$extra" = bench ] && apt_packages+=(nebula ethtool)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: docker.io's recommends pull in things we do not use.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# chromium: the dashboard's browser test (tests/e2e/test_dashboard_browser.py) drives Debian's
# build through Playwright (`executable_path`); `playwright install chromium` downloads its own
# build from a CDN, which this kind of machine cannot reach.
# The distro's docker.io starts a system dockerd we do not need; the lab runs its own per host.
systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true

# PostgreSQL for the PostgreSQL store's tests: Debian's cluster, started without systemd (PID 1
# here is no init that starts services), and a role that may create the per-run test database.
# The tests read its URL from SHOAL_TEST_POSTGRES (default: this role on 127.0.0.1:5432).
if [ -z "${SHOAL_TEST_POSTGRES:-}" ]; then
  pg_version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_lsclusters -h | grep -q "^$pg_version main" || pg_createcluster "$pg_version" main >/dev/null
  pg_lsclusters -h | grep -q "^$pg_version main .* online" || {
    echo "==> starting PostgreSQL $pg_version (cluster main)"
    pg_ctlcluster "$pg_version" main start
  }
  pg_psql() { (cd / && su postgres -c "psql -qtAc \"$1\"") }
  pg_psql "SELECT 1 FROM pg_roles WHERE rolname = 'shoal_test'" | grep -q 1 ||
    pg_psql "CREATE ROLE shoal_test LOGIN CREATEDB PASSWORD 'shoal_test'"
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> python venv in .venv"
  python3 -m venv .venv
fi
extras=dev
[ "$extra" = bench ] && extras=dev,bench
stamp=".venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> pip install -e .[$extras]"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[$extras]"
  touch "$stamp"
fi
# Byte-compiled as a wheel install would be: an editable install leaves src/ to be compiled
# at every start where PYTHONDONTWRITEBYTECODE is set (as here), 82 modules and ~85 ms of CPU
# on each `shoal up` and agent restart. Stale files are recompiled; up-to-date ones skipped.
.venv/bin/python -m compileall -q src
