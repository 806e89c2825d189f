#!/usr/bin/env bash
# A real two-node Ray cluster on this one machine: a head node and one extra worker node, each
# with its own raylet, object store and temp dir, token auth on, 1 CPU each by default.
#
#   cluster/local.sh start          start both nodes; returns 0 once the cluster is ready
#   cluster/local.sh wait [SECONDS] wait until 2 nodes are alive and the job API answers
#   cluster/local.sh status         our processes, `ray status`, the environment to use (3: stopped)
#   cluster/local.sh env            print the export lines:  eval "$(cluster/local.sh env)"
#   cluster/local.sh stop           stop every process of this cluster, and only those
#
# Then, from the repository root:
#   eval "$(cluster/local.sh env)"
#   ray job submit --working-dir . -- python -c "import ray; ray.init(); print(ray.nodes())"
#
# `env` prints: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (the cluster's token),
# RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265 (read by `ray job ...`), and
# RAY_ADDRESS=127.0.0.1:6379 (the GCS, for `ray status` and drivers started by hand).
#
# Auth: Ray 2.60 turns token auth on for new local clusters. We choose it explicitly
# (RAY_AUTH_MODE=token on both nodes) with a token of our own, $FER_RAY_LOCAL_DIR/auth_token,
# new at every start (RAY_AUTH_TOKEN_PATH), so the cluster never reads or writes
# ~/.ray/auth_token. Every client needs the same two variables; jobs inherit them from the
# nodes. Never put the token in a runtime_env (it would show in the job's metadata).
#
# Network: the dashboard and job API listen on 127.0.0.1 only. Ray on Linux replaces a
# loopback --node-ip-address with the host's address and its gRPC servers (GCS, raylets,
# object managers) listen on all interfaces; the token is what guards those.
#
# Settings (environment variables):
#   FER_RAY_LOCAL_DIR        state: token, env file, logs, Ray temp dirs (/tmp/fer-ray-local-$UID)
#   FER_RAY_GCS_PORT         head GCS port (6379)
#   FER_RAY_DASHBOARD_PORT   dashboard and job API port (8265)
#   FER_RAY_HEAD_CPUS        CPUs the head advertises (1)
#   FER_RAY_WORKER_CPUS      CPUs the worker node advertises (1)
#   FER_RAY_NUM_GPUS         GPUs each node advertises (unset: Ray detects them)
#   FER_RAY_OBJECT_STORE_MB  object store per node, MiB (512)
#   FER_RAY_START_TIMEOUT    seconds `start` and `wait` wait for readiness (120)
#   FER_RAY_KEEP_LOGS        1: `stop` keeps the nodes' Ray logs (default: removed)
#   RAY                      ray executable (default: this repo's .venv/bin/ray, else `ray` on PATH)
#
# Processes are found by a marker variable (FER_RAY_LOCAL_CLUSTER=<id of this start>) that
# `ray start` passes on to everything the nodes spawn, job drivers included; `stop` signals
# exactly those process ids (never `ray stop`, which would stop every Ray on the machine).
# The other ports (agents, client server, workers) are picked free at start, so the cluster
# runs beside other Ray instances on the same machine.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$(realpath -m "${FER_RAY_LOCAL_DIR:-/tmp/fer-ray-local-$(id -u)}")"
GCS_PORT="${FER_RAY_GCS_PORT:-6379}"
DASH_PORT="${FER_RAY_DASHBOARD_PORT:-8265}"
HEAD_CPUS="${FER_RAY_HEAD_CPUS:-1}"
WORKER_CPUS="${FER_RAY_WORKER_CPUS:-1}"
OBJECT_STORE_MB="${FER_RAY_OBJECT_STORE_MB:-512}"
TIMEOUT="${FER_RAY_START_TIMEOUT:-120}"
HOST=127.0.0.1

if [[ -n "${RAY:-}" ]]; then
    RAY_BIN="$RAY"
elif [[ -x "$REPO/.venv/bin/ray" ]]; then
    RAY_BIN="$REPO/.venv/bin/ray"
else
    RAY_BIN="$(command -v ray || true)"
fi
if [[ -z "$RAY_BIN" || ! -x "$RAY_BIN" ]]; then
    echo "local.sh: no ray executable (make the venv: make test, or set RAY=/path/to/ray)" >&2
    exit 2
fi
BIN_DIR="$(cd "$(dirname "$RAY_BIN")" && pwd)"
# The python next to `ray` has Ray installed; it is also the `python` job entrypoints find,
# because the nodes start with BIN_DIR first on PATH.
PY="$BIN_DIR/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"

DASH_URL="http://$HOST:$DASH_PORT"
GCS_ADDR="$HOST:$GCS_PORT"

log() { echo "local.sh: $*" >&2; }

# Client environment: what `env` prints and what local.sh itself uses to talk to the cluster.
client_env() {
    export RAY_AUTH_MODE=token
    export RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
    unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_API_SERVER_ADDRESS
}

print_env() {
    cat <<EOF
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$STATE/auth_token
export RAY_API_SERVER_ADDRESS=$DASH_URL
export RAY_ADDRESS=$GCS_ADDR
EOF
}

cluster_id() { cat "$STATE/cluster_id" 2>/dev/null || true; }

# Ids of the processes carrying this cluster's marker (scans /proc; skips our own ancestry).
# Optional filter: gcs (only the GCS server), others (all but it), all (default).
cluster_pids() {
    local id
    id="$(cluster_id)"
    [[ -n "$id" ]] || return 0
    "$PY" - "$id" "${1:-all}" <<'EOF'
import os, sys
marker = ("FER_RAY_LOCAL_CLUSTER=" + sys.argv[1]).encode()
which = sys.argv[2]
skip, pid = set(), os.getpid()
while pid > 1:  # this scanner and every process above it (local.sh, the caller's shell)
    skip.add(pid)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            pid = int(fh.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        break
for name in os.listdir("/proc"):
    if not name.isdigit() or int(name) in skip:
        continue
    try:
        with open(f"/proc/{name}/environ", "rb") as fh:
            if marker not in fh.read().split(b"\0"):
                continue
        with open(f"/proc/{name}/comm") as fh:
            gcs = fh.read().strip() == "gcs_server"
    except OSError:
        continue
    if which == "all" or (which == "gcs") == gcs:
        print(name)
EOF
}

port_free() {  # nothing listens on the port, on any address
    "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])'
}

# Readiness: both nodes alive on loopback with the CPUs we gave them, and the job API answers
# with our token. Exit 0 when ready, 1 on timeout.
wait_ready() {
    local timeout="${1:-$TIMEOUT}"
    client_env
    "$PY" - "$DASH_URL" "$((HEAD_CPUS + WORKER_CPUS))" "$timeout" <<'EOF'
import sys, time
url, cpus, timeout = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_nodes

deadline, last = time.monotonic() + timeout, "no answer yet"
while time.monotonic() < deadline:
    try:
        JobSubmissionClient(url).list_jobs()
        nodes = list_nodes(address=url, filters=[("state", "=", "ALIVE")], detail=True)
        total = sum(n.resources_total.get("CPU", 0) for n in nodes)
        if len(nodes) == 2 and total == cpus:
            print(f"local.sh: ready: 2 nodes alive, {total:g} CPUs, job API at {url}", file=sys.stderr)
            sys.exit(0)
        last = f"{len(nodes)} node(s) alive, {total:g} CPUs"
    except Exception as exc:  # not up yet, or refused
        last = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    time.sleep(1)
print(f"local.sh: not ready after {timeout:g} s ({last})", file=sys.stderr)
sys.exit(1)
EOF
}

start() {
    if [[ -n "$(cluster_pids)" ]]; then
        log "already running (state in $STATE)"
        wait_ready
        print_env
        return 0
    fi
    # Ray's unix sockets end up at $STATE/worker/session_<date>_<time>_<pid>/sockets/plasma_store,
    # and a socket path has at most 107 bytes: 71 of them are Ray's.
    if (( ${#STATE} > 36 )); then
        log "FER_RAY_LOCAL_DIR=$STATE is too long (${#STATE} > 36 characters) for Ray's unix socket paths; use a short one, e.g. FER_RAY_LOCAL_DIR=\$(mktemp -d /tmp/frl-XXXXXX)"
        exit 1
    fi
    for port in "$GCS_PORT" "$DASH_PORT"; do
        if ! port_free "$port"; then
            log "port $port is in use (another Ray?); choose others with FER_RAY_GCS_PORT / FER_RAY_DASHBOARD_PORT"
            exit 1
        fi
    done
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    rm -rf "$STATE/head" "$STATE/worker" "$STATE/logs"
    mkdir -p "$STATE/logs"
    local id
    id="$("$PY" -c 'import secrets; print(secrets.token_hex(8))')"
    echo "$id" > "$STATE/cluster_id"
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$STATE/auth_token")
    print_env > "$STATE/env"

    local common=(--node-ip-address="$HOST" --object-store-memory=$((OBJECT_STORE_MB * 1024 * 1024))
                  --min-worker-port=0 --max-worker-port=0 --disable-usage-stats)
    [[ -n "${FER_RAY_NUM_GPUS:-}" ]] && common+=(--num-gpus="$FER_RAY_NUM_GPUS")
    # Added to the nodes' environment, so to every process they start: the marker, the auth
    # settings, PATH (the venv's python for job entrypoints), and RAY_ADDRESS. Without it, Ray
    # code that looks the cluster up by itself (the state API in Ray Train's placement-group
    # cleaner, say) takes the newest Ray on the machine, /tmp/ray/ray_current_cluster, which
    # is another Ray whenever one runs beside ours.
    local node_env=(FER_RAY_LOCAL_CLUSTER="$id" RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
                    PATH="$BIN_DIR:$PATH" RAY_USAGE_STATS_ENABLED=0)

    log "starting the head (GCS $GCS_ADDR, dashboard $DASH_URL, $HEAD_CPUS CPU)"
    if ! env -u RAY_API_SERVER_ADDRESS -u RAY_AUTH_TOKEN "${node_env[@]}" RAY_ADDRESS="$GCS_ADDR" "$RAY_BIN" start --head "${common[@]}" \
            --port="$GCS_PORT" --num-cpus="$HEAD_CPUS" --temp-dir="$STATE/head" \
            --include-dashboard=true --dashboard-host="$HOST" --dashboard-port="$DASH_PORT" \
            --dashboard-agent-listen-port="$(free_port)" --ray-client-server-port="$(free_port)" \
            > "$STATE/logs/head-start.log" 2>&1; then
        log "the head did not start; see $STATE/logs/head-start.log:"
        tail -n 30 "$STATE/logs/head-start.log" >&2
        stop >/dev/null 2>&1 || true
        exit 1
    fi
    log "starting the worker node ($WORKER_CPUS CPU)"
    if ! env -u RAY_API_SERVER_ADDRESS -u RAY_AUTH_TOKEN "${node_env[@]}" RAY_ADDRESS="$GCS_ADDR" "$RAY_BIN" start --address="$GCS_ADDR" \
            "${common[@]}" --num-cpus="$WORKER_CPUS" --temp-dir="$STATE/worker" \
            --dashboard-agent-listen-port="$(free_port)" \
            > "$STATE/logs/worker-start.log" 2>&1; then
        log "the worker node did not start; see $STATE/logs/worker-start.log:"
        tail -n 30 "$STATE/logs/worker-start.log" >&2
        stop >/dev/null 2>&1 || true
        exit 1
    fi
    if ! wait_ready; then
        log "stopping the half-started cluster; Ray logs: $STATE/head/session_latest/logs"
        FER_RAY_KEEP_LOGS=1 stop >/dev/null 2>&1 || true
        exit 1
    fi
    log "running; use it with:"
    print_env
}

# Signal the listed processes of this cluster (all, or only those whose name matches / does not
# match gcs_server) and wait up to $2 seconds for them to go; succeed when none is left.
signal_and_wait() {  # SIGNAL SECONDS [gcs|others|all]
    local sig="$1" seconds="$2" which="${3:-all}" pids i
    for ((i = 0; i < seconds * 2; i++)); do
        pids="$(cluster_pids "$which")"
        [[ -z "$pids" ]] && return 0
        # Signal every round: processes that appear meanwhile (a job driver's watcher) count too.
        kill "-$sig" $pids 2>/dev/null || true
        sleep 0.5
    done
    [[ -z "$(cluster_pids "$which")" ]]
}

stop() {
    local pids left
    pids="$(cluster_pids)"
    if [[ -z "$pids" ]]; then
        log "no processes of this cluster are running"
    else
        log "stopping $(echo "$pids" | wc -l) processes"
        # Raylets, agents, workers and job drivers first: SIGTERM lets raylets stop their workers.
        # The GCS then gets SIGTERM and, since Ray 2.60's gcs_server can hang while flushing
        # events to an agent that is already gone, SIGKILL after 3 s; stragglers get SIGKILL too.
        signal_and_wait TERM 10 others || true
        signal_and_wait TERM 3 gcs || true
        signal_and_wait KILL 5 all || true
    fi
    left="$(cluster_pids)"
    if [[ -n "$left" ]]; then
        log "processes still running: $(echo $left)"
        return 1
    fi
    if [[ "${FER_RAY_KEEP_LOGS:-0}" != 1 ]]; then
        rm -rf "$STATE/head" "$STATE/worker"
    fi
    rm -f "$STATE/cluster_id"
    log "stopped"
}

status() {
    local pids
    pids="$(cluster_pids)"
    if [[ -z "$pids" ]]; then
        echo "stopped (state dir $STATE)"
        return 3
    fi
    echo "running: $(echo "$pids" | wc -l) processes (state dir $STATE)"
    client_env
    "$RAY_BIN" status --address="$GCS_ADDR" || true
    echo
    echo "# environment for clients:"
    print_env
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    wait) wait_ready "${2:-$TIMEOUT}" ;;
    env) print_env ;;
    *) echo "usage: $0 start|stop|status|wait [SECONDS]|env" >&2; exit 2 ;;
esac
