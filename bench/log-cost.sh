#!/usr/bin/env bash
# What the access log costs: the same revalidate binary with its log on (as it
# is by default; here to a file) and off, beside bare hyper, each pinned to CPU 0
# with wrk -t1 on CPU 1, taking turns for ROUNDS rounds per scenario (one hot
# URL, 10,000 URLs, 304s). One run on a VM moves by more than a cost of a few
# percent; the ratio of the two within each round, and its median over the
# rounds, tells a few percent from none (two runs agree within about 1.5 points).
#
#   bench/log-cost.sh                    # ROUNDS=8 DURATION=4s CONNECTIONS=32
#
# Prints each round's req/s, then per scenario the log's cost (the median of the
# rounds' log-on/log-off ratios) and each configuration's median share of bare
# hyper's req/s. Needs wrk, curl and taskset (apt-get install wrk curl util-linux).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
ROUNDS="${ROUNDS:-8}"
DURATION="${DURATION:-4s}"
CONNECTIONS="${CONNECTIONS:-32}"
DISTINCT=10000
require wrk curl taskset
build_release

TMP=$(mktemp -d /tmp/revalidate-log-cost.XXXXXX)
cleanup() {
    stop_started
    rm -rf "$TMP"
}
trap cleanup EXIT

ORIGIN=$(free_port)
"$BIN/bench-origin" --listen "127.0.0.1:$ORIGIN" >/dev/null 2>&1 &
PIDS+=($!)
wait_up "$ORIGIN"
declare -A PORT=([log_on]=$(free_port) [log_off]=$(free_port) [bare]=$(free_port))
for config in log_on log_off; do
    log=$([[ $config == log_on ]] && echo "$TMP/access.log" || echo off)
    taskset -c 0 "$BIN/revalidate" serve --listen "127.0.0.1:${PORT[$config]}" \
        --upstream "http://127.0.0.1:$ORIGIN" --admin-listen "127.0.0.1:$(free_port)" \
        --access-log "$log" >/dev/null 2>&1 &
    PIDS+=($!)
done
taskset -c 0 "$BIN/bench-bare" --listen "127.0.0.1:${PORT[bare]}" --objects "$DISTINCT" >/dev/null 2>&1 &
PIDS+=($!)
for config in log_on log_off bare; do
    wait_up "${PORT[$config]}"
    prime "${PORT[$config]}" "$DISTINCT" "$TMP/prime.cfg"
done
ETAG=$(curl -s -D - -o /dev/null "http://127.0.0.1:${PORT[log_on]}/obj/1" |
    awk -F': ' 'tolower($1) == "etag" { print $2 }' | tr -d '\r')
cat >"$TMP/many.lua" <<EOF
local requests = {}
function init(args)
    math.randomseed(os.time())
    for i = 0, $((DISTINCT - 1)) do requests[i + 1] = wrk.format("GET", "/obj/" .. i) end
end
function request() return requests[math.random(1, $DISTINCT)] end
EOF

# Rows "round scenario configuration req/s", to $TMP/rows.
for ((round = 1; round <= ROUNDS; round++)); do
    # Who goes first alternates, so that none always runs after the others.
    if ((round % 2)); then order=(log_on log_off bare); else order=(bare log_off log_on); fi
    for scenario in hot many 304; do
        for config in "${order[@]}"; do
            url="http://127.0.0.1:${PORT[$config]}"
            case $scenario in
                hot) args=("$url/obj/1") ;;
                many) args=(-s "$TMP/many.lua" "$url/") ;;
                304) args=(-H "If-None-Match: $ETAG" "$url/obj/1") ;;
            esac
            rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${args[@]}" |
                awk '/^Requests\/sec:/ { printf "%.0f", $2 }')
            [[ -n "$rps" ]] || { echo "FATAL: wrk measured nothing on $config/$scenario" >&2; exit 1; }
            : >"$TMP/access.log"
            echo "$round $scenario $config $rps" | tee -a "$TMP/rows"
        done
    done
done

echo
echo "$ROUNDS rounds of $DURATION per scenario and configuration, $CONNECTIONS connections"
echo
echo "| scenario | log's cost | log on, of bare hyper | log off, of bare hyper |"
echo "|---|---:|---:|---:|"
for scenario in hot many 304; do
    awk -v s="$scenario" '
        function median(a, n,    i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return a[int((n + 1) / 2)]
        }
        $2 == s { rps[$1, $3] = $4; rounds[$1] = 1 }
        END {
            for (r in rounds) {
                n++
                cost[n] = 1 - rps[r, "log_on"] / rps[r, "log_off"]
                on[n] = rps[r, "log_on"] / rps[r, "bare"]
                off[n] = rps[r, "log_off"] / rps[r, "bare"]
            }
            printf "| %s | %.1f%% | %.2f | %.2f |\n", s, 100 * median(cost, n), median(on, n), median(off, n)
        }' "$TMP/rows"
done
