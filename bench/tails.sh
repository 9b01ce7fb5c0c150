#!/usr/bin/env bash
# Latency tails at a fixed rate, revalidate against nginx, over many rounds: on a
# VM a server's p99 moves by a factor of ten from one round to the next, so the
# few rounds of bench/run.sh cannot rank two servers' tails. Here the two take
# turns for ROUNDS rounds, each on CPU 0 (one worker), with bench-rate on CPU 1
# offering RATE requests per second, open loop (see bench/README.md), on one hot
# URL and over 10,000 URLs. revalidate runs as a user runs it (its access log on,
# to a file), nginx with proxy_cache as in bench/run.sh.
#
#   bench/tails.sh                       # ROUNDS=8 RATE=35000 DURATION=8
#   ROUNDS=12 RATE=20000 bench/tails.sh
#
# Prints each round, then per scenario the median p50, p99 and p99.9 of each
# server and the rounds in which revalidate's p99 was the lower. Needs nginx,
# curl and taskset (apt-get install nginx-light curl util-linux).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
ROUNDS="${ROUNDS:-8}"
RATE="${RATE:-35000}"
DURATION="${DURATION:-8}"
DISTINCT=10000
require nginx curl taskset
build_release

TMP=$(mktemp -d /tmp/revalidate-tails.XXXXXX)
SHM=$(mktemp -d /dev/shm/revalidate-tails.XXXXXX)
# nginx's workers run as an unprivileged user, and write its cache here.
chmod 755 "$TMP" "$SHM"
cleanup() {
    stop_started
    rm -rf "$TMP" "$SHM"
}
trap cleanup EXIT

ORIGIN=$(free_port)
"$BIN/bench-origin" --listen "127.0.0.1:$ORIGIN" >/dev/null 2>&1 &
PIDS+=($!)
wait_up "$ORIGIN"
declare -A PORT=([revalidate]=$(free_port) [nginx]=$(free_port))
taskset -c 0 "$BIN/revalidate" serve --listen "127.0.0.1:${PORT[revalidate]}" \
    --upstream "http://127.0.0.1:$ORIGIN" --admin-listen "127.0.0.1:$(free_port)" \
    --access-log "$TMP/access.log" >/dev/null 2>&1 &
PIDS+=($!)
nginx_conf "$TMP/nginx" "${PORT[nginx]}" "$ORIGIN" 1 "$SHM/nginx-cache"
taskset -c 0 nginx -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)
# Every URL is stored before anything is timed.
for server in revalidate nginx; do
    wait_up "${PORT[$server]}"
    prime "${PORT[$server]}" "$DISTINCT" "$TMP/prime.cfg"
done

# Rows "round scenario server p50 p99 p99.9" (µs), to $TMP/rows.
for ((round = 1; round <= ROUNDS; round++)); do
    # Who goes first alternates, so that neither always runs after the other.
    if ((round % 2)); then order=(revalidate nginx); else order=(nginx revalidate); fi
    for scenario in hot distinct; do
        for server in "${order[@]}"; do
            if [[ $scenario == hot ]]; then target=(--path /obj/1); else target=(--distinct "$DISTINCT"); fi
            out=$(taskset -c 1 "$BIN/bench-rate" --target "127.0.0.1:${PORT[$server]}" --rate "$RATE" \
                --duration "$DURATION" --warmup 2 --connections 32 "${target[@]}")
            : >"$TMP/access.log"
            errors=$(awk '$1 == "errors" {print $2}' <<<"$out")
            [[ "${errors:-0}" == 0 ]] || echo "WARNING: $server/$scenario round $round: $errors requests failed" >&2
            row="$round $scenario $server $(awk '$1 == "p50" || $1 == "p99" || $1 == "p99.9" {printf "%s ", $2}' <<<"$out")"
            echo "$row" | tee -a "$TMP/rows"
        done
    done
done

# The median of the numbers on stdin (the lower middle one of an even count).
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "$RATE req/s for ${DURATION}s, $ROUNDS rounds; µs, medians over the rounds"
echo
echo "| scenario | server | p50 | p99 | p99.9 |"
echo "|---|---|---:|---:|---:|"
for scenario in hot distinct; do
    for server in revalidate nginx; do
        row="| $scenario | $server |"
        for column in 4 5 6; do
            row="$row $(awk -v s="$scenario" -v n="$server" -v c="$column" '$2 == s && $3 == n {print $c}' "$TMP/rows" | median) |"
        done
        echo "$row"
    done
done
echo
for scenario in hot distinct; do
    lower=$(awk -v s="$scenario" '$2 == s { p99[$1, $3] = $5; rounds[$1] = 1 }
        END { for (r in rounds) if (p99[r, "revalidate"] < p99[r, "nginx"]) n++; print n + 0 }' "$TMP/rows")
    echo "$scenario: revalidate's p99 was the lower in $lower of $ROUNDS rounds"
done
