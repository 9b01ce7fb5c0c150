#!/usr/bin/env bash
# Checks a revalidate container image the way an operator first runs it: as which
# user it runs, that the binary starts on the image's libraries, that the example
# configuration it ships is valid, that it serves (and caches) an upstream's
# answers, and that `docker stop` ends it cleanly.
#
#   docker build -t revalidate . && packaging/test-image.sh revalidate
#
# Needs docker (with a running daemon), curl and python3 (the test upstream). The
# container shares the host's network, so that it reaches the upstream on
# loopback.
set -euo pipefail

IMAGE="${1:-revalidate}"
for tool in docker curl python3; do
    command -v "$tool" >/dev/null || { echo "FATAL: $tool is not installed" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/revalidate-image.XXXXXX)
CONTAINER="revalidate-image-test-$$"
UPSTREAM_PID=
cleanup() {
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    [[ -z "$UPSTREAM_PID" ]] || kill "$UPSTREAM_PID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# An upstream that counts the requests it answers, each fresh for a minute.
UPSTREAM=$(port)
cat >"$TMP/upstream.py" <<'EOF'
import http.server, sys
count = 0
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global count
        count += 1
        body = f'{{"path": "{self.path}", "served": {count}}}'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "max-age=60")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
python3 "$TMP/upstream.py" "$UPSTREAM" &
UPSTREAM_PID=$!

user=$(docker run --rm --entrypoint id "$IMAGE" -u)
[[ "$user" != 0 ]] || fail "the image runs as root"
echo "ok: runs as uid $user"

version=$(docker run --rm "$IMAGE" --version) || fail "the binary does not start"
echo "ok: $version"

docker run --rm "$IMAGE" serve --check --upstream "http://127.0.0.1:$UPSTREAM" \
    --config /etc/revalidate/revalidate.example.toml >/dev/null ||
    fail "the shipped example configuration is refused"
echo "ok: the shipped example configuration is valid"

LISTEN=$(port)
docker run -d --name "$CONTAINER" --network host "$IMAGE" serve \
    --listen "127.0.0.1:$LISTEN" --upstream "http://127.0.0.1:$UPSTREAM" \
    --admin-listen "127.0.0.1:$(port)" --config /etc/revalidate/revalidate.example.toml >/dev/null
# Ready when it accepts connections (every request on this port goes upstream).
for ((tries = 100; tries > 0; tries--)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$LISTEN") 2>/dev/null && break
    sleep 0.1
done
((tries > 0)) || fail "it does not listen: $(docker logs "$CONTAINER" 2>&1 | tail -5)"
# A route of the example configuration's, which adds a content ETag.
first=$(curl -s -D "$TMP/first" "http://127.0.0.1:$LISTEN/users/1") || fail "no answer through the container"
second=$(curl -s -D "$TMP/second" "http://127.0.0.1:$LISTEN/users/1") || fail "no second answer"
[[ "$first" == *'"path": "/users/1"'* ]] || fail "the first answer is not the upstream's: $first"
[[ "$second" == "$first" ]] || fail "the second answer was fetched again: $second"
grep -qi '^cache-status:.*hit' "$TMP/second" || fail "the second answer is no hit: $(cat "$TMP/second")"
grep -qi '^etag:' "$TMP/second" || fail "the answer has no ETag"
echo "ok: serves the upstream's answer with the example configuration, then a hit with its ETag"

docker stop -t 10 "$CONTAINER" >/dev/null
status=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
[[ "$status" == 0 ]] || fail "docker stop ended it with exit code $status: $(docker logs "$CONTAINER" 2>&1 | tail -5)"
echo "ok: docker stop ends it with exit code 0"

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "ok: image size $((size / 1000000)) MB"
