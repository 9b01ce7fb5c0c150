# Sourced by the benchmark scripts.
#
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
