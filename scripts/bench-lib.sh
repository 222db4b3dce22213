# Sourced by scripts/bench-compaction and scripts/bench-catchup: builds the release binary
# and runs a local cluster of `paxosdb server` processes (one per node, so each can be
# stopped, restarted and measured on its own), with helpers to read a node's metrics,
# status, disk use and memory.
#
# Ports of node N, with BENCH_BASE_PORT B (default 17400, away from `cluster up`'s
# defaults): gRPC B+N, peer B+100+N, HTTP B+200+N; the Redis protocol is off.
# Data and node logs go to BENCH_DIR (default: a new temporary directory, removed at the
# end unless BENCH_KEEP=1).

cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
PAXOSDB="$CARGO_TARGET_DIR/release/paxosdb"
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
    echo "building the release binary ..."
    cargo build --release --quiet
}

grpc_addr() { echo "127.0.0.1:$((BASE + $1))"; }
http_addr() { echo "127.0.0.1:$((BASE + 200 + $1))"; }
node_dir() { echo "$DIR/node-$1"; }
node_log() { echo "$DIR/node-$1.log"; }

# start_node N: starts node N in the background (its log appended to node-N.log), with
# the extra arguments in the array NODE_ARGS, if set.
start_node() {
    local n=$1
    "$PAXOSDB" server --id "$n" --peers "$PEERS" \
        --client-addr "$(grpc_addr "$n")" --http-addr "$(http_addr "$n")" \
        --resp-addr off --data-dir "$(node_dir "$n")" ${NODE_ARGS[@]+"${NODE_ARGS[@]}"} \
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
