"""The examples' app (`shoal-lab/app:1`): a standard-library HTTP server on :8000 that reads and
writes Redis and queries PostgreSQL, so an example proves the data path, not just a ping.

It runs inside the image with Debian's python3, python3-redis and python3-psycopg2; shoal never
imports it (the drivers are imported by name so this file also loads without them).

  GET /healthz   200 "ok"
  GET /visit     INCR visits in REDIS_URL; {"visits": N, "redis": "<host>:<port>"}
  GET /db        a row into DATABASE_URL's `visits` table; {"rows": N, "database": ...,
                 "server": "<address the server saw us reach it on>"}
Errors answer 502 with {"error": "..."}: the dependency, not the app, is at fault.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT = int(os.environ.get("PORT", "8000"))


def visit() -> dict[str, Any]:
    redis = importlib.import_module("redis")
    url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(url, socket_timeout=5)
    kwargs = client.connection_pool.connection_kwargs
    return {
        "visits": int(client.incr("visits")),
        "redis": f"{kwargs.get('host')}:{kwargs.get('port')}",
        "app": socket.gethostname(),
    }


def db() -> dict[str, Any]:
    psycopg2 = importlib.import_module("psycopg2")
    conn = psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:  # one transaction, committed on success
            cur.execute("CREATE TABLE IF NOT EXISTS visits (at timestamptz DEFAULT now())")
            cur.execute("INSERT INTO visits DEFAULT VALUES")
            cur.execute("SELECT count(*), current_database(), host(inet_server_addr()) FROM visits")
            rows, database, server = cur.fetchone()
    finally:
        conn.close()  # psycopg2's `with conn` ends the transaction, not the connection
    return {"rows": rows, "database": database, "server": server}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        routes = {"/visit": visit, "/db": db}
        if self.path == "/healthz":
            self._reply(200, "ok")
        elif self.path in routes:
            try:
                self._reply(200, json.dumps(routes[self.path]()))
            except Exception as exc:  # any driver error: the dependency's fault, said as such
                self._reply(502, json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        else:
            self._reply(404, json.dumps({"error": f"no route {self.path}"}))

    def _reply(self, status: int, body: str) -> None:
        data = (body + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
