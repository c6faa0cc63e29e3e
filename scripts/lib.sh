# shellcheck shell=bash
# Helpers shared by the demo scripts (source me from the repository root).

# Installs what is missing, exports the tool paths (scripts/env.sh) and builds veto; sets VETO.
prepare_demo() {
    scripts/install-deps.sh >/dev/null
    # shellcheck source=scripts/env.sh
    source scripts/env.sh
    echo "building veto..."
    cargo build --quiet --bin veto
    export VETO="$PWD/target/debug/veto"
}

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# $1 distinct free TCP ports on 127.0.0.1, on one line (all bound at once, so distinct; each
# is closed before its server binds it).
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

# Waits until something listens on 127.0.0.1:$1 ($2 seconds at most, default 10).
wait_port() {
    local deadline=$((SECONDS + ${2:-10}))
    while ((SECONDS < deadline)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.025
    done
    echo "port $1 never opened" >&2
    return 1
}

# Waits until GET $1 answers 2xx with a body containing $2 ($3 seconds at most).
wait_http() {
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        if curl -fsS --max-time 1 "$1" 2>/dev/null | grep -q "$2"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Stops the given processes: TERM to all, then at most ~5 s each before KILL, and reaps them.
stop_pids() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

now_ms() { date +%s%3N; }

# A tiny upstream on 127.0.0.1:$1 that answers {"user": <x-user-id it received>}, in the
# background; its pid is left in UPSTREAM_PID.
start_upstream() {
    python3 - "$1" >/dev/null 2>&1 <<'PY' &
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"user": self.headers.get("x-user-id")}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
    export UPSTREAM_PID=$!
    wait_port "$1"
}

# Renders the Envoy sidecar template: envoy_config LISTEN ADMIN AUTHZ UPSTREAM > file
envoy_config() {
    # shellcheck disable=SC2016 # envsubst wants the literal ${NAME}s it may replace
    LISTEN_PORT=$1 ADMIN_PORT=$2 AUTHZ_PORT=$3 UPSTREAM_PORT=$4 \
        envsubst '${LISTEN_PORT} ${ADMIN_PORT} ${AUTHZ_PORT} ${UPSTREAM_PORT}' \
        <"$(dirname "${BASH_SOURCE[0]}")/../deploy/envoy/envoy-sidecar.yaml.tmpl"
}

# --- load measurement (scripts/bench-envoy.sh, scripts/bench-inproxy.sh) ------------------

# Exits with code $2, naming script $1, unless Envoy and nats-server are found (scripts/env.sh
# exports them) and every other tool named is on the PATH.
need_tools() {
    local me="$1" code="$2" tool
    shift 2
    [[ -x "${VETO_ENVOY_BIN:-}" ]] \
        || { echo "$me: no Envoy binary (VETO_ENVOY_BIN); run scripts/install-deps.sh" >&2; exit "$code"; }
    [[ -x "${VETO_NATS_SERVER_BIN:-}" ]] \
        || { echo "$me: no nats-server (VETO_NATS_SERVER_BIN); run scripts/install-deps.sh" >&2; exit "$code"; }
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$me: $tool is not installed" >&2; exit "$code"; }
    done
}

# utime+stime of process $1 (all its threads) in clock ticks, from /proc/$1/stat (the fields
# after the parenthesised command name, which may hold spaces).
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# Writes to $1 a wrk Lua script whose done() prints one line:
#   RESULT requests duration_us p50_us p99_us non2xx socket_errors
wrk_report_lua() {
    cat >"$1" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
LUA
}

# An awk function median(a, n) of a[1..n] (sorts a), for `awk "$AWK_MEDIAN ..."`.
# shellcheck disable=SC2034 # used by the scripts that source this file
AWK_MEDIAN='
function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}'
