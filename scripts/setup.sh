#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for connfix, as root: the Debian packages the lab and
# the tests use, a virtual environment in .venv, and connfix installed into it.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(postgresql openssh-server openssh-client sudo curl iproute2 pgbouncer time
          prometheus prometheus-alertmanager
          # the report's history from postgres_exporter's series (a lab test)
          prometheus-postgres-exporter
          # the tests render the report's chart in a real browser (headless)
          chromium fonts-dejavu-core
          # the HA lab (lab up --ha): Patroni with etcd, from Debian
          patroni etcd-server etcd-client
          # the lab builds PgBouncer 1.24 / 1.25 from their release sources with these
          libevent-dev libssl-dev pkg-config autoconf automake libtool make gcc)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv python3-pip)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 2
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # the servers these packages bring are started by the tests, never as services of
    # this machine: keep their postinst from starting them (only if no policy is set)
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,lab]'
# connfix's own modules compiled once, as a wheel's are when it is installed: an editable
# install's sources are otherwise compiled at every start wherever PYTHONDONTWRITEBYTECODE
# is set (25-45 ms a command here; docs/benchmarks.md). A changed source is still read.
.venv/bin/python -m compileall -q src >/dev/null
echo "setup: ready ($(.venv/bin/connfix --version))" >&2
