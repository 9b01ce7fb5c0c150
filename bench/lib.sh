# Sourced by the benchmark scripts (after they set ROOT): what more than one of
# them needs.

# free_port: a TCP port on 127.0.0.1 that nothing listens on now (one of 40,000
# at random, so two calls before anything binds rarely give the same).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# build_release: builds (when stale) the binaries the benchmarks run, into $BIN.
BIN="$ROOT/target/release"
build_release() {
    (cd "$ROOT" && cargo build --release -q -p revalidate-cli -p revalidate-bench)
}

# PIDS: the processes a script starts; stop_started (in its exit trap) ends them:
# each gets 5 s to drain and exit after SIGTERM, then SIGKILL, so that none
# outlives the script and its exit never hangs on one.
PIDS=()
stop_started() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

# require TOOL...: exits unless every TOOL is installed.
require() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "FATAL: $tool is not installed" >&2; exit 1; }
    done
}

# wait_up PORT [SECONDS]: waits (10 s unless told) until /obj/1 answers on PORT,
# or exits.
wait_up() {
    local port=$1 tenths=$((${2:-10} * 10))
    for ((; tenths > 0; tenths--)); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/obj/1" && return 0
        sleep 0.1
    done
    echo "FATAL: nothing answers on port $port" >&2
    exit 1
}

# prime PORT N SCRATCH: GETs /obj/0 .. /obj/N-1 on PORT, one keep-alive connection,
# so that a cache holds every URL before anything is timed (SCRATCH: a file for
# curl's list of URLs).
prime() {
    local port=$1 n=$2 scratch=$3 i
    for ((i = 0; i < n; i++)); do
        printf 'url = "http://127.0.0.1:%s/obj/%d"\noutput = /dev/null\n' "$port" "$i"
    done >"$scratch"
    curl -s -K "$scratch"
}

# nginx_conf DIR PORT ORIGIN_PORT WORKERS CACHE_DIR: writes DIR/nginx.conf, the
# nginx configuration the benchmarks measure: proxy_cache in front of the origin
# (kept-alive upstream connections), its cache on CACHE_DIR (tmpfs, so that nginx,
# like the others, keeps the bodies in RAM), and no access log. DIR also holds its
# pid file, error log and temporary files.
nginx_conf() {
    local dir=$1 port=$2 origin_port=$3 workers=$4 cache=$5
    mkdir -p "$dir/logs" "$dir/temp"
    cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path $dir/temp/client;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    # keys_zone: ~8,000 keys per MiB, so 64 MiB holds ~500,000 keys.
    proxy_cache_path $cache levels=1:2 keys_zone=bench:64m max_size=4g inactive=2h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$origin_port;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            proxy_cache_revalidate on;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
}
CONF
}
