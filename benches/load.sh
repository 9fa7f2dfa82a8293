#!/usr/bin/env bash
# Load benchmark (issue 9): consortium-dns against NSD and Knot DNS on the same zone, the same
# queries and the same machine, driven by dnsperf. Prints a markdown table.
#
#   benches/load.sh [MEMBERS ...]        e.g. benches/load.sh 10 1000 100000   (default: 10)
#
# Environment (defaults in brackets):
#   DURATION [10]      seconds per dnsperf run          ROUNDS [3]   rounds (median reported)
#   SETS ["nodes:udp shared:udp nxdomain:udp mix:udp mix:tcp"]  query set:transport lines
#   SERVERS ["consortium-dns nsd knot"]                 SERVER_CPU [1]  CLIENT_CPU [0]
#   CLIENTS [4]        dnsperf -c (sockets / TCP conns)  OUTSTANDING [100]  dnsperf -q
#   EDNS [1]           dnsperf -e (resolvers send EDNS)  QUERY_LINES [100000] lines per file
#   MAX_QPS []         dnsperf -Q: offer a fixed rate (e.g. 50000) instead of as much as dnsperf
#                      can send, so that CPU per query compares servers at the same load
#   BASE_PORT [25353]  ours, NSD and Knot on +0, +1, +2  STARTUP_TIMEOUT [1800] seconds
#   DNSSEC [0]         1 = the zone signed and every query with DO set (dnsperf -D): ours with
#                      `dnssec = true` and a P-256 CSK from `consortium-dns dnssec keygen`, NSD
#                      and Knot the same zone pre-signed with that key by `dnssec-signzone`
#                      (NSEC); their shared name is one pre-signed CNAME, ours picks among
#                      pre-signed alternatives
#   DENIAL [nsec]      with DNSSEC=1: nsec3 = NSEC3 (RFC 9276: SHA-1, 0 extra iterations, empty
#                      salt) for ours (`denial = "nsec3"`) and for dnssec-signzone (-3 - -H 0)
#   GEO [0]            1 = also a pool `near` with policy nearest (nearest-k 3) over every
#                      member, each member placed on the globe, and a GeoIP database shaped
#                      like GeoLite2-City (benches/geo_db.py: 50,000 networks, full records;
#                      dnsperf's 127.0.0.1 is in it); query set `near` (and `nearecs`, the same
#                      with an EDNS Client Subnet option for 198.51.100.0/24) to compare with
#                      `shared` (issue 20: a nearest pool within 1.2x a weighted one's CPU per
#                      query). NSD and Knot serve `near` as one fixed CNAME, like `any`
#   KEEP [0]           1 = keep the work directory (configs, zones, logs, raw results)
#   BASELINE_BIN       another consortium-dns binary (say, a build of the previous commit) to run
#                      as server "baseline" beside the others, same config, on BASE_PORT + 3
#   BASELINE_QUERY_METRICS [true]  `query-metrics` of the baseline's config; false (with
#                      BASELINE_BIN unset: the binary under test) measures what counting queries
#                      and picks costs: "baseline" is then the same server, counting nothing
#
# Fairness: one worker each (consortium-dns `udp-workers = 1`; NSD `server-count: 1`; Knot one
# UDP, one TCP and one background worker), every thread of every server pinned to SERVER_CPU
# (re-pinned after start-up: Knot moves its UDP worker to CPU 0 by itself) and dnsperf to
# CLIENT_CPU, response rate limiting off (NSD `rrl-ratelimit: 0`, Knot without its rrl module,
# consortium-dns `[rrl] enabled = false`), no per-query logging (warnings only; consortium-dns
# also logs its own start and stop at info), minimal responses everywhere (NSD
# `minimal-responses: yes`; Knot and consortium-dns always are). NSD and Knot cannot pick, so
# they serve the shared name `any` as one fixed CNAME; consortium-dns picks per query.
#
# CPU per query = the server's user+system ticks (/proc/PID/stat, all threads of all its
# processes) across one run, divided by the queries dnsperf saw answered. Linux scales the two
# to the scheduler's exact runtime, so their sum is precise (it matches the sum over
# /proc/PID/task/*/schedstat). On loopback it includes delivering each answer into dnsperf's
# socket (the sender's softirq). It is the figure to compare when dnsperf on its single core,
# not the server, sets the qps ceiling; it also depends on load (a server that sleeps between
# queries pays a wake-up per query), hence MAX_QPS for a comparison at one offered rate.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
DEFAULT_SETS="nodes:udp shared:udp nxdomain:udp mix:udp mix:tcp"
SETS="${SETS:-$DEFAULT_SETS}"
DEFAULT_SERVERS="consortium-dns nsd knot"
SERVERS="${SERVERS:-$DEFAULT_SERVERS}"
REQUESTED_SERVERS="$SERVERS"
BASELINE_BIN="${BASELINE_BIN:-}"
BASELINE_QUERY_METRICS="${BASELINE_QUERY_METRICS:-true}"
case $BASELINE_QUERY_METRICS in true | false) ;; *)
    echo "load.sh: BASELINE_QUERY_METRICS must be true or false" >&2
    exit 1
    ;;
esac
# Baseline = the binary under test (known once it is built), configured not to count.
BASELINE_SAME=0
if [ -z "$BASELINE_BIN" ] && [ "$BASELINE_QUERY_METRICS" = false ]; then
    BASELINE_SAME=1
    case " $SERVERS " in *" baseline "*) ;; *) SERVERS="$SERVERS baseline" ;; esac
fi
if [ -n "$BASELINE_BIN" ]; then
    [ -x "$BASELINE_BIN" ] || { echo "load.sh: BASELINE_BIN=$BASELINE_BIN is not an executable" >&2; exit 1; }
    BASELINE_BIN="$(cd "$(dirname "$BASELINE_BIN")" && pwd)/$(basename "$BASELINE_BIN")"
    case " $SERVERS " in *" baseline "*) ;; *) SERVERS="$SERVERS baseline" ;; esac
fi
SERVER_CPU="${SERVER_CPU:-1}"
CLIENT_CPU="${CLIENT_CPU:-0}"
CLIENTS="${CLIENTS:-4}"
OUTSTANDING="${OUTSTANDING:-100}"
EDNS="${EDNS:-1}"
MAX_QPS="${MAX_QPS:-}"
QUERY_LINES="${QUERY_LINES:-100000}"
BASE_PORT="${BASE_PORT:-25353}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-1800}"
KEEP="${KEEP:-0}"
DNSSEC="${DNSSEC:-0}"
case $DNSSEC in 0 | 1) ;; *) echo "load.sh: DNSSEC must be 0 or 1" >&2; exit 1 ;; esac
DENIAL="${DENIAL:-nsec}"
case $DENIAL in nsec | nsec3) ;; *) echo "load.sh: DENIAL must be nsec or nsec3" >&2; exit 1 ;; esac
GEO="${GEO:-0}"
case $GEO in 0 | 1) ;; *) echo "load.sh: GEO must be 0 or 1" >&2; exit 1 ;; esac
ORIGIN="consortium.example"
if [ $# -gt 0 ]; then MEMBER_COUNTS=("$@"); else MEMBER_COUNTS=(10); fi

die() {
    echo "load.sh: $*" >&2
    exit 1
}
note() { echo "load.sh: $*" >&2; }

for n in "${MEMBER_COUNTS[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "member count '$n' is not a positive integer"
done
for v in DURATION ROUNDS CLIENTS OUTSTANDING QUERY_LINES BASE_PORT STARTUP_TIMEOUT; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v='${!v}' is not a positive integer"
done
[ -z "$MAX_QPS" ] || [[ "$MAX_QPS" =~ ^[1-9][0-9]*$ ]] || die "MAX_QPS='$MAX_QPS' is not a positive integer"
read -r -a server_list <<<"$SERVERS"
for s in "${server_list[@]}"; do
    case $s in
        consortium-dns | nsd | knot) ;;
        baseline) [ -n "$BASELINE_BIN" ] || [ "$BASELINE_SAME" = 1 ] || die "server 'baseline' needs BASELINE_BIN" ;;
        *) die "unknown server '$s' in SERVERS" ;;
    esac
done
read -r -a set_list <<<"$SETS"
for line in "${set_list[@]}"; do
    case $line in nodes:udp | shared:udp | nxdomain:udp | mix:udp | \
        nodes:tcp | shared:tcp | nxdomain:tcp | mix:tcp) ;;
    near:udp | near:tcp | nearecs:udp | nearecs:tcp)
        [ "$GEO" = 1 ] || die "query set '${line%%:*}' needs GEO=1"
        ;;
    *) die "unknown set:transport '$line' in SETS" ;;
    esac
done

# --- programs -----------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
need_pkgs=()
command -v dnsperf >/dev/null || need_pkgs+=(dnsperf)
command -v nsd >/dev/null || need_pkgs+=(nsd)
command -v knotd >/dev/null || need_pkgs+=(knot)
command -v dig >/dev/null || need_pkgs+=(bind9-dnsutils)
[ "$DNSSEC" = 0 ] || command -v dnssec-signzone >/dev/null || need_pkgs+=(bind9-utils)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
    note "installing ${need_pkgs[*]}"
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=
    elif command -v sudo >/dev/null; then
        SUDO=sudo
    else
        die "missing ${need_pkgs[*]}; installing them needs root or sudo"
    fi
    # Keep the packaged daemons (nsd, knot) from starting on port 53 at install time.
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" >/dev/null
    if [ -n "$created_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi
missing=()
for prog in dnsperf nsd nsd-checkconf nsd-checkzone knotd knotc dig taskset pgrep getconf \
    cargo awk sort; do
    command -v "$prog" >/dev/null || missing+=("$prog")
done
[ ${#missing[@]} -eq 0 ] || die "missing program(s): ${missing[*]}"
GEO_PYTHON="${CONSORTIUM_DNS_TEST_PYTHON:-$ROOT/target/test-python/bin/python}"
if [ "$GEO" = 1 ] && ! "$GEO_PYTHON" -c 'import mmdb_writer' 2>/dev/null; then
    note "installing mmdb-writer into target/test-python (for the GeoIP database)"
    python3 -m venv "$ROOT/target/test-python" && "$ROOT/target/test-python/bin/python" -m pip install --quiet mmdb-writer ||
        die "cannot install PyPI's mmdb-writer (GEO=1 writes its GeoIP database with it)"
    GEO_PYTHON="$ROOT/target/test-python/bin/python"
fi

cpus="$(getconf _NPROCESSORS_ONLN)"
for c in "$SERVER_CPU" "$CLIENT_CPU"; do
    [[ "$c" =~ ^[0-9]+$ ]] && [ "$c" -lt "$cpus" ] ||
        die "CPU $c does not exist here ($cpus online); set SERVER_CPU and CLIENT_CPU"
done
[ "$SERVER_CPU" != "$CLIENT_CPU" ] || note "warning: server and dnsperf share CPU $SERVER_CPU"
CLK_TCK="$(getconf CLK_TCK)"

# --- build ----------------------------------------------------------------------------------
note "building consortium-dns (release)"
(cd "$ROOT" && cargo build --release --locked --quiet --bin consortium-dns) ||
    die "cargo build --release failed"
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$target_dir" in /*) ;; *) target_dir="$ROOT/$target_dir" ;; esac
built_bin="$target_dir/release/consortium-dns"
[ -x "$built_bin" ] || die "built binary not found at $built_bin"
[ "$BASELINE_SAME" = 0 ] || BASELINE_BIN="$built_bin"

# --- work directory, cleanup ----------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cdns-load.XXXXXX")"
declare -A SERVER_PID=()
stop_server() {
    local name=$1 pid=${SERVER_PID[$1]:-}
    [ -n "$pid" ] || return 0
    unset "SERVER_PID[$name]"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local name
    for name in "${!SERVER_PID[@]}"; do stop_server "$name"; done
    if [ "$KEEP" = 1 ]; then note "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Private copies: a rebuild of target/ during the runs must not change what is measured, and
# their own names keep a `pkill consortium-dns` elsewhere on a shared machine from stopping them.
OURS_BIN="$WORK/cdns-under-test"
cp "$built_bin" "$OURS_BIN"
if [ -n "$BASELINE_BIN" ]; then
    cp "$BASELINE_BIN" "$WORK/cdns-baseline"
    BASELINE_COPY="$WORK/cdns-baseline"
fi

# --- zone and query generation --------------------------------------------------------------
# Member i: nodeI.consortium.example -> nodeI.operator-(i mod 500).example.net, weight i%3+1.
member_target() { echo "node$1.operator-$(($1 % 500)).example.net."; }

generate_tree() { # $1 = members, $2 = dir
    local n=$1 d=$2
    mkdir -p "$d/ours" "$d/ref" "$d/queries"
    cp "$ROOT/zones/$ORIGIN.zone" "$d/ours/$ORIGIN.zone"
    awk -v n="$n" -v geo="$GEO" 'BEGIN {
        print "member-ttl = 300\n\n[[pool]]\nlabel = \"any\"\nttl = 30"
        if (geo) print "\n[[pool]]\nlabel = \"near\"\nttl = 30\npolicy = \"nearest\"\nnearest-k = 3"
        for (i = 1; i <= n; i++) {
            printf "\n[[member]]\nlabel = \"node%d\"\ntarget = \"node%d.operator-%d.example.net\"\nweight = %d\n",
                i, i, i % 500, i % 3 + 1
            # Spread over the inhabited latitudes, a fixed pattern.
            if (geo) printf "location = { latitude = %d, longitude = %d }\n", (i * 37) % 130 - 60, (i * 71) % 360 - 180
        }
    }' >"$d/ours/$ORIGIN.members.toml"
    # The reference servers: the same zone with the members written out as CNAMEs, and the
    # shared name fixed to member 1.
    {
        cat "$ROOT/zones/$ORIGIN.zone"
        echo "; $n generated members (consortium-dns reads them from the members file)"
        awk -v n="$n" 'BEGIN {
            for (i = 1; i <= n; i++)
                printf "node%d 300 IN CNAME node%d.operator-%d.example.net.\n", i, i, i % 500
        }'
        echo "; the shared name: a fixed CNAME here (consortium-dns picks per query)"
        echo "any 30 IN CNAME $(member_target 1)"
        [ "$GEO" = 0 ] || echo "near 30 IN CNAME $(member_target 1)"
    } >"$d/ref/$ORIGIN.zone"

    # Query files (dnsperf format). Fixed seeds: every server gets the same files.
    local q=$d/queries lines=$QUERY_LINES
    awk -v n="$n" -v l="$lines" -v o="$ORIGIN" 'BEGIN { srand(1);
        for (i = 0; i < l; i++) printf "node%d.%s A\n", int(rand() * n) + 1, o }' >"$q/nodes"
    echo "any.$ORIGIN A" >"$q/shared"
    if [ "$GEO" = 1 ]; then
        echo "near.$ORIGIN A" >"$q/near"
        echo "near.$ORIGIN A" >"$q/nearecs"
        "$GEO_PYTHON" "$ROOT/benches/geo_db.py" "$d/ours/city.mmdb" 50000 || die "benches/geo_db.py failed"
    fi
    awk -v l="$lines" -v o="$ORIGIN" 'BEGIN { srand(2);
        for (i = 0; i < l; i++) printf "nx-%d-%d.%s A\n", i, int(rand() * 1e9), o }' >"$q/nxdomain"
    # A realistic mix for a consortium zone: mostly node names and the shared name.
    awk -v n="$n" -v l="$lines" -v o="$ORIGIN" 'BEGIN { srand(3);
        for (i = 0; i < l; i++) {
            r = rand() * 100; k = int(rand() * n) + 1
            if (r < 45)      printf "node%d.%s A\n", k, o
            else if (r < 50) printf "node%d.%s AAAA\n", k, o
            else if (r < 75) printf "any.%s A\n", o
            else if (r < 80) printf "any.%s AAAA\n", o
            else if (r < 90) printf "nx-%d.%s A\n", int(rand() * 1e9), o
            else if (r < 93) printf "www.%s A\n", o
            else if (r < 95) printf "%s SOA\n", o
            else if (r < 97) printf "%s NS\n", o
            else if (r < 98) printf "%s MX\n", o
            else if (r < 99) printf "%s TXT\n", o
            else             printf "ns1.%s AAAA\n", o
        } }' >"$q/mix"
}

write_configs() { # $1 = dir; ports from BASE_PORT
    local d=$1
    mkdir -p "$d/nsd" "$d/knot/db"
    cat >"$d/ours/ours.toml" <<EOF
[server]
listen = ["127.0.0.1:$((BASE_PORT))"]
http-listen = ""
udp-workers = 1

[rrl]
enabled = false

[health]
kind = "none"

EOF
    if [ "$GEO" = 1 ]; then printf '\n[geoip]\ndatabase = "city.mmdb"\n' >>"$d/ours/ours.toml"; fi
    cat >>"$d/ours/ours.toml" <<EOF

[[zone]]
origin = "$ORIGIN"
file = "$ORIGIN.zone"
members = "$ORIGIN.members.toml"
EOF
    cat >"$d/nsd/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$((BASE_PORT + 1))
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$d/ref"
    database: ""
    zonefiles-write: 0
    zonelistfile: "$d/nsd/zone.list"
    xfrdfile: "$d/nsd/xfrd.state"
    xfrdir: "$d/nsd"
    pidfile: "$d/nsd/nsd.pid"
    logfile: "$d/nsd/nsd.log"
    verbosity: 0
    hide-version: yes
    minimal-responses: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: $ORIGIN
    zonefile: $ORIGIN.zone
EOF
    cat >"$d/knot/knot.conf" <<EOF
server:
    rundir: "$d/knot"
    listen: 127.0.0.1@$((BASE_PORT + 2))
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "$d/knot/knot.sock"
log:
  - target: stderr
    any: warning
database:
    storage: "$d/knot/db"
template:
  - id: default
    storage: "$d/ref"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: $ORIGIN
    file: "$ORIGIN.zone"
EOF
    if [ "$DNSSEC" = 1 ]; then
        printf 'dnssec = true\nkeys = "keys"\ndenial = "%s"\n' "$DENIAL" >>"$d/ours/ours.toml"
        "$OURS_BIN" dnssec keygen --config "$d/ours/ours.toml" --zone "$ORIGIN" >/dev/null ||
            die "dnssec keygen failed"
        # The reference servers serve the same zone pre-signed with the same key (-z: the
        # one KSK signs everything, as our CSK does).
        # NSEC3 as RFC 9276 and ours: SHA-1, no extra iterations, empty salt.
        nsec3_args=()
        [ "$DENIAL" = nsec3 ] && nsec3_args=(-3 - -H 0)
        dnssec-signzone -q -S -z "${nsec3_args[@]}" -d "$d/ref" -K "$d/ours/keys" -o "$ORIGIN" -f "$d/ref/$ORIGIN.zone.signed" \
            "$d/ref/$ORIGIN.zone" >/dev/null || die "dnssec-signzone failed"
        mv "$d/ref/$ORIGIN.zone.signed" "$d/ref/$ORIGIN.zone"
    fi
    sed -e "s/127.0.0.1:$((BASE_PORT))/127.0.0.1:$((BASE_PORT + 3))/" \
        -e "s/^udp-workers = 1$/udp-workers = 1\nquery-metrics = $BASELINE_QUERY_METRICS/" \
        "$d/ours/ours.toml" >"$d/ours/baseline.toml"
    nsd-checkconf "$d/nsd/nsd.conf" || die "nsd-checkconf rejected $d/nsd/nsd.conf"
    knotc -c "$d/knot/knot.conf" conf-check >/dev/null || die "knotc conf-check rejected $d/knot/knot.conf"
    nsd-checkzone "$ORIGIN" "$d/ref/$ORIGIN.zone" >/dev/null ||
        die "nsd-checkzone rejected $d/ref/$ORIGIN.zone"
    "$OURS_BIN" check --config "$d/ours/ours.toml" >/dev/null ||
        die "consortium-dns check rejected $d/ours"
}

port_of() {
    case $1 in
        consortium-dns) echo "$BASE_PORT" ;; nsd) echo $((BASE_PORT + 1)) ;;
        knot) echo $((BASE_PORT + 2)) ;; baseline) echo $((BASE_PORT + 3)) ;;
    esac
}

# The end of a server's log, for the reader of an error.
show_log() { # $1 = name, $2 = dir
    local log
    case $1 in
        consortium-dns) log=$2/ours/log ;; nsd) log=$2/nsd/nsd.log ;; knot) log=$2/knot/log ;;
        baseline) log=$2/ours/baseline.log ;;
    esac
    if [ -s "$log" ]; then
        echo "--- last lines of $log:" >&2
        tail -20 "$log" >&2
    fi
}

# Starts one server pinned to SERVER_CPU and waits until it answers the SOA; START_SECS = the
# seconds that took (the whole zone load). Not to be called in a subshell: it records the pid.
start_server() { # $1 = name, $2 = dir
    local name=$1 d=$2 port pid t0
    port=$(port_of "$name")
    if ss -Hlnut "sport = :$port" 2>/dev/null | grep -q .; then
        die "port $port is already in use (set BASE_PORT)"
    fi
    t0=$(date +%s.%N)
    case $name in
        consortium-dns)
            RUST_LOG=warn,consortium_dns=info taskset -c "$SERVER_CPU" "$OURS_BIN" serve \
                --config "$d/ours/ours.toml" >"$d/ours/log" 2>&1 &
            ;;
        baseline)
            RUST_LOG=warn,consortium_dns=info taskset -c "$SERVER_CPU" "$BASELINE_COPY" serve \
                --config "$d/ours/baseline.toml" >"$d/ours/baseline.log" 2>&1 &
            ;;
        nsd) taskset -c "$SERVER_CPU" nsd -d -c "$d/nsd/nsd.conf" >"$d/nsd/stderr" 2>&1 & ;;
        knot) taskset -c "$SERVER_CPU" knotd -c "$d/knot/knot.conf" >"$d/knot/log" 2>&1 & ;;
    esac
    pid=$!
    SERVER_PID[$name]=$pid
    local deadline=$(($(date +%s) + STARTUP_TIMEOUT))
    until dig +tries=1 +time=1 +short -p "$port" @127.0.0.1 "$ORIGIN" SOA 2>/dev/null | grep -q .; do
        if ! kill -0 "$pid" 2>/dev/null; then
            unset "SERVER_PID[$name]"
            show_log "$name" "$d"
            [ "$name" != nsd ] || tail -5 "$d/nsd/stderr" >&2 2>/dev/null || true
            die "$name exited during start-up (KEEP=1 keeps its logs under $WORK)"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "$name did not answer within ${STARTUP_TIMEOUT}s"
        sleep 0.1
    done
    START_SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
}

# Knot pins its UDP worker threads to CPUs by itself (worker i on CPU i), overriding the
# taskset it was started under: its one UDP worker lands on CPU 0, dnsperf's core. Every thread
# of every process of the server is pinned again here, and checked.
pin_server() { # $1 = name
    local name=$1 p t
    for p in $(tree_pids "${SERVER_PID[$name]}"); do
        taskset -a -p -c "$SERVER_CPU" "$p" >/dev/null 2>&1 || true
        for t in /proc/"$p"/task/*; do
            [ -d "$t" ] || continue
            [ "$(taskset -c -p "${t##*/}" 2>/dev/null | awk '{ print $NF }')" = "$SERVER_CPU" ] ||
                die "$name: thread ${t##*/} is not pinned to CPU $SERVER_CPU"
        done
    done
}

# Every process of a server (NSD forks a server child and xfrd).
tree_pids() {
    local c
    echo "$1"
    for c in $(pgrep -P "$1" 2>/dev/null); do tree_pids "$c"; done
}

# utime+stime ticks of every thread of every process of a server.
cpu_ticks() {
    local p total=0 t
    for p in $(tree_pids "$1"); do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}

# Largest VmHWM (peak, so zone loading counts) and largest VmRSS (now) among a server's
# processes, in kB, tab-separated. Forked NSD children share pages with their parent, so a sum
# would count the zone twice.
rss_kb() {
    local p
    for p in $(tree_pids "$1"); do cat "/proc/$p/status" 2>/dev/null || true; done |
        awk '/^VmHWM:/ && $2 > h { h = $2 } /^VmRSS:/ && $2 > r { r = $2 } END { printf "%d\t%d", h, r }'
}

# One dnsperf run; appends a line to $RESULTS.
run_once() { # members set transport server round dir
    local n=$1 set=$2 transport=$3 name=$4 round=$5 d=$6
    local pid=${SERVER_PID[$name]} port out before after
    port=$(port_of "$name")
    # Not under $d: consortium-dns watches its zone directory and that directory's parent, and
    # tens of megabytes of -v output there would make it spend CPU on file events.
    out="$WORK/dnsperf.out"
    local args=(-s 127.0.0.1 -p "$port" -d "$d/queries/$set" -l "$DURATION" -c "$CLIENTS"
        -q "$OUTSTANDING" -m "$transport" -v)
    if [ "$EDNS" = 1 ]; then args+=(-e); fi
    if [ "$DNSSEC" = 1 ]; then args+=(-D); fi
    # EDNS Client Subnet (option 8, RFC 7871 §6): family 1, source /24, scope 0, 198.51.100.
    if [ "$set" = nearecs ]; then args+=(-E 8:00011800c63364); fi
    if [ -n "$MAX_QPS" ]; then args+=(-Q "$MAX_QPS"); fi
    before=$(cpu_ticks "$pid")
    taskset -c "$CLIENT_CPU" dnsperf "${args[@]}" >"$out" 2>&1 || {
        tail -5 "$out" >&2
        die "dnsperf failed against $name ($set/$transport)"
    }
    after=$(cpu_ticks "$pid")
    if ! kill -0 "$pid" 2>/dev/null; then
        local status=0
        wait "$pid" || status=$?
        unset "SERVER_PID[$name]"
        show_log "$name" "$d"
        die "$name died during $set/$transport (exit status $status)"
    fi
    # -v prints one line per answer: "> RCODE NAME TYPE LATENCY"; p99 from a µs histogram.
    local p99
    p99=$(awk '$1 == ">" { h[int($NF * 1e6 + 0.5)]++ } END { for (k in h) print k, h[k] }' "$out" |
        sort -n | awk '{ c[NR] = $2; v[NR] = $1; total += $2 }
            END { if (total == 0) { print "NA"; exit } need = total * 0.99; s = 0
                  for (i = 1; i <= NR; i++) { s += c[i]; if (s >= need) { printf "%.6f\n", v[i] / 1e6; exit } } }')
    awk -v n="$n" -v set="$set" -v tr="$transport" -v srv="$name" -v round="$round" \
        -v ticks="$((after - before))" -v p99="$p99" '
        /Queries completed:/ { completed = $3 }
        /Queries lost:/ { lost = $3 }
        /Queries per second:/ { qps = $4 }
        /^Connection Statistics/ { connections = 1 }   # TCP: handshake latency follows
        /Average Latency/ && !connections { avg = $4 }
        /Response codes:/ { sub(/^ *Response codes: */, ""); codes = $0 }
        END { if (qps == "") exit 1
              printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
                  n, set, tr, srv, round, qps, completed, lost, avg, p99, ticks, codes }' \
        "$out" >>"$RESULTS" || die "could not read dnsperf statistics ($name $set/$transport)"
    rm -f "$out"
}

# --- the runs -------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
MEMORY="$WORK/memory.tsv"
: >"$RESULTS"
: >"$MEMORY"

# The numbers mean little on a busy machine: say so up front.
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    note "warning: load average is $load1 before the first run; other work will skew the results"
fi
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for n in "${MEMBER_COUNTS[@]}"; do
    d="$WORK/m$n"
    note "members=$n: generating zone, members and query files"
    generate_tree "$n" "$d"
    write_configs "$d"
    for s in "${server_list[@]}"; do
        note "members=$n: starting $s on port $(port_of "$s")"
        start_server "$s" "$d"
        pin_server "$s"
        printf '%s\t%s\t%s\n' "$n" "$s" "$START_SECS" >>"$d/start.tsv"
    done
    # A quick look that every server serves the same data (pool names aside).
    for qn in "node1.$ORIGIN A" "nx-check.$ORIGIN A" "www.$ORIGIN A" "$ORIGIN NS"; do
        ref=
        for s in "${server_list[@]}"; do
            # shellcheck disable=SC2086
            got=$(dig +tries=1 +time=2 +norec +noall +comments +answer -p "$(port_of "$s")" @127.0.0.1 $qn |
                awk '/status:/ { st = $6 } /^[^;]/ && NF { a = a " " tolower($1) " " $4 " " tolower($5) } END { print st a }')
            if [ -z "$ref" ]; then ref=$got; elif [ "$got" != "$ref" ]; then
                note "warning: $s answers '$qn' differently: '$got' vs '$ref'"
            fi
        done
    done
    for round in $(seq "$ROUNDS"); do
        for line in "${set_list[@]}"; do
            set=${line%%:*}
            transport=${line##*:}
            # Alternate the order each round so no server always runs first or last.
            k=$(((round - 1) % ${#server_list[@]}))
            order=("${server_list[@]:k}" "${server_list[@]:0:k}")
            for s in "${order[@]}"; do
                note "members=$n round $round/$ROUNDS: $set/$transport against $s (${DURATION}s)"
                run_once "$n" "$set" "$transport" "$s" "$round" "$d"
            done
        done
    done
    while IFS=$'\t' read -r mn s secs; do
        printf '%s\t%s\t%s\t%s\n' "$mn" "$s" "$secs" "$(rss_kb "${SERVER_PID[$s]}")" >>"$MEMORY"
    done <"$d/start.tsv"
    for s in "${server_list[@]}"; do stop_server "$s"; done
done
finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- the table ------------------------------------------------------------------------------
version_of() {
    case $1 in
        consortium-dns)
            local described
            described=$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || true)
            echo "$("$OURS_BIN" --version 2>/dev/null || echo consortium-dns)${described:+ ($described)}"
            ;;
        baseline) echo "baseline $("$BASELINE_BIN" --version 2>/dev/null || true) ($BASELINE_BIN, query-metrics = $BASELINE_QUERY_METRICS)" ;;
        nsd) nsd -v 2>&1 | awk 'NR == 1 { print "NSD " $3 }' ;;
        knot) knotd -V 2>&1 | awk '{ print "Knot DNS " $NF }' ;;
    esac
}
echo
echo "## Load benchmark, $started .. $finished"
echo
extra_env=
[ "$SETS" = "$DEFAULT_SETS" ] || extra_env+="SETS=\"$SETS\" "
[ "$REQUESTED_SERVERS" = "$DEFAULT_SERVERS" ] || extra_env+="SERVERS=\"$REQUESTED_SERVERS\" "
[ -z "$BASELINE_BIN" ] || [ "$BASELINE_SAME" = 1 ] || extra_env+="BASELINE_BIN=$BASELINE_BIN "
[ "$BASELINE_QUERY_METRICS" = true ] || extra_env+="BASELINE_QUERY_METRICS=false "
[ -z "$MAX_QPS" ] || extra_env+="MAX_QPS=$MAX_QPS "
[ "$DNSSEC" = 0 ] || extra_env+="DNSSEC=1 "
[ "$DENIAL" = nsec ] || extra_env+="DENIAL=$DENIAL "
[ "$GEO" = 0 ] || extra_env+="GEO=1 "
echo "Command: \`${extra_env}DURATION=$DURATION ROUNDS=$ROUNDS CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING EDNS=$EDNS benches/load.sh ${MEMBER_COUNTS[*]}\`"
echo
echo "Servers: $(for s in "${server_list[@]}"; do printf '%s; ' "$(version_of "$s")"; done)dnsperf $(dnsperf -H 2>&1 | awk '/^Version/ { print $2 }' | head -1)."
echo "One worker each, server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU ($(nproc) CPUs: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)); ${DURATION}s per run, $ROUNDS rounds, medians shown; lost = sum over rounds."
echo "**NSD and Knot serve the shared name \`any\` as one fixed CNAME (they cannot pick); consortium-dns picks per query.**"
echo "CPU µs/query = server user+system time over the run / queries answered. Ratios: qps (higher is better) · CPU per query (lower is better)."
echo
awk -F'\t' -v clk="$CLK_TCK" -v servers="$SERVERS" '
    function median(key,    n, i, j, t, a) {
        n = cnt[key]
        for (i = 1; i <= n; i++) a[i] = val[key, i]
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        if (n == 0) return ""
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function add(key, v) { cnt[key]++; val[key, cnt[key]] = v }
    function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
    FILENAME == ARGV[1] { rss[$1, $2] = $4; next }
    {
        line = $1 SUBSEP $2 SUBSEP $3
        if (!(line in seen)) { seen[line] = 1; lines[++nl] = line }
        k = line SUBSEP $4
        add(k SUBSEP "qps", $6); add(k SUBSEP "avg", $9 * 1000)
        if ($10 != "NA") add(k SUBSEP "p99", $10 * 1000)
        if ($7 > 0) add(k SUBSEP "cpu", $11 / clk * 1e6 / $7)
        lost[k] += $8
    }
    END {
        ns = split(servers, srv, " ")
        setname["nodes"] = "node names A"; setname["shared"] = "shared name `any` A (NSD/Knot: fixed CNAME)"
        setname["nxdomain"] = "NXDOMAIN"; setname["mix"] = "realistic mix"
        setname["near"] = "nearest pool `near` A, no ECS (NSD/Knot: fixed CNAME)"
        setname["nearecs"] = "nearest pool `near` A, ECS /24 (NSD/Knot: fixed CNAME)"
        print "| members | query set | proto | server | qps (median) | avg ms | p99 ms | lost | peak RSS MiB | CPU µs/query | ours/NSD qps · CPU | ours/Knot qps · CPU |"
        print "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= nl; i++) {
            split(lines[i], f, SUBSEP)
            for (s = 1; s <= ns; s++) {
                k = lines[i] SUBSEP srv[s]
                if (!((k SUBSEP "qps") in cnt)) continue
                q[srv[s]] = median(k SUBSEP "qps"); c[srv[s]] = median(k SUBSEP "cpu")
            }
            for (s = 1; s <= ns; s++) {
                k = lines[i] SUBSEP srv[s]
                if (!((k SUBSEP "qps") in cnt)) continue
                p99 = median(k SUBSEP "p99")
                vs_nsd = vs_knot = ""
                if (srv[s] == "consortium-dns") {
                    vs_nsd = ratio(q["consortium-dns"], q["nsd"]) " · " ratio(c["consortium-dns"], c["nsd"])
                    vs_knot = ratio(q["consortium-dns"], q["knot"]) " · " ratio(c["consortium-dns"], c["knot"])
                }
                printf "| %s | %s | %s | %s | %.0f | %.3f | %s | %d | %.1f | %.2f | %s | %s |\n",
                    f[1], setname[f[2]], toupper(f[3]), srv[s], q[srv[s]], median(k SUBSEP "avg"),
                    (p99 == "" ? "n/a" : sprintf("%.3f", p99)), lost[k], rss[f[1], srv[s]] / 1024,
                    c[srv[s]], vs_nsd, vs_knot
            }
        }
    }' "$MEMORY" "$RESULTS"

if [ "$GEO" = 1 ]; then
    echo
    echo "consortium-dns CPU per query, nearest pool / weighted pool \`any\` (issue 20: at most 1.2):"
    echo
    awk -F'\t' -v clk="$CLK_TCK" '$4 == "consortium-dns" && $7 > 0 && ($2 == "shared" || $2 == "near" || $2 == "nearecs") {
            k = $1 SUBSEP $3 SUBSEP $2; n[k]++; v[k, n[k]] = $11 / clk * 1e6 / $7; sizes[$1 SUBSEP $3] = 1 }
        function median(k,    i, j, t, a, c) { c = n[k]; if (!c) return ""
            for (i = 1; i <= c; i++) a[i] = v[k, i]
            for (i = 2; i <= c; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2 }
        END { for (m in sizes) { split(m, f, SUBSEP); w = median(m SUBSEP "shared")
                if (w == "") continue
                a = median(m SUBSEP "near"); e = median(m SUBSEP "nearecs")
                printf "- %s members, %s: weighted %.2f µs", f[1], toupper(f[2]), w
                if (a != "") printf "; nearest %.2f µs (%.2fx)", a, a / w
                if (e != "") printf "; nearest with ECS %.2f µs (%.2fx)", e, e / w
                print "" } }' "$RESULTS"
fi

echo
echo "Start-up (launch to first answer, i.e. full zone load) and memory:"
echo
awk -F'\t' '
    function per(v, b, i) {
        return (n[i] > basen[s[i]]) ? sprintf("%.0f B", (v - b) * 1024 / (n[i] - basen[s[i]])) : "-"
    }
    { n[NR] = $1; s[NR] = $2; t[NR] = $3; h[NR] = $4; r[NR] = $5
      if (!($2 in basen) || $1 < basen[$2]) { baseh[$2] = $4; baser[$2] = $5; basen[$2] = $1 } }
    END {
        print "| members | server | start-up s | peak RSS MiB | RSS after the runs MiB | per member, peak · after (vs smallest run) |"
        print "|---:|---|---:|---:|---:|---:|"
        for (i = 1; i <= NR; i++)
            printf "| %s | %s | %s | %.1f | %.1f | %s · %s |\n", n[i], s[i], t[i], h[i] / 1024, r[i] / 1024,
                per(h[i], baseh[s[i]], i), per(r[i], baser[s[i]], i)
    }' "$MEMORY"

echo
echo "Response codes seen (round 1):"
echo
awk -F'\t' '$5 == 1 { printf "- %s members, %s/%s, %s: %s\n", $1, $2, $3, $4, $12 }' "$RESULTS"
