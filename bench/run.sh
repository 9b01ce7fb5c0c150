#!/usr/bin/env bash
# Loopback benchmark: revalidate vs nginx proxy_cache vs Varnish, all in front
# of the same origin (bench-origin), with a bare hyper server (bench-bare) as
# the ceiling. Writes a markdown report to bench/RESULTS.md.
#
#   bench/run.sh                      # defaults: wrk -t2 -c64 -d10s --latency
#   DURATION=20s CONNECTIONS=128 bench/run.sh
#   ROUNDS=5 bench/run.sh             # each scenario measured 5 times (default 3)
#   PINNED=1 bench/run.sh             # servers on CPU 0, wrk on CPU 1 (taskset):
#                                     # the servers' own cost, to bench/RESULTS-pinned.md
#   PINNED=1 RATE=40000 bench/run.sh  # latency at a fixed rate (default: half the slowest
#                                     # server's hot req/s; RATE=off skips it)
#
# Shared cores (the default) show what a small box sees: wrk and the server
# compete, and req/s are bound by the load generator. Pinned, each server has a
# core of its own (one worker) and wrk the other, so req/s show the server's own
# cost per request, which a load-bound run hides.
#
# Needs root (or sudo) only to apt-get install nginx, varnish and wrk when missing.
# Every server runs on its own free 127.0.0.1 port; nothing system-wide is touched
# (no system nginx/varnish service is started, stopped or reconfigured).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PINNED="${PINNED:-0}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
if ((PINNED)); then
    RESULTS="$ROOT/bench/RESULTS-pinned.md"
    THREADS="${THREADS:-1}"
    SERVER_PIN=(taskset -c "$SERVER_CPU")
    LOAD_PIN=(taskset -c "$LOAD_CPU")
else
    RESULTS="$ROOT/bench/RESULTS.md"
    THREADS="${THREADS:-2}"
    SERVER_PIN=()
    LOAD_PIN=()
fi
CONNECTIONS="${CONNECTIONS:-64}"
DURATION="${DURATION:-10s}"
# Each scenario is measured ROUNDS times, the servers taking turns, and the median
# reported: on a shared 2-core machine one 10 s run can be off by 10-20%.
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-2s}"
QUIET_PCT="${QUIET_PCT:-10}"        # "quiet": other processes use < 10% of all CPUs
QUIET_BUDGET="${QUIET_BUDGET:-180}" # seconds the script may spend waiting for quiet
HOT_PATH=/obj/1
DISTINCT=10000      # scenario 2: /obj/0 .. /obj/9999
PRIME="${PRIME:-100000}" # scenario 4: /obj/0 .. /obj/99999, 5120-byte bodies
WRK_ARGS=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
# Latency at a fixed offered rate (pinned only: bench-rate polls without sleeping and
# needs a core of its own): every server gets the same RATE requests per second.
RATE="${RATE:-auto}"
RATE_DURATION="${RATE_DURATION:-${DURATION%s}}"
((PINNED)) || RATE=off
COMMAND="bench/run.sh  (PINNED=$PINNED THREADS=$THREADS CONNECTIONS=$CONNECTIONS DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS RATE=$RATE QUIET_PCT=$QUIET_PCT QUIET_BUDGET=$QUIET_BUDGET)"

# revalidate runs three times: without an access log (as nginx runs here), with
# the defaults a user gets (the access log on, to a file), and with
# `--scheduler work-stealing`, the trade-off between requests per CPU and latency tail.
SERVERS=(bare revalidate revalidate_log revalidate_ws nginx varnish)
declare -A LABEL=([bare]="bare hyper" [revalidate]="revalidate" [revalidate_log]="revalidate (default: access log on)" [revalidate_ws]="revalidate (work-stealing)" [nginx]="nginx proxy_cache" [varnish]="varnish")
declare -A PORT=() PID=() AVAILABLE=() WHY=() RES=()
NOTES=()
TMP=""
SHM=""
ORIGIN_ETAG=""

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
note() { NOTES+=("$*"); log "NOTE: $*"; }

cleanup() {
    stop_started
    [[ -n "$TMP" && -d "$TMP" ]] && rm -rf "$TMP"
    [[ -n "$SHM" && -d "$SHM" ]] && rm -rf "$SHM"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- packages ------------------------------------------------------------------
ensure_packages() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v varnishd >/dev/null || [[ -x /usr/sbin/varnishd ]] || missing+=(varnish)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        local sudo=()
        ((EUID == 0)) || sudo=(sudo)
        # policy-rc.d may or may not stop the packaged services from starting; they
        # listen on :80 / :6081 and do not interfere with our own ports either way.
        if ! { "${sudo[@]}" apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"; } >"$TMP/apt.log" 2>&1; then
            log "apt-get install failed (see below); continuing with whatever is available"
            tail -5 "$TMP/apt.log" >&2 || true
        fi
    fi
    PATH="$PATH:/usr/sbin:/sbin"
    if ! command -v wrk >/dev/null; then
        echo "FATAL: wrk is not installed and could not be installed; no measurement is possible." >&2
        exit 1
    fi
    AVAILABLE[bare]=1
    AVAILABLE[revalidate]=1
    AVAILABLE[revalidate_ws]=1
    AVAILABLE[revalidate_log]=1
    if command -v nginx >/dev/null; then AVAILABLE[nginx]=1; else
        AVAILABLE[nginx]=0
        WHY[nginx]="nginx package unavailable"
    fi
    if command -v varnishd >/dev/null; then AVAILABLE[varnish]=1; else
        AVAILABLE[varnish]=0
        WHY[varnish]="varnish package unavailable"
    fi
}

# --- ports and processes ---------------------------------------------------------
# wait_http NAME URL: poll until URL answers 200 (30 s max).
wait_http() {
    local name=$1 url=$2
    for _ in $(seq 300); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# All PIDs of a process tree (root first).
tree_pids() {
    local pid=$1 child
    echo "$pid"
    for child in $(pgrep -P "$pid" || true); do tree_pids "$child"; done
}

# Memory of a process tree in KiB: "VmRSS-sum PSS-sum nprocs".
tree_mem_kib() {
    local rss=0 pss=0 n=0 pid v
    for pid in $(tree_pids "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [[ -n "$v" ]] || continue
        rss=$((rss + v))
        v=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
        pss=$((pss + ${v:-0}))
        n=$((n + 1))
    done
    echo "$rss $pss $n"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.0f MiB", k / 1024 }'; }

# --- servers ---------------------------------------------------------------------
start_servers() {
    local origin_port admin_port
    origin_port=$(free_port)
    PORT[origin]=$origin_port
    "$BIN/bench-origin" --listen "127.0.0.1:$origin_port" >"$TMP/origin.log" 2>&1 &
    PID[origin]=$!
    PIDS+=("$!")
    wait_http origin "http://127.0.0.1:$origin_port/obj/0" || {
        cat "$TMP/origin.log" >&2
        echo "FATAL: bench-origin did not start" >&2
        exit 1
    }

    PORT[bare]=$(free_port)
    "${SERVER_PIN[@]}" "$BIN/bench-bare" --listen "127.0.0.1:${PORT[bare]}" --objects "$PRIME" >"$TMP/bare.log" 2>&1 &
    PID[bare]=$!
    PIDS+=("$!")

    PORT[revalidate]=$(free_port)
    admin_port=$(free_port)
    PORT[revalidate_admin]=$admin_port
    cat >"$TMP/revalidate.toml" <<EOF
[cache]
max_bytes = "2 GiB"
EOF
    RUST_LOG=warn "${SERVER_PIN[@]}" "$BIN/revalidate" serve \
        --listen "127.0.0.1:${PORT[revalidate]}" \
        --upstream "http://127.0.0.1:$origin_port" \
        --config "$TMP/revalidate.toml" \
        --admin-listen "127.0.0.1:$admin_port" --access-log off >"$TMP/revalidate.log" 2>&1 &
    PID[revalidate]=$!
    PIDS+=("$!")

    PORT[revalidate_log]=$(free_port)
    "${SERVER_PIN[@]}" "$BIN/revalidate" serve \
        --listen "127.0.0.1:${PORT[revalidate_log]}" \
        --upstream "http://127.0.0.1:$origin_port" \
        --config "$TMP/revalidate.toml" \
        --admin-listen "127.0.0.1:$(free_port)" \
        --access-log "$TMP/access.log" >"$TMP/revalidate_log.log" 2>&1 &
    PID[revalidate_log]=$!
    PIDS+=("$!")

    PORT[revalidate_ws]=$(free_port)
    RUST_LOG=warn "${SERVER_PIN[@]}" "$BIN/revalidate" serve \
        --listen "127.0.0.1:${PORT[revalidate_ws]}" \
        --upstream "http://127.0.0.1:$origin_port" \
        --config "$TMP/revalidate.toml" \
        --admin-listen "127.0.0.1:$(free_port)" \
        --scheduler work-stealing --access-log off >"$TMP/revalidate_ws.log" 2>&1 &
    PID[revalidate_ws]=$!
    PIDS+=("$!")

    if ((AVAILABLE[nginx])); then
        PORT[nginx]=$(free_port)
        # The cache directory lives on tmpfs (/dev/shm) so nginx, like the others,
        # keeps the bodies in RAM; its size is reported next to nginx's RSS.
        NGINX_CACHE="$SHM/nginx-cache"
        nginx_conf "$TMP/nginx" "${PORT[nginx]}" "$origin_port" "$( ((PINNED)) && echo 1 || echo auto)" \
            "$NGINX_CACHE"
        if nginx -t -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx-t.log" 2>&1; then
            "${SERVER_PIN[@]}" nginx -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx.log" 2>&1 &
            PID[nginx]=$!
            PIDS+=("$!")
        else
            AVAILABLE[nginx]=0
            WHY[nginx]="nginx rejected its configuration: $(tail -1 "$TMP/nginx-t.log")"
        fi
    fi

    if ((AVAILABLE[varnish])); then
        PORT[varnish]=$(free_port)
        # varnishd refuses -b together with -f, so the backend is declared in the VCL;
        # the rest is Varnish's built-in VCL (no header stripping, 304s on delivery).
        cat >"$TMP/bench.vcl" <<EOF
vcl 4.1;

backend origin {
    .host = "127.0.0.1";
    .port = "$origin_port";
}
EOF
        chmod 644 "$TMP/bench.vcl"
        "${SERVER_PIN[@]}" varnishd -F -a "127.0.0.1:${PORT[varnish]}" -f "$TMP/bench.vcl" -s malloc,2G \
            -n "$TMP/varnish" -T none >"$TMP/varnish.log" 2>&1 &
        PID[varnish]=$!
        PIDS+=("$!")
    fi

    local s
    for s in "${SERVERS[@]}"; do
        ((AVAILABLE[$s])) || continue
        if ! wait_http "$s" "http://127.0.0.1:${PORT[$s]}/obj/0"; then
            AVAILABLE[$s]=0
            WHY[$s]="did not answer on 127.0.0.1:${PORT[$s]} within 30 s (log: $(tail -2 "$TMP/$s.log" 2>/dev/null | tr '\n' ' '))"
            log "$s: ${WHY[$s]}"
        else
            log "$s listening on 127.0.0.1:${PORT[$s]} (pid ${PID[$s]})"
        fi
    done
}

# --- measurements ------------------------------------------------------------------
# fetch_range NAME FIRST LAST: GET /obj/FIRST .. /obj/LAST once each, 16 in parallel;
# prints how many answered 200.
fetch_range() {
    local s=$1 first=$2 last=$3
    curl -s -Z --parallel-max 16 -o /dev/null -w '%{http_code}\n' \
        "http://127.0.0.1:${PORT[$s]}/obj/[$first-$last]" 2>/dev/null | grep -c '^200$' || true
}

cat_lua() {
    cat >"$TMP/random.lua" <<EOF
-- Random GETs over /obj/0 .. /obj/$((DISTINCT - 1)); requests are preformatted
-- so wrk spends as little time as possible in Lua.
local counter = 0
function setup(thread)
    counter = counter + 1
    thread:set("id", counter)
end
local requests = {}
function init(args)
    math.randomseed(os.time() * 1000 + (id or 0))
    for i = 0, $((DISTINCT - 1)) do
        requests[i + 1] = wrk.format("GET", "/obj/" .. i)
    end
end
function request()
    return requests[math.random(1, $DISTINCT)]
end
EOF
}

# --- CPU accounting -------------------------------------------------------------------
# The machine may be shared (e.g. someone compiling), so every measured run records how
# much CPU went to processes other than wrk, the server under test and the origin.
HZ=$(getconf CLK_TCK)
# "busy total" jiffies over all CPUs (busy excludes idle and iowait).
cpu_sample() { awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6; exit }' /proc/stat; }
# utime + stime jiffies of a process tree (all threads).
tree_cpu() {
    local t=0 pid v
    for pid in $(tree_pids "$1"); do
        v=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}' || true)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
# CPU seconds of this shell's reaped children (wrk); `times` must run in this shell.
children_cpu() { awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); s += p[1] * 60 + p[2] }; print s }' "$TMP/times"; }

# Percentage of all CPUs busy over one second (servers are idle between runs).
busy_pct() {
    local b0 a0 b1 a1
    read -r b0 a0 < <(cpu_sample)
    sleep 1
    read -r b1 a1 < <(cpu_sample)
    echo $((100 * (b1 - b0) / (a1 - a0 > 0 ? a1 - a0 : 1)))
}

# Wait (within QUIET_BUDGET seconds for the whole script) until the machine has been
# quiet (< QUIET_PCT % busy) for 3 seconds in a row.
wait_quiet() {
    local quiet=0 pct start=$SECONDS
    while ((quiet < 3)); do
        if ((QUIET_SPENT + SECONDS - start >= QUIET_BUDGET)); then
            ((QUIET_EXHAUSTED)) || note "waited ${QUIET_BUDGET}s in all for a quiet machine; later runs started regardless"
            QUIET_EXHAUSTED=1
            break
        fi
        pct=$(busy_pct)
        if ((pct < QUIET_PCT)); then quiet=$((quiet + 1)); else
            ((quiet == 0 && SECONDS - start < 2)) && log "machine busy (${pct}% CPU used by other processes); waiting"
            quiet=0
        fi
    done
    QUIET_SPENT=$((QUIET_SPENT + SECONDS - start))
}
QUIET_SPENT=0
QUIET_EXHAUSTED=0

# run_wrk NAME SCENARIO ARGS...: warm-up run, then the measured run; stores
# RES[NAME,SCENARIO,{rps,p50,p99,other}] and keeps the raw output. A run during which
# other processes used more than QUIET_PCT % of the CPUs is repeated once; the run
# with the least interference is kept.
run_wrk() {
    local s=$1 scenario=$2
    shift 2
    local out="$TMP/wrk-$s-$scenario.txt" attempt best="" best_other=1000
    local b0 a0 b1 a1 p0 p1 s0 s1 c0 c1 other
    local -a cpu_us=()
    for attempt in 1 2; do
        wait_quiet
        "${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$@" >/dev/null 2>&1 || true
        read -r b0 a0 < <(cpu_sample)
        s0=$(tree_cpu "${PID[$s]}")
        p0=$((s0 + $(tree_cpu "${PID[origin]}")))
        times >"$TMP/times"
        c0=$(children_cpu)
        if ! "${LOAD_PIN[@]}" wrk "${WRK_ARGS[@]}" "$@" >"$out.$attempt" 2>&1; then
            RES[$s,$scenario,rps]="failed"
            note "$s/$scenario: wrk failed: $(tail -1 "$out.$attempt")"
            return
        fi
        read -r b1 a1 < <(cpu_sample)
        s1=$(tree_cpu "${PID[$s]}")
        # The access log gets a line per request: emptied after each run, so the
        # disk does not fill up (the server appends, so it writes on at the start).
        : >"$TMP/access.log"
        p1=$((s1 + $(tree_cpu "${PID[origin]}")))
        # The server's own CPU time (user + system) per request answered.
        cpu_us[$attempt]=$(awk -v hz="$HZ" -v t=$((s1 - s0)) '/ requests in / { if ($1 > 0) printf "%.2f", t / hz / $1 * 1e6 }' "$out.$attempt")
        times >"$TMP/times"
        c1=$(children_cpu)
        other=$(awk -v hz="$HZ" -v busy=$((b1 - b0)) -v all=$((a1 - a0)) -v srv=$((p1 - p0)) -v c0="$c0" -v c1="$c1" \
            'BEGIN { o = busy / hz - srv / hz - (c1 - c0); if (o < 0) o = 0; printf "%.0f", 100 * o / (all / hz) }')
        log "$s/$scenario (attempt $attempt): $(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out.$attempt") req/s; other processes used ${other}% of the CPUs"
        {
            echo "### $s / $scenario (attempt $attempt; other processes: ${other}% CPU)"
            echo '```'
            cat "$out.$attempt"
            echo '```'
        } >>"$TMP/raw.md"
        if ((other < best_other)); then
            best_other=$other
            best=$attempt
        fi
        ((other < QUIET_PCT)) && break
    done
    out="$out.$best"
    RES[$s,$scenario,other]=$best_other
    RES[$s,$scenario,attempts]=$attempt
    RES[$s,$scenario,rps]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
    RES[$s,$scenario,cpu]=${cpu_us[$best]:-?}
    RES[$s,$scenario,p50]=$(awk '$1 == "50%" {print $2}' "$out")
    RES[$s,$scenario,p99]=$(awk '$1 == "99%" {print $2}' "$out")
    local bad errs
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    errs=$(grep -E '^ +Socket errors:' "$out" | sed 's/^ *//' || true)
    [[ -n "$bad" ]] && note "$s/$scenario: $bad responses were not 2xx/3xx"
    [[ -n "$errs" ]] && note "$s/$scenario: $errs"
    ((best_other < QUIET_PCT)) || note "$s/$scenario: other processes used ${best_other}% of the CPUs during the kept run (marked †)"
    log "$s/$scenario: ${RES[$s,$scenario,rps]} req/s, p50 ${RES[$s,$scenario,p50]}, p99 ${RES[$s,$scenario,p99]}"
}

# A latency as wrk prints it (812.00us, 1.02ms, 1.50s), in microseconds.
micros() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1e3; else if (v ~ /s$/) m = 1e6; else m = 1; printf "%.3f", n * m }'; }

# median "KEY VALUE"...: the VALUE of the row whose KEY is the median (rows sorted
# by KEY as numbers; the lower middle one of an even count).
median() {
    printf '%s\n' "$@" | sort -g -k1,1 | awk '{ v[NR] = $2 } END { print v[int((NR + 1) / 2)] }'
}

# summarize NAME SCENARIO: RES[NAME,SCENARIO,FIELD] = the median over the rounds of
# each field, taken separately (req/s, p50, p99, CPU per request); the interference
# kept is the worst round's, the attempts are counted over all rounds.
summarize() {
    local s=$1 scenario=$2 field round v key
    local -a rows
    for field in rps p50 p99 cpu; do
        rows=()
        for round in $(seq "$ROUNDS"); do
            v=${RES[$s,$scenario.$round,$field]:-}
            [[ -z "$v" || "$v" == failed || "$v" == "?" ]] && continue
            key=$v
            [[ $field == p50 || $field == p99 ]] && key=$(micros "$v")
            rows+=("$key $v")
        done
        if ((${#rows[@]} == 0)); then
            RES[$s,$scenario,$field]=$([[ $field == rps ]] && echo failed || echo "?")
            continue
        fi
        RES[$s,$scenario,$field]=$(median "${rows[@]}")
    done
    local other=0 attempts=0
    for round in $(seq "$ROUNDS"); do
        v=${RES[$s,$scenario.$round,other]:-0}
        ((v > other)) && other=$v
        attempts=$((attempts + ${RES[$s,$scenario.$round,attempts]:-0}))
    done
    RES[$s,$scenario,other]=$other
    RES[$s,$scenario,attempts]=$attempts
}

# --- latency at a fixed rate ----------------------------------------------------------
# wrk's closed loop measures latency at saturation, where each server queues as much
# as its own throughput allows: a faster server shows a longer tail for doing more.
# Here every server gets the same offered load, open loop (bench-rate: requests are
# due on a fixed schedule and timed from when they were due), so tails compare at
# equal work. RATE=auto is half the slowest server's hot req/s.
RATE_USED=""
rate_runs() {
    local s v slowest="" round shift order scenario out field
    local -a args rows
    if [[ $RATE == auto ]]; then
        for s in "${SERVERS[@]}"; do
            ((AVAILABLE[$s])) || continue
            v=${RES[$s,hot,rps]:-}
            [[ $v =~ ^[0-9]+$ ]] || continue
            if [[ -z $slowest ]] || ((v < slowest)); then slowest=$v; fi
        done
        [[ -n $slowest ]] || { note "no hot req/s to derive a rate from: fixed-rate runs skipped"; return; }
        RATE_USED=$((slowest / 2 / 1000 * 1000))
    else
        RATE_USED=$RATE
    fi
    for round in $(seq "$ROUNDS"); do
        shift=$(((round - 1) % ${#SERVERS[@]}))
        order=("${SERVERS[@]:$shift}" "${SERVERS[@]:0:$shift}")
        for scenario in hot distinct; do
            for s in "${order[@]}"; do
                ((AVAILABLE[$s])) || continue
                wait_quiet
                args=(--target "127.0.0.1:${PORT[$s]}" --rate "$RATE_USED" --duration "$RATE_DURATION"
                    --warmup 2 --connections "$CONNECTIONS")
                if [[ $scenario == hot ]]; then args+=(--path "$HOT_PATH"); else args+=(--distinct "$DISTINCT"); fi
                out="$TMP/rate-$s-$scenario.$round.txt"
                if ! "${LOAD_PIN[@]}" "$BIN/bench-rate" "${args[@]}" >"$out" 2>&1; then
                    note "$s/$scenario at $RATE_USED req/s: bench-rate failed: $(tail -1 "$out")"
                    continue
                fi
                : >"$TMP/access.log"
                {
                    echo "### $s / $scenario at $RATE_USED req/s (round $round)"
                    echo '```'
                    cat "$out"
                    echo '```'
                } >>"$TMP/raw.md"
                for field in p50 p99 p99.9 errors; do
                    RES[$s,rate-$scenario.$round,$field]=$(awk -v f="$field" '$1 == f {print $2}' "$out")
                done
                log "$s/$scenario at $RATE_USED req/s: p50 ${RES[$s,rate-$scenario.$round,p50]}us, p99 ${RES[$s,rate-$scenario.$round,p99]}us"
                v=${RES[$s,rate-$scenario.$round,errors]:-0}
                ((v == 0)) || note "$s/$scenario at $RATE_USED req/s: $v requests failed"
            done
        done
    done
    for s in "${SERVERS[@]}"; do
        ((AVAILABLE[$s])) || continue
        for scenario in hot distinct; do
            for field in p50 p99 p99.9; do
                rows=()
                for round in $(seq "$ROUNDS"); do
                    v=${RES[$s,rate-$scenario.$round,$field]:-}
                    [[ -n $v ]] && rows+=("$v $v")
                done
                ((${#rows[@]})) || continue
                RES[$s,rate-$scenario,$field]=$(median "${rows[@]}")
            done
        done
    done
}

# The response headers a server returns for the hot URL, on one line.
probe() {
    local url="http://127.0.0.1:${PORT[$1]}$HOT_PATH"
    curl -s -o /dev/null -D - "$url" | tr -d '\r' |
        grep -iE '^(HTTP/|cache-status|x-cache-status|x-varnish|age|etag|content-length)' | paste -sd ' ' - || true
}
declare -A CONDITIONAL_STATUS=() PROBE=() MEM=() WARM=()
declare -A SCENARIO_LABEL=([hot]="hot" [distinct]="10k" [cond]="304")

main() {
    TMP=$(mktemp -d /tmp/revalidate-bench.XXXXXX)
    SHM=$(mktemp -d /dev/shm/revalidate-bench.XXXXXX)
    # varnishd and nginx workers drop privileges and must reach their files here.
    chmod 755 "$TMP" "$SHM"
    : >"$TMP/raw.md"

    ensure_packages
    log "building release binaries (cargo may wait for the build-directory lock)"
    build_release
    start_servers
    cat_lua

    local s
    ORIGIN_ETAG=$(curl -s -o /dev/null -D - "http://127.0.0.1:${PORT[origin]}$HOT_PATH" | tr -d '\r' | awk -F': ' 'tolower($1) == "etag" {print $2}')

    for s in "${SERVERS[@]}"; do
        ((AVAILABLE[$s])) || continue
        MEM[$s,idle]=$(tree_mem_kib "${PID[$s]}")
        log "$s: warming /obj/0 .. /obj/$((DISTINCT - 1))"
        WARM[$s]=$(fetch_range "$s" 0 $((DISTINCT - 1)))
        PROBE[$s]=$(probe "$s")
        CONDITIONAL_STATUS[$s]=$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $ORIGIN_ETAG" \
            "http://127.0.0.1:${PORT[$s]}$HOT_PATH")
        [[ "${CONDITIONAL_STATUS[$s]}" == 304 ]] ||
            note "$s answered a matching If-None-Match with ${CONDITIONAL_STATUS[$s]}, not 304"
    done

    local round shift order
    for round in $(seq "$ROUNDS"); do
        # Each round starts with the next server, so that none is always measured
        # first (or right after the same neighbour).
        shift=$(((round - 1) % ${#SERVERS[@]}))
        order=("${SERVERS[@]:$shift}" "${SERVERS[@]:0:$shift}")
        for s in "${order[@]}"; do
            ((AVAILABLE[$s])) || continue
            run_wrk "$s" "hot.$round" "http://127.0.0.1:${PORT[$s]}$HOT_PATH"
        done
        for s in "${order[@]}"; do
            ((AVAILABLE[$s])) || continue
            run_wrk "$s" "distinct.$round" -s "$TMP/random.lua" "http://127.0.0.1:${PORT[$s]}"
        done
        for s in "${order[@]}"; do
            ((AVAILABLE[$s])) || continue
            run_wrk "$s" "cond.$round" -H "If-None-Match: $ORIGIN_ETAG" "http://127.0.0.1:${PORT[$s]}$HOT_PATH"
        done
    done
    for s in "${SERVERS[@]}"; do
        ((AVAILABLE[$s])) || continue
        summarize "$s" hot
        summarize "$s" distinct
        summarize "$s" cond
    done
    [[ $RATE == off ]] || rate_runs
    if ((AVAILABLE[revalidate])); then
        STATS_AFTER_WRK=$(curl -s "http://127.0.0.1:${PORT[revalidate_admin]}/stats" || true)
    fi

    for s in "${SERVERS[@]}"; do
        ((AVAILABLE[$s])) || continue
        if [[ $s == bare ]]; then
            WARM[$s,prime]="n/a (all $PRIME bodies precomputed at start)"
        else
            log "$s: priming /obj/0 .. /obj/$((PRIME - 1))"
            WARM[$s,prime]=$(fetch_range "$s" 0 $((PRIME - 1)))
        fi
    done
    sleep 3
    for s in "${SERVERS[@]}"; do
        ((AVAILABLE[$s])) || continue
        MEM[$s,primed]=$(tree_mem_kib "${PID[$s]}")
    done
    if ((AVAILABLE[nginx])); then
        NGINX_FILES=$(find "$NGINX_CACHE" -type f | wc -l)
        NGINX_DU=$(du -sk "$NGINX_CACHE" | cut -f1)
        NGINX_APPARENT=$(du -sk --apparent-size "$NGINX_CACHE" | cut -f1)
    fi
    if ((AVAILABLE[revalidate])); then
        STATS_AFTER_PRIME=$(curl -s "http://127.0.0.1:${PORT[revalidate_admin]}/stats" || true)
    fi
    ORIGIN_MEM=$(tree_mem_kib "${PID[origin]}")

    report
    log "wrote $RESULTS"
    cat "$RESULTS"
}

cell() { # cell NAME SCENARIO FIELD
    local s=$1
    if ! ((AVAILABLE[$s])); then echo "n/a"; return; fi
    local v=${RES[$1,$2,$3]:-}
    if [[ $3 == rps && -n "${RES[$1,$2,other]:-}" ]] && ((RES[$1,$2,other] >= QUIET_PCT)); then
        v="$v †"
    fi
    echo "${v:-failed}"
}

# result_rows KEY...: a table row per available server, with its label and
# RES[server,KEY] for each KEY ("scenario,field"), "?" where there is none.
result_rows() {
    local s key row
    for s in "${SERVERS[@]}"; do
        ((AVAILABLE[$s])) || continue
        row="| ${LABEL[$s]} |"
        for key in "$@"; do
            row="$row ${RES[$s,$key]:-?} |"
        done
        echo "$row"
    done
}

report() {
    local s rss pss n
    local cpu nginx_v varnish_v wrk_v rev
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    nginx_v=$( (nginx -v 2>&1 || true) | head -1)
    varnish_v=$( (varnishd -V 2>&1 || true) | head -1)
    wrk_v=$( (wrk -v 2>&1 || true) | head -1)
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev="$rev + uncommitted changes"
    {
        echo "# revalidate vs nginx vs Varnish: loopback benchmark"
        echo
        echo "Generated by \`bench/run.sh\`; do not edit by hand."
        echo
        echo "- Command: \`$COMMAND\`"
        echo "- wrk settings for every server and scenario: \`wrk ${WRK_ARGS[*]}\` (after an unmeasured ${WARMUP} warm-up run)"
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "- Machine: $(nproc) CPUs ($cpu), $(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
        echo "- Versions: $nginx_v; $varnish_v; $wrk_v; $(rustc -V 2>/dev/null || echo rustc unknown); revalidate $rev"
        echo
        if ((PINNED)); then
            echo "**Pinned:** every server runs on CPU $SERVER_CPU (\`taskset -c $SERVER_CPU\`, one worker), wrk on CPU"
            echo "$LOAD_CPU (\`taskset -c $LOAD_CPU\`), so req/s show each server's own cost per request. The"
            echo "servers not under test sit idle during each run."
        else
            echo "**Only $(nproc) cores:** wrk, the server under test (and, on misses, the origin) all share them, so"
            echo "absolute figures are load-generator-bound and mostly useful side by side. The servers"
            echo "not under test sit idle during each run."
        fi
        echo
        echo "Each figure is the median of $ROUNDS rounds: in each round every server runs every scenario"
        echo "once, taking turns, each round starting with the next server (every round is under \"Rounds\")."
        echo
        echo "| server | hot req/s | hot p50 | hot p99 | 10k req/s | 10k p50 | 10k p99 | 304 req/s | RSS after $((PRIME / 1000))k objects |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for s in "${SERVERS[@]}"; do
            local memcell="n/a"
            if ((AVAILABLE[$s])); then
                read -r rss pss n <<<"${MEM[$s,primed]}"
                memcell=$(mib "$rss")
                [[ $s == bare ]] && memcell="$memcell (bodies precomputed)"
                [[ $s == nginx ]] && memcell="$memcell + $(mib "$NGINX_DU") cache files on tmpfs"
            fi
            local cond
            cond=$(cell "$s" cond rps)
            if ((AVAILABLE[$s])) && [[ "${CONDITIONAL_STATUS[$s]:-}" != 304 ]]; then
                cond="$cond (answers ${CONDITIONAL_STATUS[$s]:-?}, not 304)"
            fi
            echo "| ${LABEL[$s]} | $(cell "$s" hot rps) | $(cell "$s" hot p50) | $(cell "$s" hot p99) | $(cell "$s" distinct rps) | $(cell "$s" distinct p50) | $(cell "$s" distinct p99) | $cond | $memcell |"
        done
        echo
        echo "† = other processes on the machine used ≥ ${QUIET_PCT}% of the CPUs during that run (see \"Interference\" below)."
        echo
        echo "Scenarios:"
        echo
        echo "1. **hot**: \`GET $HOT_PATH\`, one cached URL."
        echo "2. **10k**: \`GET /obj/N\`, N uniformly random in 0..$((DISTINCT - 1)), all $DISTINCT warmed first (wrk Lua script, preformatted requests)."
        echo "3. **304**: \`GET $HOT_PATH\` with \`If-None-Match: $ORIGIN_ETAG\` (the origin's ETag); every server should answer 304 from cache."
        echo "4. **RSS**: VmRSS from /proc/PID/status summed over the server's process tree, after fetching /obj/0..$((PRIME - 1)) (5120-byte bodies) once each. Raw payload: $PRIME x 5120 B = $(mib $((PRIME * 5)))."
        echo
        echo "## Rounds"
        echo
        echo "Requests per second in each round, the median, and the median as a share of bare hyper's."
        echo
        local header="| server | scenario |" rule="|---|---|" round scenario v ratio
        for round in $(seq "$ROUNDS"); do
            header="$header round $round |"
            rule="$rule---:|"
        done
        echo "$header median | of bare hyper |"
        echo "$rule---:|---:|"
        for scenario in hot distinct cond; do
            for s in "${SERVERS[@]}"; do
                ((AVAILABLE[$s])) || continue
                local row="| ${LABEL[$s]} | ${SCENARIO_LABEL[$scenario]} |"
                for round in $(seq "$ROUNDS"); do
                    row="$row ${RES[$s,$scenario.$round,rps]:-failed} |"
                done
                ratio=$(awk -v a="${RES[$s,$scenario,rps]}" -v b="${RES[bare,$scenario,rps]:-}" \
                    'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }')
                echo "$row ${RES[$s,$scenario,rps]} | $ratio |"
            done
        done
        echo
        if [[ -n $RATE_USED ]]; then
            echo "## Latency at a fixed rate"
            echo
            echo "Every server gets the same $RATE_USED requests per second for ${RATE_DURATION}s (after 2s not counted),"
            echo "over $CONNECTIONS keep-alive connections, from \`bench-rate\` on CPU $LOAD_CPU: an open loop, each"
            echo "request timed from when it was due, so a stall is charged to every request that waited"
            echo "behind it. Microseconds, the median of $ROUNDS rounds."
            echo
            echo "| server | hot p50 | hot p99 | hot p99.9 | 10k p50 | 10k p99 | 10k p99.9 |"
            echo "|---|---:|---:|---:|---:|---:|---:|"
            result_rows rate-hot,p50 rate-hot,p99 rate-hot,p99.9 \
                rate-distinct,p50 rate-distinct,p99 rate-distinct,p99.9
            echo
        fi
        echo "## Server CPU per request"
        echo
        echo "The server's own CPU time (user + system, its whole process tree, from /proc) during each kept"
        echo "run, divided by the requests wrk counted (the median over the rounds): what a request costs the"
        echo "server, less bound by the load generator than req/s. (For nginx and Varnish a hit is all they do;"
        echo "the origin is not counted.)"
        echo
        echo "| server | hot µs/request | 10k µs/request | 304 µs/request |"
        echo "|---|---:|---:|---:|"
        result_rows hot,cpu distinct,cpu cond,cpu
        echo
        echo "## Interference"
        echo
        echo "Before each run the script waits (up to ${QUIET_BUDGET}s in all) for 3 quiet seconds, then measures the"
        echo "CPU used during the run by everything except wrk, the server under test and the origin"
        echo "(/proc/stat busy time minus their utime+stime; kernel work not charged to a process also lands here)."
        echo "A run above ${QUIET_PCT}% is repeated once and the less disturbed attempt kept. Time spent waiting: ${QUIET_SPENT}s."
        echo "Below: the most disturbed of the $ROUNDS rounds, and the attempts made over all of them."
        echo
        echo "| server | hot: other CPU % (attempts) | 10k: other CPU % (attempts) | 304: other CPU % (attempts) |"
        echo "|---|---:|---:|---:|"
        for s in "${SERVERS[@]}"; do
            ((AVAILABLE[$s])) || continue
            echo "| ${LABEL[$s]} | ${RES[$s,hot,other]:-?} (${RES[$s,hot,attempts]:-?}) | ${RES[$s,distinct,other]:-?} (${RES[$s,distinct,attempts]:-?}) | ${RES[$s,cond,other]:-?} (${RES[$s,cond,attempts]:-?}) |"
        done
        echo
        echo "## Memory detail"
        echo
        echo "VmRSS counts shared pages once per process (nginx's keys_zone is mapped by every worker, Varnish's"
        echo "shared-memory log by both of its processes), so PSS (proportional set size, /proc/PID/smaps_rollup)"
        echo "is given too. nginx keeps cached bodies in files: its cache directory was on tmpfs (/dev/shm), i.e."
        echo "also in RAM, but outside any process's RSS, so it is reported separately."
        echo
        echo "| server | processes | VmRSS idle (after start) | VmRSS after $((PRIME / 1000))k | PSS after $((PRIME / 1000))k | objects fetched with 200 (of $PRIME) |"
        echo "|---|---:|---:|---:|---:|---|"
        for s in "${SERVERS[@]}"; do
            if ! ((AVAILABLE[$s])); then
                echo "| ${LABEL[$s]} | n/a | n/a | n/a | n/a | n/a |"
                continue
            fi
            local irss ipss in
            read -r irss ipss in <<<"${MEM[$s,idle]}"
            read -r rss pss n <<<"${MEM[$s,primed]}"
            echo "| ${LABEL[$s]} | $n | $(mib "$irss") | $(mib "$rss") | $(mib "$pss") | ${WARM[$s,prime]} |"
        done
        if ((AVAILABLE[nginx])); then
            echo
            echo "nginx cache directory (tmpfs): $NGINX_FILES files, $(mib "$NGINX_DU") allocated on tmpfs (the RAM it uses), $(mib "$NGINX_APPARENT") apparent size (each file holds a ~600-byte header plus the body; tmpfs allocates whole 4 KiB pages)."
            echo "nginx total = VmRSS + tmpfs: $(mib $(( $(cut -d' ' -f1 <<<"${MEM[nginx,primed]}") + NGINX_DU )))."
        fi
        echo
        echo "Origin (bench-origin) VmRSS at the end: $(mib "$(cut -d' ' -f1 <<<"$ORIGIN_MEM")")."
        if ((AVAILABLE[revalidate])); then
            echo
            echo "revalidate \`/stats\` after the wrk runs: \`${STATS_AFTER_WRK:-unavailable}\`"
            echo
            echo "revalidate \`/stats\` after priming $((PRIME / 1000))k: \`${STATS_AFTER_PRIME:-unavailable}\`"
        fi
        echo
        echo "## Checks"
        echo
        echo "Response headers for \`$HOT_PATH\` after warming, and the status of a conditional GET with the origin's ETag:"
        echo
        for s in "${SERVERS[@]}"; do
            if ((AVAILABLE[$s])); then
                echo "- ${LABEL[$s]}: \`${PROBE[$s]}\`; If-None-Match -> ${CONDITIONAL_STATUS[$s]}; warm-up of $DISTINCT URLs: ${WARM[$s]} x 200"
            else
                echo "- ${LABEL[$s]}: **not measured**: ${WHY[$s]}"
            fi
        done
        if ((${#NOTES[@]})); then
            echo
            echo "## Notes from this run"
            echo
            local line
            for line in "${NOTES[@]}"; do echo "- $line"; done
        fi
        echo
        echo "## Configurations"
        echo
        echo "All servers listen on 127.0.0.1 only, in front of the same \`bench-origin\` (HTTP/1.1, keep-alive)."
        echo
        echo "<details><summary>revalidate</summary>"
        echo
        echo '```'
        echo "RUST_LOG=warn revalidate serve --listen 127.0.0.1:PORT --upstream http://127.0.0.1:ORIGIN --config revalidate.toml --admin-listen 127.0.0.1:ADMIN"
        echo "# revalidate (work-stealing): the same, plus --scheduler work-stealing"
        echo "# revalidate.toml"
        cat "$TMP/revalidate.toml"
        echo '```'
        echo "</details>"
        if [[ -f "$TMP/nginx/nginx.conf" ]]; then
            echo
            echo "<details><summary>nginx</summary>"
            echo
            echo '```nginx'
            echo "# nginx -p TMP/nginx -e TMP/nginx/logs/error.log -c TMP/nginx/nginx.conf"
            sed -e "s|$TMP|TMP|g" -e "s|$SHM|/dev/shm/SHM|g" "$TMP/nginx/nginx.conf"
            echo '```'
            echo "</details>"
        fi
        if [[ -f "$TMP/bench.vcl" ]]; then
            echo
            echo "<details><summary>varnish</summary>"
            echo
            echo '```'
            echo "varnishd -F -a 127.0.0.1:PORT -f bench.vcl -s malloc,2G -n TMP/varnish -T none"
            echo "# (varnishd refuses -b together with -f; the VCL's backend is the origin, everything else is the built-in VCL)"
            cat "$TMP/bench.vcl"
            echo '```'
            echo "</details>"
        fi
        echo
        echo "<details><summary>Raw wrk output</summary>"
        echo
        cat "$TMP/raw.md"
        echo "</details>"
    } >"$RESULTS"
}

main "$@"
