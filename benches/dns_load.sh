#!/usr/bin/env bash
# DNS collector under load: dnsperf against a local dnsmasq, baseline (no
# collector) and with the collector, in the same run, at 10k, 30k and the
# maximum rate. Reports the collector's CPU (its process, all threads, plus
# the in-kernel run time of its BPF programs) per 10k queries/s and the
# query/response match rate.
#
#   sudo bash benches/dns_load.sh [seconds per run, default 10]
#
# Environment: DNS_LOAD_RATES (default "10000 30000 max"); DNS_LOAD_BIN, a
# prebuilt dns_load example to measure instead of building this checkout
# (e.g. an older build, for a before/after table); DNS_LOAD_PRELOAD, a
# malloc library to LD_PRELOAD into the collector process only (allocator
# comparisons, e.g. /usr/lib/x86_64-linux-gnu/libjemalloc.so.2).
#
# Needs root (BPF), dnsmasq-base, dnsperf (scripts/install-deps) and cargo.
# Only loopback traffic; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
RATES=${DNS_LOAD_RATES:-"10000 30000 max"}
WORK=$(mktemp -d /tmp/tapio-dns-load.XXXXXX)
DNSMASQ_PID=""
COLLECTOR_PID=""
cleanup() {
  [ -n "$COLLECTOR_PID" ] && kill "$COLLECTOR_PID" 2>/dev/null || true
  [ -n "$DNSMASQ_PID" ] && kill "$DNSMASQ_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${DNS_LOAD_BIN:-}" ]; then
  BIN=$DNS_LOAD_BIN
else
  cargo build --release --quiet -p tapio-collector-dns --features testing --example dns_load
  BIN="${CARGO_TARGET_DIR:-target}/release/examples/dns_load"
fi
PRELOAD=()
[ -n "${DNS_LOAD_PRELOAD:-}" ] && PRELOAD=(env "LD_PRELOAD=$DNS_LOAD_PRELOAD")

# A free port for dnsmasq (UDP).
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
  --user=root --group=root --pid-file="$WORK/dnsmasq.pid" --port="$PORT" --listen-address=127.0.0.1 \
  --local=/tapio.test/ --host-record=www.tapio.test,10.53.0.7,fd00::53:7 \
  --cname=alias.tapio.test,www.tapio.test --srv-host=_http._tcp.tapio.test,www.tapio.test,8080,1,2 \
  --host-record=web.shop.svc.cluster.local,10.96.0.10 >/dev/null 2>&1 &
DNSMASQ_PID=$!
for _ in $(seq 50); do dig +short +tries=1 +timeout=1 @127.0.0.1 -p "$PORT" www.tapio.test | grep -q 10.53.0.7 && break; sleep 0.1; done

# A mix of answers: A, AAAA, CNAME chain, SRV, NXDOMAIN, Kubernetes service name.
cat >"$WORK/queries" <<'EOF'
www.tapio.test A
www.tapio.test AAAA
alias.tapio.test A
_http._tcp.tapio.test SRV
nx.tapio.test A
web.shop.svc.cluster.local A
EOF

proc_cpu() { # utime+stime of a pid in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"
}
sys_busy() { # busy and total jiffies of all CPUs
  awk '/^cpu /{busy=$2+$3+$4+$7+$8; print busy, busy+$5+$6}' /proc/stat
}

run_dnsperf() { # $1 rate -> writes $WORK/perf.txt and $WORK/perf.time
  local q=()
  [ "$1" != max ] && q=(-Q "$1")
  /usr/bin/time -f "%U %S" -o "$WORK/perf.time" \
    dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries" -l "$SECS" -c 4 -q 500 "${q[@]}" >"$WORK/perf.txt" 2>&1
}

measure() { # $1 rate, $2 mode (baseline|collector) -> one JSON line
  local rate=$1 mode=$2 d0 d1 s0 s1
  if [ "$mode" != baseline ]; then
    local extra=()
    [ "$mode" = responses-only ] && extra=(--no-query-events)
    [ "$mode" = bare ] && extra=(--bare)
    "${PRELOAD[@]}" "$BIN" --port "$PORT" --seconds $((SECS + 2)) "${extra[@]}" >"$WORK/collector.out" 2>"$WORK/collector.err" &
    COLLECTOR_PID=$!
    for _ in $(seq 200); do grep -q ready "$WORK/collector.out" 2>/dev/null && break; sleep 0.05; done
    grep -q ready "$WORK/collector.out" || { cat "$WORK/collector.err" >&2; exit 1; }
  fi
  d0=$(proc_cpu "$DNSMASQ_PID"); s0=$(sys_busy)
  run_dnsperf "$rate"
  d1=$(proc_cpu "$DNSMASQ_PID"); s1=$(sys_busy)
  if [ "$mode" != baseline ]; then
    wait "$COLLECTOR_PID"; COLLECTOR_PID=""
  else
    echo '{}' >"$WORK/collector.out"
  fi
  python3 - "$rate" "$mode" "$SECS" "$d0" "$d1" "$s0" "$s1" "$WORK" <<'EOF'
import json, re, sys
rate, mode, secs, d0, d1, s0, s1, work = sys.argv[1:]
secs = float(secs)
perf = open(f"{work}/perf.txt").read()
def num(label):
    m = re.search(label + r":\s+([\d.]+)", perf)
    return float(m.group(1)) if m else 0.0
pu, ps = map(float, open(f"{work}/perf.time").read().split()[-2:])
b0, t0 = map(int, s0.split()); b1, t1 = map(int, s1.split())
out = {
    "rate": rate, "mode": mode,
    "qps": num("Queries per second"), "completed": num("Queries completed"), "lost": num("Queries lost"),
    "dnsmasq_cpu_pct": (float(d1) - float(d0)) / secs * 100,
    "dnsperf_cpu_pct": (pu + ps) / secs * 100,
    "system_busy_pct": (b1 - b0) / max(t1 - t0, 1) * 100 * 2,  # of one core, 2 cores
}
lines = [l for l in open(f"{work}/collector.out") if l.startswith("{")]
c = json.loads(lines[-1]) if lines else {}
if c:
    out["collector_cpu_pct"] = c["cpu_s"] / secs * 100
    out["bpf_cpu_pct"] = c["bpf_run_ns"] / 1e9 / secs * 100
    out["bpf_ns_per_run"] = c["bpf_run_ns"] / max(c["bpf_runs"], 1)
    out["matched"] = c["matched"]
    out["match_rate_pct"] = c["matched"] / max(out["completed"], 1) * 100
    for k in ("unmatched", "timeouts", "evictions", "dropped_kernel", "dropped_queue", "response_events", "query_events"):
        out[k] = c[k]
print(json.dumps(out))
EOF
}

echo "# dns_load: ${SECS}s per run, dnsmasq on 127.0.0.1:$PORT, kernel $(uname -r), $(nproc) CPUs, collector $BIN${DNS_LOAD_PRELOAD:+ (LD_PRELOAD=$DNS_LOAD_PRELOAD)}"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
RESULTS="$WORK/results.jsonl"
# Modes: no collector; the floor (the collector's BPF object, same
# settings, its ring read by a consumer that only counts records); the
# collector with defaults (dns.query + dns.response
# + dns.timeout events); the collector with emit_queries = false (responses
# carry the matched query, so no information is lost).
for rate in $RATES; do
  for mode in baseline bare collector responses-only; do
    measure "$rate" "$mode" | tee -a "$RESULTS"
  done
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print("| target qps | mode | qps (baseline) | collector CPU (process + BPF), % of a core | per 10k qps | of which BPF | match rate | timeouts / drops kernel+queue |")
print("|---|---|---|---|---|---|---|---|")
GROUP = 4  # baseline, bare, collector, responses-only
for i in range(0, len(rows), GROUP):
    base = rows[i]
    for col in rows[i + 1:i + GROUP]:
        total = col["collector_cpu_pct"] + col["bpf_cpu_pct"]
        per10k = total / (col["qps"] / 10000) if col["qps"] else 0
        matched = ("– (counts records only)" if col["mode"] == "bare"
                   else f"{col['match_rate_pct']:.2f} % ({col['matched']}/{col['completed']:.0f})")
        print(f"| {col['rate']} | {col['mode']} | {col['qps']:.0f} ({base['qps']:.0f}) | {total:.1f} | {per10k:.2f} | "
              f"{col['bpf_cpu_pct']:.1f} ({col['bpf_ns_per_run']:.0f} ns/packet) | {matched} | "
              f"{col['timeouts']} / {col['dropped_kernel']}+{col['dropped_queue']} |")
# Machine-readable summary (scripts/bench-all): bench, what, unit, tapio, baseline, baseline value, ratio.
for i in range(0, len(rows), GROUP):
    base = rows[i]
    for col in rows[i + 1:i + GROUP]:
        what = f"{col['rate']} qps target, {col['mode']}"
        print(f"TAPIO-BENCH\tdns_load\t{what}: qps\tqps\t{col['qps']:.0f}\tdnsperf without collector\t{base['qps']:.0f}\t{col['qps'] / max(base['qps'], 1):.3f}")
        print(f"TAPIO-BENCH\tdns_load\t{what}: machine CPU busy\t% of a core\t{col['system_busy_pct']:.1f}\tdnsperf without collector\t{base['system_busy_pct']:.1f}\t{col['system_busy_pct'] / max(base['system_busy_pct'], 0.1):.3f}")
EOF
