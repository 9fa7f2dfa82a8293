#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: target/debian/consortium-dns_<version>-1_<arch>.deb.
#
#   packaging/build-deb.sh                 # cargo build --release --locked, then package
#   packaging/build-deb.sh --binary PATH   # package an already built binary (the tests do)
#
# What the package holds is staged in target/deb-staging first, because some of it is made
# from the repository rather than copied: the man page and completions come from the binary
# itself, and the example config is rewritten for /etc/consortium-dns (zones/ beside it,
# listening on port 53), the unit for /usr/bin.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        *) echo "usage: packaging/build-deb.sh [--binary PATH]" >&2; exit 64 ;;
    esac
done
if ! cargo deb --version >/dev/null 2>&1; then
    echo "packaging/build-deb.sh: cargo-deb is missing: cargo install --locked cargo-deb" >&2
    exit 69
fi
if [ -z "$binary" ]; then
    cargo build --release --locked
    binary=target/release/consortium-dns
fi

stage=target/deb-staging
rm -rf "$stage"
mkdir -p "$stage/etc/zones" "$stage/systemd"
install -m 0755 "$binary" "$stage/consortium-dns"
strip "$stage/consortium-dns"

"$stage/consortium-dns" manpage | gzip -9n > "$stage/consortium-dns.1.gz"
"$stage/consortium-dns" completions bash > "$stage/consortium-dns.bash"
"$stage/consortium-dns" completions zsh > "$stage/_consortium-dns"
"$stage/consortium-dns" completions fish > "$stage/consortium-dns.fish"

# The config as installed: zones/ is beside it in /etc/consortium-dns, and a nameserver listens
# on port 53 of every address (the unit grants CAP_NET_BIND_SERVICE for it).
sed -e 's|"\.\./zones/|"zones/|g' \
    -e 's|^listen = \["127\.0\.0\.1:5300"\]|listen = ["0.0.0.0:53", "[::]:53"]|' \
    config/consortium-dns.toml > "$stage/etc/consortium-dns.toml"
if grep -q '\.\./' "$stage/etc/consortium-dns.toml" || ! grep -q '^listen = \["0\.0\.0\.0:53"' "$stage/etc/consortium-dns.toml"; then
    echo "packaging/build-deb.sh: config/consortium-dns.toml changed shape; update the rewrite" >&2
    exit 65
fi
cp zones/consortium.example.zone zones/consortium.example.members.toml "$stage/etc/zones/"

for unit in consortium-dns.service consortium-dns-pull.service consortium-dns-pull.timer; do
    sed -e 's|/usr/local/bin/consortium-dns|/usr/bin/consortium-dns|g' \
        -e 's|file:///usr/local/share/doc/consortium-dns/|file:///usr/share/doc/consortium-dns/|g' \
        "systemd/$unit" > "$stage/systemd/$unit"
done
if grep -q '/usr/local' "$stage"/systemd/*; then
    echo "packaging/build-deb.sh: a unit still names /usr/local; update the rewrite" >&2
    exit 65
fi

cargo deb --no-build --no-strip
