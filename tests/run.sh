#!/usr/bin/env bash
# The test command (README): installs what the tests need where it is missing, then runs the
# whole suite. .ci/run calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests and benches drive: dig/nsupdate/named-checkzone, NSD and Knot as
# reference servers, kdig, dnsperf, systemd-analyze, the ACME software of issue 18 and the
# DNSSEC validators of issue 17.
need_pkgs=()
command -v dig >/dev/null || need_pkgs+=(bind9-dnsutils)
command -v named-checkzone >/dev/null || need_pkgs+=(bind9-utils)
command -v nsd >/dev/null || [ -x /usr/sbin/nsd ] || need_pkgs+=(nsd)
command -v knotd >/dev/null || [ -x /usr/sbin/knotd ] || need_pkgs+=(knot)
command -v kdig >/dev/null || need_pkgs+=(knot-dnsutils)
# BIND's named as a third standard secondary, with the README's snippet (issue 21).
command -v named >/dev/null || [ -x /usr/sbin/named ] || need_pkgs+=(bind9)
command -v dnsperf >/dev/null || need_pkgs+=(dnsperf)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
# The certificate test (issue 18): the ACME test CA, two ACME clients, openssl and curl.
command -v pebble >/dev/null || need_pkgs+=(pebble)
command -v certbot >/dev/null || need_pkgs+=(certbot)
[ -d /usr/lib/python3/dist-packages/certbot_dns_rfc2136 ] || need_pkgs+=(python3-certbot-dns-rfc2136)
command -v lego >/dev/null || need_pkgs+=(lego)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v curl >/dev/null || need_pkgs+=(curl)
# GNU time: the peak memory of `check` on hostile files (issue 22).
[ -x /usr/bin/time ] || need_pkgs+=(time)
# DNSSEC (issue 17): Unbound as the validating resolver, ldns-verify-zone (delv and
# dnssec-verify come with bind9-dnsutils and bind9-utils above).
command -v unbound >/dev/null || [ -x /usr/sbin/unbound ] || need_pkgs+=(unbound)
command -v ldns-verify-zone >/dev/null || need_pkgs+=(ldnsutils)
# The HTML status page is checked in a real browser (issue 21).
command -v chromium >/dev/null || need_pkgs+=(chromium)
# The Debian package (issue 21): cargo-deb reads library dependencies with dpkg-shlibdeps,
# build-deb.sh strips with binutils, systemd-analyze looks the man page up with man, the pull
# unit runs git.
command -v dpkg-shlibdeps >/dev/null || need_pkgs+=(dpkg-dev)
command -v strip >/dev/null || need_pkgs+=(binutils)
command -v man >/dev/null || need_pkgs+=(man-db)
command -v git >/dev/null || need_pkgs+=(git)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${need_pkgs[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    # Keep the packaged daemons (nsd, knot, named) from starting on port 53: tests run their own.
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    if [ -n "$created_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

# The GeoIP tests (issue 20) write their MaxMind DB files with PyPI's mmdb-writer, in a
# virtualenv of its own under target/ (Debian's Python refuses system-wide pip installs).
venv=target/test-python
if ! "$venv/bin/python" -c 'import mmdb_writer' 2>/dev/null; then
    echo "tests/run.sh: installing mmdb-writer into $venv" >&2
    if ! python3 -m venv "$venv" 2>/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet mmdb-writer
fi
export CONSORTIUM_DNS_TEST_PYTHON="$PWD/$venv/bin/python"

# The package test builds the .deb with cargo-deb, a cargo tool from crates.io.
if ! cargo deb --version >/dev/null 2>&1; then
    echo "tests/run.sh: installing cargo-deb" >&2
    cargo install --locked cargo-deb
fi

cargo test --locked --profile ci "$@"
