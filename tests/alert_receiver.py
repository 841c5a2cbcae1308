"""An alert receiver on loopback: a real HTTP server that keeps what it is posted and can
refuse (answer 503) its first posts, like a chat service that is down for a while."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self, refuse_first: int = 0) -> None:
        self.refuse_first = refuse_first
        self.tries = 0
        self.accepted: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.url = ""

    def kinds(self) -> list[tuple[str, str]]:
        """(kind, check) of each accepted post, in order."""
        with self.lock:
            return [(body["kind"], body["check"]) for body in self.accepted]


@contextmanager
def alert_receiver(refuse_first: int = 0) -> Iterator[Receiver]:
    receiver = Receiver(refuse_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                receiver.tries += 1
                refuse = receiver.tries <= receiver.refuse_first
                if not refuse:
                    receiver.accepted.append(json.loads(body))
            self.send_response(503 if refuse else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
