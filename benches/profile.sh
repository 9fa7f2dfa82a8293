#!/usr/bin/env bash
# Where the server's CPU goes under load: `perf record -g` on consortium-dns (the example zone,
# one UDP worker pinned to SERVER_CPU, rate limiting and probes off) while dnsperf on CLIENT_CPU
# sends a mix of node names, the shared name, NXDOMAIN and host names. Prints dnsperf's figures,
# the split by binary (kernel / ours / libc), the top symbols, and the system calls' share.
#
#   benches/profile.sh            (needs perf from linux-perf, dnsperf; root or perf_event_paranoid <= 1)
#
# Environment: SECONDS_TO_RECORD [8], SERVER_CPU [1], CLIENT_CPU [0], PORT [25399], KEEP [0].
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RECORD="${SECONDS_TO_RECORD:-8}"
SERVER_CPU="${SERVER_CPU:-1}"
CLIENT_CPU="${CLIENT_CPU:-0}"
PORT="${PORT:-25399}"
for program in perf dnsperf taskset; do
    command -v "$program" >/dev/null || { echo "profile.sh: $program is missing" >&2; exit 1; }
done

(cd "$ROOT" && cargo build --release --locked --quiet --bin consortium-dns)
work="$(mktemp -d)"
server=
cleanup() {
    [ -z "$server" ] || kill "$server" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# A private copy of the example, on its own port, without probes or rate limiting.
cp -r "$ROOT/config" "$ROOT/zones" "$work/"
cp "$ROOT/target/release/consortium-dns" "$work/cdns"
python3 - "$work/config/consortium-dns.toml" "$PORT" <<'PY'
import sys
path, port = sys.argv[1], sys.argv[2]
text = open(path).read()
for old, new in [
    ('listen = ["127.0.0.1:5300"]', f'listen = ["127.0.0.1:{port}"]'),
    ('http-listen = "127.0.0.1:8053"', 'http-listen = ""'),
    ("udp-workers = 0", "udp-workers = 1"),
    ('kind = "https"', 'kind = "none"'),
    ("[rrl]\nenabled = true", "[rrl]\nenabled = false"),
]:
    assert old in text, old
    text = text.replace(old, new)
open(path, "w").write(text)
PY
sed -i 's/kind = "tcp"/kind = "none"/' "$work/zones/consortium.example.members.toml"
for name in node1 node2 node3 any nope ns1 mail www; do echo "$name.consortium.example A"; done >"$work/queries"

RUST_LOG=warn taskset -c "$SERVER_CPU" "$work/cdns" serve --config "$work/config/consortium-dns.toml" 2>"$work/log" &
server=$!
sleep 1
taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$PORT" -d "$work/queries" -l $((RECORD + 6)) -c 4 -q 100 \
    >"$work/dnsperf.out" 2>&1 &
client=$!
sleep 2
perf record -g -o "$work/perf.data" -p "$server" -- sleep "$RECORD" 2>/dev/null
wait "$client"

grep -E "Queries completed|Queries per second" "$work/dnsperf.out"
report() { perf report -i "$work/perf.data" --stdio "$@" 2>/dev/null | grep -v '^#' | grep -v '^$'; }
echo "--- by binary"
report --no-children --sort dso -g none | head -5
echo "--- top symbols (self)"
report --no-children --sort sym -g none | head -20
echo "--- system calls and our request path (with children)"
report --children --sort sym -g none | grep -E "__x64_sys_(sendmmsg|recvmmsg)|udp::worker|answer::" | head -8
