"""A small Flask users service to put `revalidate serve` in front of.

It is the upstream of the end-to-end test `cargo test -p revalidate-cli --test flask`
and the example of docs/proxy-guide.md. Run it by hand with

    pip install flask==3.1.3
    python crates/revalidate-cli/tests/flask_app/app.py 5000      # or PORT=5000

It listens on 127.0.0.1 only. What it shows a cache:

  GET  /users               JSON list; public, max-age=60; Surrogate-Key "users user:1 ..."
  GET  /users/<id>          JSON; public, max-age=60; its own ETag from a per-user
                            version ("user-1-v1"), If-None-Match answered with 304
  GET  /users/<id>/plain    JSON; public, max-age=60; no ETag at all (`add_etag = true`
                            in the proxy's config gives it one)
  GET  /users/<id>/profile  JSON; no-cache + ETag: stored, but revalidated every time
  GET  /users/<id>/summary  JSON; public, max-age=60; no ETag: the proxy's route names
                            the version counter "user:<id>" that PUT bumps in Redis
  GET  /health              "ok"; no-cache and no ETag
  PUT  /users/<id>          JSON body {"name": ..., "email": ...}; bumps the version;
                            honours If-Match (412 on a stale tag)
  POST /users               JSON body; 201 with Location: /users/<new id>
  GET  /_requests           what the app was asked, in order (not itself recorded):
                            [{"method", "path", "status", "if_none_match"}, ...]

With REDIS_URL set (and REVALIDATE_NAMESPACE, default "revalidate:"), every write
bumps the user's version counter in Redis (`pip install redis`).

With REVALIDATE_TEST_PARENT_PID set, the app exits by itself once that process is gone,
so a test that dies without cleaning up leaves no server behind.
"""

import os
import sys
import threading
import time

from flask import Flask, jsonify, make_response, request

app = Flask(__name__)

_lock = threading.Lock()
_users = {
    1: {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"},
    2: {"id": 2, "name": "Alan Turing", "email": "alan@example.com"},
    3: {"id": 3, "name": "Edsger Dijkstra", "email": "edsger@example.com"},
}
_versions = {user_id: 1 for user_id in _users}
_requests = []


def _etag(user_id):
    """The user's ETag (unquoted; werkzeug quotes it): changes with every write."""
    return f"user-{user_id}-v{_versions[user_id]}"


_redis = None


def _bump_version(user_id):
    """Counts a write to the user in Redis: the proxy answers If-None-Match from it."""
    global _redis
    url = os.environ.get("REDIS_URL")
    if not url:
        return
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(url)
    namespace = os.environ.get("REVALIDATE_NAMESPACE", "revalidate:")
    _redis.incr(f"{namespace}v:user:{user_id}")


def _not_found(user_id):
    response = jsonify({"title": "Not Found", "status": 404, "detail": f"no user {user_id}"})
    response.status_code = 404
    response.mimetype = "application/problem+json"
    return response


def _public(response, seconds=60):
    response.cache_control.public = True
    response.cache_control.max_age = seconds
    return response


@app.after_request
def _record(response):
    if not request.path.startswith("/_"):
        with _lock:
            _requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "if_none_match": request.headers.get("If-None-Match"),
                }
            )
    return response


@app.get("/_requests")
def requests_seen():
    with _lock:
        return jsonify(list(_requests))


@app.get("/health")
def health():
    response = make_response("ok\n")
    response.mimetype = "text/plain"
    response.cache_control.no_cache = True
    return response


@app.get("/users")
def list_users():
    with _lock:
        users = [_users[user_id] for user_id in sorted(_users)]
    response = _public(jsonify(users))
    # Tags for the proxy (stripped before the response reaches clients).
    response.headers["Surrogate-Key"] = " ".join(["users"] + [f"user:{u['id']}" for u in users])
    return response


@app.get("/users/<int:user_id>")
def get_user(user_id):
    with _lock:
        if user_id not in _users:
            return _not_found(user_id)
        user, etag = dict(_users[user_id]), _etag(user_id)
    response = _public(jsonify(user))
    response.set_etag(etag)
    response.headers["Surrogate-Key"] = f"user:{user_id}"
    # 304 with no body when If-None-Match matches.
    return response.make_conditional(request)


@app.get("/users/<int:user_id>/plain")
def get_user_plain(user_id):
    """The same data with no validator at all, like most hand-written endpoints."""
    with _lock:
        if user_id not in _users:
            return _not_found(user_id)
        user = dict(_users[user_id])
    return _public(jsonify(user))


@app.get("/users/<int:user_id>/profile")
def get_profile(user_id):
    """Always current: a cache may store it but must ask again before each use."""
    with _lock:
        if user_id not in _users:
            return _not_found(user_id)
        user, etag = dict(_users[user_id]), _etag(user_id)
    response = jsonify({"id": user_id, "display": f"{user['name']} <{user['email']}>"})
    response.cache_control.no_cache = True
    response.set_etag(etag)
    response.headers["Surrogate-Key"] = f"user:{user_id}"
    return response.make_conditional(request)


@app.get("/users/<int:user_id>/summary")
def get_summary(user_id):
    """No validator of its own: its version lives in Redis, bumped by every write."""
    with _lock:
        if user_id not in _users:
            return _not_found(user_id)
        user = dict(_users[user_id])
    return _public(jsonify({"id": user_id, "name": user["name"]}))


@app.put("/users/<int:user_id>")
def put_user(user_id):
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        response = jsonify({"title": "Bad Request", "status": 400, "detail": "send a JSON object"})
        response.status_code = 400
        return response
    with _lock:
        if user_id not in _users:
            return _not_found(user_id)
        # Optimistic concurrency: a client that sends If-Match must hold the current tag.
        if request.if_match and not request.if_match.contains(_etag(user_id)):
            response = jsonify({"title": "Precondition Failed", "status": 412})
            response.status_code = 412
            response.set_etag(_etag(user_id))
            return response
        user = _users[user_id]
        for field in ("name", "email"):
            if isinstance(body.get(field), str):
                user[field] = body[field]
        _versions[user_id] += 1
        user, etag = dict(user), _etag(user_id)
    # After the write, before the answer: no client sees the old version's tag again.
    _bump_version(user_id)
    response = jsonify(user)
    response.set_etag(etag)
    return response


@app.post("/users")
def create_user():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        response = jsonify({"title": "Bad Request", "status": 400, "detail": "send {\"name\": ...}"})
        response.status_code = 400
        return response
    with _lock:
        user_id = max(_users, default=0) + 1
        user = {"id": user_id, "name": body["name"], "email": str(body.get("email", ""))}
        _users[user_id] = user
        _versions[user_id] = 1
        etag = _etag(user_id)
    response = jsonify(user)
    response.status_code = 201
    # A path, not an absolute URL: behind a proxy the app does not know its public
    # origin, and a same-origin Location lets the proxy purge the new resource's URL.
    response.headers["Location"] = f"/users/{user_id}"
    response.set_etag(etag)
    return response


def _exit_with(pid):
    """Exits this process once `pid` no longer exists."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass
        time.sleep(0.5)


def main():
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "5000"))
    parent = os.environ.get("REVALIDATE_TEST_PARENT_PID")
    if parent:
        threading.Thread(target=_exit_with, args=(int(parent),), daemon=True).start()
    app.run(host="127.0.0.1", port=port, threaded=True, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
