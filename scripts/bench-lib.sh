# Sourced by the bench-* scripts: builds the release binary and runs a local cluster of
# `paxosdb server` processes (one per node, so each can be stopped, restarted and measured
# on its own), with helpers to read a node's metrics, status, disk use, memory and CPU
# time, to install a benchmark's Debian packages, and to run redis-server and
# redis-benchmark.
#
# Ports of node N, with BENCH_BASE_PORT B (default 17400, away from `cluster up`'s
# defaults): gRPC B+N, peer B+100+N, HTTP B+200+N; the Redis protocol is off unless
# RESP_ON=1, then on B+300+N.
# Data and node logs go to BENCH_DIR (default: a new temporary directory, removed at the
# end unless BENCH_KEEP=1).

cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
# BENCH_BIN: a paxosdb binary to run instead of building the release one (e.g. to try a
# script quickly with a debug build; its figures are not the release build's).
PAXOSDB=${BENCH_BIN:-"$CARGO_TARGET_DIR/release/paxosdb"}
BASE=${BENCH_BASE_PORT:-17400}
NODES=${BENCH_NODES:-3}
if [[ -n "${BENCH_DIR:-}" ]]; then
    DIR=$BENCH_DIR
    mkdir -p "$DIR"
else
    DIR=$(mktemp -d /tmp/paxosdb-bench.XXXXXX)
fi
declare -A PID=()
BG_PIDS=()

PEERS=$(for n in $(seq 1 "$NODES"); do printf '%s=127.0.0.1:%s,' "$n" $((BASE + 100 + n)); done)
PEERS=${PEERS%,}
ENDPOINTS=$(for n in $(seq 1 "$NODES"); do printf '127.0.0.1:%s,' $((BASE + n)); done)
ENDPOINTS=${ENDPOINTS%,}
export PAXOSDB_ENDPOINTS=$ENDPOINTS

build() {
    if [[ -n "${BENCH_BIN:-}" ]]; then
        echo "using $BENCH_BIN (BENCH_BIN), not a release build"
        return 0
    fi
    echo "building the release binary ..."
    cargo build --release --quiet
}

grpc_addr() { echo "127.0.0.1:$((BASE + $1))"; }
http_addr() { echo "127.0.0.1:$((BASE + 200 + $1))"; }
resp_port() { echo $((BASE + 300 + $1)); }
node_dir() { echo "$DIR/node-$1"; }
node_log() { echo "$DIR/node-$1.log"; }

# start_node N: starts node N in the background (its log appended to node-N.log), with
# the extra arguments in the array NODE_ARGS, if set.
start_node() {
    local n=$1
    "$PAXOSDB" server --id "$n" --peers "$PEERS" \
        --client-addr "$(grpc_addr "$n")" --http-addr "$(http_addr "$n")" \
        --resp-addr "$([[ ${RESP_ON:-0} == 1 ]] && echo "127.0.0.1:$(resp_port "$n")" || echo off)" \
        --data-dir "$(node_dir "$n")" ${NODE_ARGS[@]+"${NODE_ARGS[@]}"} \
        >>"$(node_log "$n")" 2>&1 &
    PID[$n]=$!
}

# stop_node N [SIGNAL]: signals node N (default TERM) and waits until it has exited.
stop_node() {
    local n=$1 sig=${2:-TERM}
    kill "-$sig" "${PID[$n]}" 2>/dev/null || true
    wait "${PID[$n]}" 2>/dev/null || true
    unset "PID[$n]"
}

cleanup() {
    local p
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
    for n in "${!PID[@]}"; do wait "${PID[$n]}" 2>/dev/null || true; done
    if [[ "${BENCH_KEEP:-0}" == 1 || -n "${BENCH_DIR:-}" ]]; then
        echo "data and node logs kept in $DIR"
    else
        rm -rf "$DIR"
    fi
}

# metric N NAME: the value of an unlabelled sample of node N's /metrics (empty if down).
metric() {
    { curl -s --max-time 2 "http://$(http_addr "$1")/metrics" || true; } |
        awk -v m="$2" '$1 == m { print $2 }'
}

# puts_served N: gRPC puts node N has served (its share of the bench's operations).
puts_served() {
    { curl -s --max-time 2 "http://$(http_addr "$1")/metrics" || true; } |
        awk '$1 == "paxosdb_requests_total{protocol=\"grpc\",op=\"put\"}" { print $2 }'
}

# status_json: `paxosdb status --json` of the whole cluster.
status_json() { "$PAXOSDB" status --json --timeout 5s 2>/dev/null || true; }

# node_field N FIELD: a field of node N in `status --json` (empty when unreachable).
node_field() {
    status_json | jq -r --argjson n "$1" --arg f "$2" \
        '.nodes[] | select(.id == $n) | .[$f] // empty' 2>/dev/null || true
}

# wait_leader: waits (up to 60 s) until some node reports itself leader; prints its id.
wait_leader() {
    local i l
    for i in $(seq 1 120); do
        l=$(status_json | jq -r '.nodes[] | select(.role == "leader") | .id' 2>/dev/null | head -1)
        if [[ -n "$l" ]]; then
            echo "$l"
            return 0
        fi
        sleep 0.5
    done
    echo "no leader after 60 s" >&2
    return 1
}

# rss_kb PID / hwm_kb PID: current and peak resident memory of a process, in KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# reset_hwm PID: restarts the peak (VmHWM) from the current RSS (Linux >= 4.0).
reset_hwm() { echo 5 >"/proc/$1/clear_refs"; }

du_bytes() { { du -sb "$1" 2>/dev/null || true; } | cut -f1; }
mib() { awk -v b="${1:-0}" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# need_package COMMAND PACKAGE: installs the Debian package PACKAGE with apt-get unless
# COMMAND is already on the PATH. For benchmark dependencies only (scripts/setup and CI
# never need them).
need_package() {
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing the Debian package $2 (a dependency of this benchmark only) ..."
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$2" >"$DIR/apt-$2.log" 2>&1; then
        "${sudo[@]}" apt-get update -q >>"$DIR/apt-$2.log" 2>&1 || true
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "$2" >>"$DIR/apt-$2.log" 2>&1 || {
            echo "could not install $2 (log: $DIR/apt-$2.log)" >&2
            return 1
        }
    fi
    command -v "$1" >/dev/null 2>&1 || {
        echo "$2 is installed but has no $1 on the PATH" >&2
        return 1
    }
}

# port_free PORT: fails, saying so, if something listens on 127.0.0.1:PORT already (a
# service the package started, another benchmark), which would be measured instead.
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        echo "port $1 is taken by another process: stop it (or move this benchmark's ports)" >&2
        return 1
    fi
}

# wait_port PORT [SECONDS]: waits until something accepts connections on 127.0.0.1:PORT.
wait_port() {
    local i
    for i in $(seq 1 $((${2:-30} * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1 after ${2:-30} s" >&2
    return 1
}

# cpu_ticks PID...: user + system CPU time of the processes so far, in clock ticks
# (fields 14 and 15 of /proc/PID/stat; the name in field 2 may hold spaces, so fields are
# counted after its closing parenthesis).
cpu_ticks() {
    local p total=0 rest
    for p in "$@"; do
        rest=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        # After "pid (comm) ", field 3 (state) is the first: utime is the 12th, stime the 13th.
        total=$((total + $(awk '{ print $12 + $13 }' <<<"$rest")))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# cpu_per_1k TICKS OPS: CPU seconds per 1,000 operations.
cpu_per_1k() {
    awk -v t="$1" -v o="$2" -v hz="$CLK_TCK" 'BEGIN { if (o > 0) printf "%.3f", t / hz / o * 1000; else print "-" }'
}

# ratio A B: A / B with two decimals ("-" when B is 0 or missing).
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# bench_field OUTPUT NAME: a figure from `paxosdb bench`'s output: throughput (ops/s),
# ops (answered operations), errors, p50 and p99 (ms).
bench_field() {
    awk -v f="$2" '{
        for (i = 1; i <= NF; i++) {
            split($i, kv, "=")
            if (f == "throughput" && kv[1] == "throughput") print kv[2]
            if (f == "ops" && kv[1] == "ops") print kv[2]
            if (f == "errors" && kv[1] == "errors") print kv[2]
            if (f == "p50" && kv[1] == "p50") print kv[2]
            if (f == "p99" && kv[1] == "p99") print kv[2]
        }
    }' <<<"$1"
}

# start_redis PORT: a redis-server on 127.0.0.1:PORT in $DIR/redis, every write fsynced
# before it is acknowledged (appendonly yes, appendfsync always; no RDB snapshots), as
# the baseline of a durable single-machine store. Sets REDIS_PID.
start_redis() {
    port_free "$1"
    mkdir -p "$DIR/redis"
    redis-server --port "$1" --bind 127.0.0.1 --dir "$DIR/redis" --appendonly yes \
        --appendfsync always --save "" --daemonize no --logfile "$DIR/redis.log" &
    REDIS_PID=$!
    BG_PIDS+=("$REDIS_PID")
    wait_port "$1"
}

stop_redis() {
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
}

# redis_bench PORT TEST CLIENTS SECONDS: runs redis-benchmark's TEST (set or get; values of
# VALUE_SIZE bytes over 10,000 random keys) with CLIENTS connections for about SECONDS:
# a short run first estimates the rate, then the measured run issues rate x SECONDS
# requests (redis-benchmark counts requests, it has no duration). Prints "OPS_PER_S P50_MS
# REQUESTS".
redis_bench() {
    local port=$1 test=$2 clients=$3 secs=$4 probe n out
    probe=$(redis-benchmark -h 127.0.0.1 -p "$port" -t "$test" -c "$clients" \
        -n $((clients * 20)) -d "${VALUE_SIZE:-256}" -r 10000 -q 2>/dev/null |
        awk '/requests per second/ { for (i = 1; i <= NF; i++) if ($(i+1) == "requests") print $i }' | tail -1)
    n=$(awk -v r="${probe:-100}" -v s="$secs" -v c="$clients" \
        'BEGIN { n = int(r * s); if (n < c * 10) n = c * 10; print n }')
    out=$(redis-benchmark -h 127.0.0.1 -p "$port" -t "$test" -c "$clients" -n "$n" \
        -d "${VALUE_SIZE:-256}" -r 10000 -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1)
    awk -v n="$n" '{
        for (i = 1; i <= NF; i++) {
            if ($(i+1) == "requests") ops = $i
            if ($i ~ /^p50=/) { p = $i; sub("p50=", "", p) }
        }
    } END { printf "%.0f %s %s\n", ops, (p == "" ? "-" : p), n }' <<<"$out"
}

# sqlite_kv_bench FILE MODE THREADS SECONDS: plain SQLite as a key-value store on FILE (a
# table kv(k TEXT PRIMARY KEY, v BLOB), WAL, synchronous=FULL: every commit fsynced),
# through Python's sqlite3 module, THREADS threads each with its own connection for
# SECONDS. MODE put: each operation one INSERT OR REPLACE of a VALUE_SIZE-byte value
# over 10,000 random keys, its own transaction (writers wait on SQLite's write lock, as
# they do); MODE get: each operation one SELECT of a random key. The table is created
# and filled with the 10,000 keys first if absent. Prints "OPS_PER_S P50_MS".
sqlite_kv_bench() {
    python3 - "$1" "$2" "$3" "$4" "${VALUE_SIZE:-256}" <<'PY'
import os, random, sqlite3, sys, threading, time
path, mode, threads, secs, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
KEYS = 10000
setup = sqlite3.connect(path, isolation_level=None)
setup.execute("PRAGMA journal_mode=WAL")
setup.execute("PRAGMA synchronous=FULL")
setup.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)")
if setup.execute("SELECT count(*) FROM kv").fetchone()[0] < KEYS:
    setup.execute("BEGIN")
    for i in range(KEYS):
        setup.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (f"bench-{i:08}", os.urandom(size)))
    setup.execute("COMMIT")
setup.close()
pool = os.urandom(max(size * 4, 1 << 20))
lat = [[] for _ in range(threads)]
deadline = time.monotonic() + secs
def worker(t):
    c = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    c.execute("PRAGMA synchronous=FULL")
    rnd = random.Random(t)
    mine = lat[t]
    while True:
        s = time.monotonic()
        if s >= deadline:
            break
        key = f"bench-{rnd.randrange(KEYS):08}"
        if mode == "put":
            off = rnd.randrange(len(pool) - size + 1)
            c.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, pool[off:off + size]))
        else:
            c.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        mine.append(time.monotonic() - s)
start = time.monotonic()
ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
elapsed = time.monotonic() - start
all_lat = sorted(x for l in lat for x in l)
p50 = all_lat[len(all_lat) // 2] * 1000 if all_lat else 0
print(f"{len(all_lat) / elapsed:.0f} {p50:.3f}")
PY
}
