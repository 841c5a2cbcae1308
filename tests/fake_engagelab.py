"""A fake EngageLab Email API on loopback, from the request and answer shapes we know.

A real HTTP server (keep-alive, one thread per connection), so the provider is tested through
httpx exactly as in production. Only error code 30801 ("From can not be empty") is documented;
the other codes here are made up in the same style. Tests steer it with `fail_next` and
`hang_next`, and read what it saw in `requests` and what it took in `accepted`.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SEND_PATH = "/v1/mail/send"
API_USER = "edm_trigger_user"
API_KEY = "fake-engagelab-key"
WINDOW = 3600.0  # how long a request_id is remembered


@dataclass
class Recorded:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    json: object
    client_port: int


@dataclass
class Accepted:
    """One message the fake took: it would have been sent."""

    request_id: str | None
    email_ids: list[str]
    payload: dict


@dataclass
class _Plan:
    """How to answer the next `count` requests instead of normally."""

    count: int
    status: int | None = None
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    accept: bool = False  # take the message first ("accepted but the answer was lost")


class FakeEngageLab:
    def __init__(self, api_user: str = API_USER, api_key: str = API_KEY) -> None:
        self.api_user = api_user
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self.accepted: list[Accepted] = []
        self._answers: dict[str, tuple[float, dict]] = {}  # request_id -> (time, answer)
        self._plans: list[_Plan] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sequence = itertools.count(1)
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def options(self) -> dict[str, str]:
        """Provider options that reach this fake with the right credentials."""
        return {"api_user": self.api_user, "api_key": self.api_key, "base_url": self.base_url}

    def start(self) -> FakeEngageLab:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends any hanging answer at once
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- controls -----------------------------------------------------------------------------
    def fail_next(
        self,
        status: int,
        body: object = None,
        *,
        count: int = 1,
        retry_after: str | None = None,
        headers: dict[str, str] | None = None,
        accept: bool = False,
    ) -> None:
        """Answer the next `count` requests with this status (after auth is checked)."""
        if body is None:
            body = {"code": 30000 + status, "message": f"simulated HTTP {status}"}
        headers = dict(headers or {})
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        with self._lock:
            self._plans.append(_Plan(count, status, body, headers, accept=accept))

    def hang_next(self, seconds: float, *, count: int = 1, accept: bool = False) -> None:
        """Keep the next `count` requests waiting `seconds` before answering normally."""
        with self._lock:
            self._plans.append(_Plan(count, hang=seconds, accept=accept))

    # -- the API --------------------------------------------------------------------------------
    def _take_plan(self) -> _Plan | None:
        with self._lock:
            if not self._plans:
                return None
            plan = self._plans[0]
            plan.count -= 1
            if plan.count <= 0:
                self._plans.pop(0)
            return plan

    def _authorised(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.api_user}:{self.api_key}".encode()).decode()
        return header == f"Basic {expected}"

    def answer(
        self, method: str, path: str, headers: dict[str, str], data: object
    ) -> tuple[int, object, dict[str, str]] | None:
        """(status, JSON body, extra headers) for one request; None: no answer at all."""
        if method != "POST" or path != SEND_PATH:
            return 404, {"code": 30404, "message": f"no such API: {method} {path}"}, {}
        if not self._authorised(headers.get("Authorization")):
            return 401, {"code": 30401, "message": "Authentication failed"}, {}
        plan = self._take_plan()
        taken = None
        if plan and plan.accept and isinstance(data, dict) and _problem(data) is None:
            taken = self._accept(data)
        if plan and plan.status is not None:
            return plan.status, plan.body, plan.headers
        # A hang without `accept` takes the message only if it ends before the fake stops.
        if plan and plan.hang and self._stopping.wait(plan.hang):
            return None
        if not isinstance(data, dict):
            return 400, {"code": 30800, "message": "Request body is not a JSON object"}, {}
        problem = _problem(data)
        if problem:
            return 400, {"code": problem[0], "message": problem[1]}, {}
        return 200, taken or self._accept(data), {}

    def _accept(self, data: dict) -> dict:
        """Take a valid message once per request_id; a repeat gets the earlier answer."""
        request_id = data.get("request_id") or None
        now = time.monotonic()
        with self._lock:
            if request_id and request_id in self._answers:
                at, earlier = self._answers[request_id]
                if now - at < WINDOW:
                    return earlier
            message_id = (
                f"{int(time.time() * 1000)}_100001_{next(self._sequence)}_{uuid.uuid4().hex}"
                f"{uuid.uuid4().hex}.sc-10_43_7_16-inbound"
            )
            email_ids = [f"{message_id}{i}${to}" for i, to in enumerate(data["to"])]
            answer = {"email_ids": email_ids, "request_id": request_id or uuid.uuid4().hex}
            self.accepted.append(Accepted(request_id, email_ids, data))
            if request_id:
                self._answers[request_id] = (now, answer)
            return answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be seen
            wbufsize = 1 << 16  # headers and body in one write: no delayed-ACK stall per answer

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self._serve()

            def do_GET(self) -> None:  # noqa: N802
                self._serve()

            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = None
                headers = dict(self.headers.items())
                with fake._lock:
                    fake.requests.append(
                        Recorded(
                            self.command, self.path, headers, raw, data, self.client_address[1]
                        )
                    )
                answer = fake.answer(self.command, self.path, headers, data)
                if answer is None:
                    self.close_connection = True
                    return
                status, body, extra = answer
                encoded = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json;charset=utf-8")
                    self.send_header("Content-Length", str(len(encoded)))
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(encoded)
                    self.wfile.flush()
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


class _Server(ThreadingHTTPServer):
    # A worker may open a dozen connections at once; the default backlog of 5 would drop
    # the rest's SYNs, and the client's one-second SYN retry looks like a hung provider.
    request_queue_size = 128
    daemon_threads = True


def _problem(data: dict) -> tuple[int, str] | None:
    """What EngageLab would refuse in a send request, as (code, message)."""
    to = data.get("to")
    body = data.get("body")
    if not data.get("from"):
        return 30801, "From can not be empty"
    if not isinstance(to, list) or not to:
        return 30802, "To can not be empty"
    if len(to) > 100:
        return 30803, "To can not exceed 100 recipients"
    for address in to:
        if not isinstance(address, str) or address.count("@") != 1 or " " in address.strip():
            return 30804, f"Invalid email address in to: {address}"
    if not isinstance(body, dict):
        return 30805, "Body can not be empty"
    subject = body.get("subject")
    if not subject:
        return 30806, "Subject can not be empty"
    if len(subject) > 256:
        return 30807, "Subject can not exceed 256 characters"
    content = body.get("content")
    if not isinstance(content, dict) or not (content.get("html") or content.get("text")):
        return 30808, "Content can not be empty"
    if _size(body.get("headers") or {}) > 1024:
        return 30809, "Headers can not exceed 1KB"
    custom_args = data.get("custom_args") or {}
    if _size(custom_args) > 1024:
        return 30810, "Custom args can not exceed 1KB"
    if any("." in key for key in custom_args):
        return 30811, "Custom args keys can not contain '.'"
    request_id = data.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 128):
        return 30812, "Request id can not exceed 128 characters"
    return None


def _size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


@pytest.fixture
def engagelab() -> Iterator[FakeEngageLab]:
    fake = FakeEngageLab().start()
    try:
        yield fake
    finally:
        fake.stop()
