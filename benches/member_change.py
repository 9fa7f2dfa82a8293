"""End to end: how long a one-member change takes to be served, and start-up (issue 23).

    /usr/bin/python3 benches/member_change.py [MEMBERS ...]      (default: 10 1000 10000 100000)

Debian's Python with python3-dnspython. For each size, the same zone three ways: consortium-dns
reading a members file (release build, `cargo build --release` first), and NSD and Knot DNS
serving the members written out as CNAMEs. Start-up: launch to the first authoritative answer.
A change, ROUNDS times (default 5), alternately adding and removing one member:

- consortium-dns: the new members file is renamed over the old one, as an editor or a git
  checkout does; the file watcher (300 ms debounce) reloads by itself;
- NSD: the new zone file renamed into place, then `nsd-control reload`;
- Knot: the same, then `knotc zone-reload`.

The time runs from the rename to the first answer that shows the change (the new member's
CNAME, or NXDOMAIN for the removed one), asked over UDP every millisecond. Printed as markdown;
medians of the rounds. Send nothing off the machine: every server listens on 127.0.0.1.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGIN = "consortium.example"
ROUNDS = int(os.environ.get("ROUNDS", "5"))
BASE_PORT = int(os.environ.get("BASE_PORT", "26353"))
SERVERS = os.environ.get("SERVERS", "consortium-dns nsd knot").split()
for server in SERVERS:
    if server not in ("consortium-dns", "nsd", "knot"):
        raise SystemExit(f"member_change.py: unknown server {server!r} in SERVERS")


def members_file(n, extra):
    parts = ["member-ttl = 300\n\n[[pool]]\nlabel = \"any\"\nttl = 30\n"]
    for i in list(range(1, n + 1)) + extra:
        parts.append(
            f"\n[[member]]\nlabel = \"node{i}\"\ntarget = \"node{i}.operator-{i % 500}.example.net\"\n"
            f"weight = {i % 3 + 1}\n"
        )
    return "".join(parts)


def zone_file(base, n, extra, serial):
    lines = [base.replace("2026112501", str(serial))]
    for i in list(range(1, n + 1)) + extra:
        lines.append(f"node{i} 300 IN CNAME node{i}.operator-{i % 500}.example.net.\n")
    lines.append("any 30 IN CNAME node1.operator-1.example.net.\n")
    return "".join(lines)


def replace(path, text):
    temp = path + ".new"
    with open(temp, "w") as f:
        f.write(text)
    os.rename(temp, path)


def answer(port, name):
    query = dns.message.make_query(name, "CNAME")
    try:
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.05)
    except Exception:
        return None
    return reply


def wait_until(port, name, present, limit=120.0):
    """Seconds until `name` is served (present) or NXDOMAIN (absent)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        reply = answer(port, name)
        if reply is not None and reply.flags & dns.flags.AA:
            has = any(r.rdtype == dns.rdatatype.CNAME for r in reply.answer)
            if has == present and (present or reply.rcode() == dns.rcode.NXDOMAIN):
                return time.monotonic() - start
        time.sleep(0.001)
    raise SystemExit(f"member_change.py: {name} not {'served' if present else 'gone'} within {limit} s on port {port}")


def start(name, d, n, port):
    """Starts a server on the size-n tree in d; returns (process, seconds to the first answer)."""
    base = open(os.path.join(ROOT, "zones", f"{ORIGIN}.zone")).read()
    if name == "consortium-dns":
        with open(os.path.join(d, "members.toml"), "w") as f:
            f.write(members_file(n, []))
        shutil.copy(os.path.join(ROOT, "zones", f"{ORIGIN}.zone"), os.path.join(d, "zone"))
        with open(os.path.join(d, "ours.toml"), "w") as f:
            f.write(
                f'[server]\nlisten = ["127.0.0.1:{port}"]\nhttp-listen = ""\nudp-workers = 1\nstate-file = ""\n\n'
                '[rrl]\nenabled = false\n\n[health]\nkind = "none"\n\n'
                f'[[zone]]\norigin = "{ORIGIN}"\nfile = "zone"\nmembers = "members.toml"\n'
            )
        command = [os.path.join(ROOT, "target/release/consortium-dns"), "serve", "--config", os.path.join(d, "ours.toml")]
    else:
        # NSD and Knot: the members written out as CNAMEs.
        with open(os.path.join(d, "zone"), "w") as f:
            f.write(zone_file(base, n, [], 2026112501))
    if name == "nsd":
        with open(os.path.join(d, "nsd.conf"), "w") as f:
            f.write(
                f"server:\n    ip-address: 127.0.0.1@{port}\n    do-ip6: no\n    server-count: 1\n"
                f'    username: ""\n    chroot: ""\n    zonesdir: "{d}"\n    database: ""\n    zonefiles-write: 0\n'
                f'    zonelistfile: "{d}/zone.list"\n    xfrdfile: "{d}/xfrd.state"\n    xfrdir: "{d}"\n'
                f'    pidfile: "{d}/nsd.pid"\n    logfile: "{d}/nsd.log"\n    verbosity: 0\n    rrl-ratelimit: 0\n'
                f"remote-control:\n    control-enable: yes\n    control-interface: {d}/nsd.ctl\n"
                f"zone:\n    name: {ORIGIN}\n    zonefile: zone\n"
            )
        command = ["nsd", "-d", "-c", os.path.join(d, "nsd.conf")]
    elif name == "knot":
        os.makedirs(os.path.join(d, "db"), exist_ok=True)
        with open(os.path.join(d, "knot.conf"), "w") as f:
            f.write(
                f'server:\n    rundir: "{d}"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n'
                f'    background-workers: 1\ncontrol:\n    listen: "{d}/knot.sock"\n'
                "log:\n  - target: stderr\n    any: warning\n"
                f'database:\n    storage: "{d}/db"\ntemplate:\n  - id: default\n    storage: "{d}"\n'
                "    zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n"
                f'zone:\n  - domain: {ORIGIN}\n    file: "zone"\n'
            )
        command = ["knotd", "-c", os.path.join(d, "knot.conf")]
    launched = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(d, "stderr"), "w"), env=dict(os.environ, NO_COLOR="1"))
    try:
        wait_until(port, f"node1.{ORIGIN}", True, limit=600)
    except SystemExit:
        process.kill()
        raise SystemExit(f"member_change.py: {name} did not start; its stderr:\n" + open(os.path.join(d, "stderr")).read())
    return process, time.monotonic() - launched


def change(name, d, n, port, round_):
    """One change: round 0, 2, 4... adds node n+1, round 1, 3... removes it; seconds to served."""
    adding = round_ % 2 == 0
    extra = [n + 1] if adding else []
    serial = 2026112502 + round_
    if name == "consortium-dns":
        text = members_file(n, extra)
        started = time.monotonic()
        replace(os.path.join(d, "members.toml"), text)
    else:
        base = open(os.path.join(ROOT, "zones", f"{ORIGIN}.zone")).read()
        text = zone_file(base, n, extra, serial)
        started = time.monotonic()
        replace(os.path.join(d, "zone"), text)
        if name == "nsd":
            control = ["nsd-control", "-c", os.path.join(d, "nsd.conf"), "reload", ORIGIN]
        else:
            control = ["knotc", "-c", os.path.join(d, "knot.conf"), "zone-reload", ORIGIN]
        subprocess.run(control, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(port, f"node{n + 1}.{ORIGIN}", adding)
    return time.monotonic() - started


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [10, 1000, 10000, 100000]
    if "consortium-dns" in SERVERS:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "consortium-dns"], cwd=ROOT, check=True)
    rows = []
    for n in sizes:
        for s, name in enumerate(SERVERS):
            port = BASE_PORT + s
            with tempfile.TemporaryDirectory(prefix="cdns-change-") as d:
                process, startup = start(name, d, n, port)
                try:
                    times = [change(name, d, n, port, r) for r in range(ROUNDS)]
                finally:
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                rows.append((n, name, startup, statistics.median(times), min(times), max(times)))
                print(f"member_change.py: {n} members, {name}: start-up {startup:.3f} s, change "
                      f"median {statistics.median(times) * 1000:.0f} ms", file=sys.stderr)
    print(f"\nCommand: `ROUNDS={ROUNDS} /usr/bin/python3 benches/member_change.py {' '.join(map(str, sizes))}`\n")
    print("| members | server | start-up s | one-member change, median ms (min-max) | change, more than at the smallest size |")
    print("|---:|---|---:|---:|---:|")
    smallest = {}
    for n, name, startup, median, low, high in rows:
        smallest.setdefault(name, median)
        extra = f"+{(median - smallest[name]) * 1000:.0f} ms"
        print(f"| {n:,} | {name} | {startup:.3f} | {median * 1000:.0f} ({low * 1000:.0f}-{high * 1000:.0f}) | {extra} |")


if __name__ == "__main__":
    main()
