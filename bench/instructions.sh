#!/usr/bin/env bash
# Instructions per cache hit, counted by callgrind: repeatable where wrk's figures on
# a shared 2-core machine are not. Both servers answer N keep-alive GETs of 5 KiB
# objects (curl, one connection); the count is the user-space instructions of the
# connection tasks (accept loop, hyper, the service) divided by N, for N plain GETs
# of one URL, N plain GETs cycling through KEYS URLs (each answered from a different
# entry, as in the benchmark's 10,000-URL scenario), and N conditional GETs answered
# 304. The kernel's share (the TCP work, about the same for both) is not counted.
#
#   bench/instructions.sh            # N=2000 KEYS=1000
#   N=5000 KEYS=2000 bench/instructions.sh
#
# Needs valgrind and curl (apt-get install valgrind curl).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
N="${N:-2000}"
KEYS="${KEYS:-1000}" # the "many URLs" case cycles through /obj/0 .. /obj/KEYS-1
TMP=$(mktemp -d /tmp/revalidate-instructions.XXXXXX)
cleanup() {
    stop_started
    # KEEP=DIR keeps the callgrind files, for callgrind_annotate.
    if [[ -n "${KEEP:-}" ]]; then mkdir -p "$KEEP" && cp "$TMP"/callgrind.* "$KEEP"/; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

require valgrind callgrind_annotate callgrind_control curl
build_release

ORIGIN=$(free_port)
"$BIN/bench-origin" --listen "127.0.0.1:$ORIGIN" >/dev/null 2>&1 &
PIDS+=($!)
wait_up "$ORIGIN"

# requests FILE PORT KEYS [HEADER]: a curl config for N keep-alive GETs, of /obj/1
# (KEYS=1) or of /obj/0 .. /obj/KEYS-1 in turn.
requests() {
    local file=$1 listen=$2 keys=$3 header=${4:-} i
    {
        # A config file's options apply to every URL in it: the header is given once.
        [[ -z "$header" ]] || printf 'header = "%s"\n' "$header"
        for ((i = 0; i < N; i++)); do
            printf 'url = "http://127.0.0.1:%s/obj/%d"\noutput = /dev/null\n' "$listen" $((keys == 1 ? 1 : i % keys))
        done
    } >"$file"
}

# count FILE PATTERN: instructions per request in FUNCTION-PATTERN, from one dump.
count() {
    local total
    total=$(callgrind_annotate --inclusive=yes "$1" 2>/dev/null |
        grep -F "$2" | grep -v "=>" | head -1 | awk '{gsub(",", "", $1); print $1}')
    total=${total:-0}
    echo $((total / N))
}

# measure NAME FUNCTION-PATTERN PORT COMMAND...: instructions per request in
# FUNCTION-PATTERN, for a 200 and for a 304 (If-None-Match with the ETag).
measure() {
    local name=$1 pattern=$2 listen=$3 file
    shift 3
    file="$TMP/callgrind.${name// /-}"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$file" "$@" >/dev/null 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_up "$listen" 120 # under valgrind; the first request is a miss for the cache
    for _ in $(seq 10); do curl -s -o /dev/null "http://127.0.0.1:$listen/obj/1"; done
    # Every one of the KEYS objects is stored before counting starts.
    curl -s -o /dev/null "http://127.0.0.1:$listen/obj/[0-$((KEYS - 1))]"
    requests "$TMP/ok" "$listen" 1
    requests "$TMP/many" "$listen" "$KEYS"
    requests "$TMP/not-modified" "$listen" 1 'If-None-Match: \"obj-1-v1\"'
    local kind results=() writer=()
    for kind in ok many not-modified; do
        # Counted: only the N requests between the zeroing and the dump.
        callgrind_control --zero "$pid" >/dev/null 2>&1
        curl -s -K "$TMP/$kind"
        # The access log's writer thread moves the batches every 10 ms: let it
        # finish this one before the dump.
        sleep 0.2
        callgrind_control --dump="$kind" "$pid" >/dev/null 2>&1
        local dump
        dump="$(ls -t "$file".* | head -1)"
        results+=("$(count "$dump" "$pattern")")
        # The proxy's other threads (the access log's writer; the admin
        # listener, idle): every thread's instructions but the workers'.
        local all workers
        all=$(count "$dump" "Thread>::new::thread_start")
        workers=$(count "$dump" "serve/server.rs:std::sys::backtrace::__rust_begin_short_backtrace")
        writer+=($((workers > 0 ? all - workers : 0)))
    done
    kill -INT "$pid"
    sleep 1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$name: ${results[0]} instructions per 200 (one URL), ${results[1]} per 200 ($KEYS URLs), ${results[2]} per 304"
    if [[ "${writer[0]}" != 0 ]]; then
        echo "  + in its other threads (the access log's writer): ${writer[0]} / ${writer[1]} / ${writer[2]} per request"
    fi
}

BARE=$(free_port)
measure "bare hyper" "revalidate_bench::serve::{{closure}}::{{closure}}" "$BARE" \
    "$BIN/bench-bare" --listen "127.0.0.1:$BARE" --objects $((KEYS > 2 ? KEYS : 2))
PROXY=$(free_port)
ADMIN=$(free_port)
measure "revalidate (hit)" "revalidate_cli::serve::server::run_with_tls::{{closure}}::{{closure}}" "$PROXY" \
    "$BIN/revalidate" serve --listen "127.0.0.1:$PROXY" \
    --upstream "http://127.0.0.1:$ORIGIN" --admin-listen "127.0.0.1:$ADMIN"
