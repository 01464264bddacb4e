"""A small fault-injecting HTTP/1.1 reverse proxy on 127.0.0.1, in front of one S3 server.

The tiering code must survive what object stores and networks do: throttling (503 SlowDown), slow
answers, bodies cut short, flipped bits, and connections that drop before or after the server acted.
Real servers do these rarely and never on cue; this proxy does them to the next N matching requests.

Each client connection gets one thread and one upstream connection (keep-alive on both sides). Request
bodies (Content-Length or chunked) are streamed, never held whole, so large PUTs pass at full speed;
``Expect: 100-continue`` is honoured by relaying the server's interim answer. A fault matches by method
and, optionally, a substring of the request target (path and query). Requests are signed (SigV4) by the
client, so the proxy never changes a request, only responses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

_BLOCK = 1 << 16
_STATUS_TEXT = {500: "Internal Server Error", 503: "Slow Down"}
_ERROR_CODE = {500: "InternalError", 503: "SlowDown"}


class _Closed(Exception):
    """The peer closed its connection."""


@dataclass
class _Fault:
    """One armed fault: what to do to the next ``times`` requests matching ``method`` and ``path``."""

    kind: str  # "status" | "delay" | "truncate" | "flip" | "drop_before" | "drop_after"
    method: str
    path: str | None
    times: int
    value: float = 0.0  # status code, delay seconds, bytes kept, or offset of the flipped byte
    body: bytes | None = None  # whole_for_range: the object's bytes to answer with

    def matches(self, method: str, target: str) -> bool:
        """Whether a request with this method and target is one this fault is for."""
        return self.times > 0 and method == self.method and (self.path is None or self.path in target)


class _Reader:
    """Buffered reads from a socket: lines, exact sizes, and whatever has arrived."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(_BLOCK)
        if not data:
            raise _Closed
        self.buffer += data

    def line(self) -> bytes:
        """One line including its CRLF."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > _BLOCK:
                raise _Closed  # not HTTP
            self._fill()
        end = self.buffer.index(b"\n") + 1
        result, self.buffer = self.buffer[:end], self.buffer[end:]
        return result

    def some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes (at least one)."""
        if not self.buffer:
            self._fill()
        result, self.buffer = self.buffer[:limit], self.buffer[limit:]
        return result

    def exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes."""
        while len(self.buffer) < size:
            self._fill()
        result, self.buffer = self.buffer[:size], self.buffer[size:]
        return result


@dataclass
class _Message:
    """A request or response head: its first line, raw head bytes and headers (lower-cased names)."""

    first: str
    raw: bytes
    headers: dict[str, str]

    @classmethod
    def read(cls, reader: _Reader) -> _Message:
        """Read a head up to and including its blank line."""
        first = reader.line()
        while first in (b"\r\n", b"\n"):  # tolerated between keep-alive messages
            first = reader.line()
        raw = first
        headers: dict[str, str] = {}
        while True:
            line = reader.line()
            raw += line
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(first.decode("latin-1").strip(), raw, headers)

    def chunked(self) -> bool:
        """Whether the body is chunked."""
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    def length(self) -> int | None:
        """The Content-Length, if given."""
        value = self.headers.get("content-length")
        return int(value) if value is not None else None


def _copy_body(reader: _Reader, message: _Message, out: socket.socket | None) -> None:
    """Stream a request body (or a keep-alive response body) as framed, to ``out`` (None: discard)."""
    if message.chunked():
        while True:
            size_line = reader.line()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if out is not None:
                out.sendall(size_line)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = reader.line()
                    if out is not None:
                        out.sendall(trailer)
                    if trailer in (b"\r\n", b"\n"):
                        return
            _copy_exact(reader, size + 2, out)
        return
    _copy_exact(reader, message.length() or 0, out)


def _copy_exact(reader: _Reader, size: int, out: socket.socket | None) -> None:
    """Stream exactly ``size`` bytes."""
    while size > 0:
        data = reader.some(min(size, _BLOCK))
        size -= len(data)
        if out is not None:
            out.sendall(data)


def _bodiless(message: _Message, request_method: str) -> bool:
    """Whether a response has no body whatever its headers say (a HEAD's Content-Length is the object's)."""
    status = int(message.first.split()[1])
    return request_method == "HEAD" or status in (204, 304) or 100 <= status < 200


def _read_body(reader: _Reader, message: _Message, request_method: str) -> bytes:
    """A whole response body, decoded from its framing (without framing: until the server closes)."""
    if _bodiless(message, request_method):
        return b""
    if message.chunked():
        body = b""
        while True:
            size = int(reader.line().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.line() not in (b"\r\n", b"\n"):
                    pass
                return body
            body += reader.exact(size + 2)[:-2]
    length = message.length()
    if length is not None:
        return reader.exact(length)
    body = reader.buffer
    reader.buffer = b""
    with contextlib.suppress(_Closed, OSError):
        while True:
            body += reader.some(_BLOCK)
    return body


def _with_length(head: _Message, body: bytes) -> bytes:
    """The head re-framed for ``body`` sent whole with a Content-Length (a chunked body is sent decoded)."""
    lines = head.raw.decode("latin-1").split("\r\n")
    kept = [
        line
        for line in lines[1:]
        if line and line.split(":")[0].strip().lower() not in ("content-length", "transfer-encoding")
    ]
    return ("\r\n".join([lines[0], *kept, f"Content-Length: {len(body)}"]) + "\r\n\r\n").encode("latin-1")


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of ``target_endpoint`` ("http://host:port") with armed faults."""

    def __init__(self, target_endpoint: str) -> None:
        parts = urlsplit(target_endpoint)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._seen: Counter[str] = Counter()
        self._sockets: set[socket.socket] = set()
        self.latency = 0.0  # seconds added before every response (e.g. 0.02 for S3's time to first byte)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, name="faultproxy-accept", daemon=True).start()

    # Fault controls: each applies to the next ``times`` requests with ``method`` whose target contains ``path``.

    def fail_next(self, method: str, status: int = 503, times: int = 1, path: str | None = None) -> None:
        """Answer with ``status`` (503 SlowDown, 500 InternalError) without forwarding the request."""
        self._arm(_Fault("status", method, path, times, status))

    def delay_next(self, method: str, seconds: float, times: int = 1, path: str | None = None) -> None:
        """Forward, then hold the server's response for ``seconds`` before relaying it."""
        self._arm(_Fault("delay", method, path, times, seconds))

    def truncate_next(self, method: str, keep: int, times: int = 1, path: str | None = None) -> None:
        """Relay the response head (with its full length) and ``keep`` body bytes, then close the connection."""
        self._arm(_Fault("truncate", method, path, times, keep))

    def flip_next(self, method: str, offset: int = 0, times: int = 1, path: str | None = None) -> None:
        """Relay the response with the body byte at ``offset`` inverted (all 8 bits)."""
        self._arm(_Fault("flip", method, path, times, offset))

    def drop_next(self, method: str, forwarded: bool, times: int = 1, path: str | None = None) -> None:
        """Close the client's connection without an answer, before forwarding or after the server answered."""
        self._arm(_Fault("drop_after" if forwarded else "drop_before", method, path, times))

    def set_latency(self, milliseconds: float) -> None:
        """Add ``milliseconds`` before every response (0 turns it off)."""
        self.latency = milliseconds / 1000

    def seen(self, method: str | None = None) -> int:
        """How many requests (with ``method``, or all) reached the proxy."""
        with self._lock:
            return self._seen[method] if method else sum(self._seen.values())

    def counts(self) -> dict[str, int]:
        """Requests seen so far, by method."""
        with self._lock:
            return dict(self._seen)

    def pending(self) -> int:
        """How many armed fault applications are still to happen."""
        with self._lock:
            return sum(fault.times for fault in self._faults)

    def reset(self) -> None:
        """Disarm every fault, zero the counts and the latency."""
        with self._lock:
            self._faults.clear()
            self._seen.clear()
        self.latency = 0.0

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _arm(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, method: str, target: str) -> _Fault | None:
        """Count the request and consume the first armed fault it matches."""
        with self._lock:
            self._seen[method] += 1
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.times -= 1
                    return _Fault(fault.kind, method, fault.path, 1, fault.value)
            return None

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """Relay requests of one client connection until either side closes or a fault closes it."""
        upstream: socket.socket | None = None
        try:
            reader = _Reader(client)
            upstream_reader: _Reader | None = None
            while True:
                request = _Message.read(reader)
                method, target = request.first.split()[:2]
                fault = self._take(method, target)
                if fault is not None and fault.kind in ("status", "drop_before"):
                    if not self._answer_locally(reader, request, client, fault):
                        return
                    continue
                if upstream is None or upstream_reader is None:
                    upstream = socket.create_connection(self._target)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._track(upstream)
                    upstream_reader = _Reader(upstream)
                if not self._forward(reader, request, client, upstream, upstream_reader, fault):
                    return
        except (_Closed, OSError, ValueError, IndexError):
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()
                    with self._lock:
                        self._sockets.discard(sock)

    def _answer_locally(self, reader: _Reader, request: _Message, client: socket.socket, fault: _Fault) -> bool:
        """A fault answered by the proxy itself; False when the connection is to close."""
        if "100-continue" not in request.headers.get("expect", "").lower():
            _copy_body(reader, request, None)
        elif fault.kind == "status":
            # The client waits for 100 Continue before sending its body; answer at once and close.
            self._send_status(client, int(fault.value), close=True)
            return False
        if fault.kind == "drop_before":
            return False
        self._send_status(client, int(fault.value), close=False)
        return True

    def _send_status(self, client: socket.socket, status: int, close: bool) -> None:
        code = _ERROR_CODE.get(status, "InternalError")
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the fault proxy</Message></Error>"
        ).encode()
        head = f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\nContent-Type: application/xml\r\n"
        head += f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
        time.sleep(self.latency)
        client.sendall(head.encode() + body)

    def _forward(  # pylint: disable=too-many-arguments,too-many-positional-arguments  # one request's two ends
        self,
        reader: _Reader,
        request: _Message,
        client: socket.socket,
        upstream: socket.socket,
        upstream_reader: _Reader,
        fault: _Fault | None,
    ) -> bool:
        """Send one request upstream and relay (or fault) its response; False when the connection is to close."""
        method = request.first.split()[0]
        upstream.sendall(request.raw)
        if "100-continue" in request.headers.get("expect", "").lower():
            interim = _Message.read(upstream_reader)
            if not interim.first.split()[1].startswith("1"):
                # A final answer before the body: relay it; the unsent body leaves the connection unusable.
                body = _read_body(upstream_reader, interim, method)
                client.sendall(_with_length(interim, body) + body)
                return False
            client.sendall(interim.raw)
        _copy_body(reader, request, upstream)
        response = _Message.read(upstream_reader)
        while response.first.split()[1].startswith("1"):  # interim answers, relayed as they are
            client.sendall(response.raw)
            response = _Message.read(upstream_reader)
        body = _read_body(upstream_reader, response, method)
        server_closes = response.headers.get("connection", "").lower() == "close" or (
            response.length() is None and not response.chunked() and not _bodiless(response, method)
        )
        head = response.raw if _bodiless(response, method) else _with_length(response, body)
        return self._respond(client, head, body, fault) and not server_closes

    def _respond(self, client: socket.socket, head: bytes, body: bytes, fault: _Fault | None) -> bool:
        """Relay a response to the client, with the fault applied; False when the connection is to close."""
        time.sleep(self.latency + (fault.value if fault is not None and fault.kind == "delay" else 0.0))
        if fault is not None and fault.kind == "drop_after":
            return False
        if fault is not None and fault.kind == "truncate":
            keep = int(fault.value)
            client.sendall(head + body[:keep])
            return False
        if fault is not None and fault.kind == "flip" and int(fault.value) < len(body):
            offset = int(fault.value)
            body = body[:offset] + bytes([body[offset] ^ 0xFF]) + body[offset + 1 :]
        client.sendall(head + body)
        return True

    # Faults on what the server receives and on what the client is told about it: appended after the response
    # faults above and hooked in per instance (see _hook), so that the relay code above stays as it is.

    def flip_request_next(self, method: str, offset: int = 0, times: int = 1, path: str | None = None) -> None:
        """Forward the request with its body byte at ``offset`` inverted (the client sends unsigned payloads,
        so the server stores the changed bytes and answers with their ETag)."""
        self._arm(_Fault("flip_request", method, path, times, offset))
        self._hook()

    def rewrite_status_next(
        self, method: str, from_status: int, to_status: int, times: int = 1, path: str | None = None
    ) -> None:
        """Relay the server's answer with status ``to_status`` where it was ``from_status`` (e.g. a 412 to a
        conditional create turned into 200: a server that overwrites). Each matching request uses up one."""
        self._arm(_Fault("rewrite_status", method, path, times, from_status * 1000 + to_status))
        self._hook()

    def whole_for_range_next(self, method: str = "GET", times: int = 1, path: str | None = None) -> None:
        """Answer a ranged request with 200 and the whole object, as a server that ignores Range does. The
        proxy cannot drop the Range header (the client's signature covers it), so it answers with the body of
        the first PUT to the same target it relayed after this call (targets without a PUT seen: unchanged)."""
        self._arm(_Fault("whole_for_range", method, path, times))
        self._hook()

    def _hook(self) -> None:
        """Route requests through the faults above (once per proxy; a no-op for every other fault)."""
        if "_forward" in vars(self):
            return
        forward, respond = self._forward, self._respond
        bodies: dict[str, bytes] = {}  # target -> first PUT body, while a whole_for_range fault is armed

        def forward_faulted(  # pylint: disable=too-many-arguments,too-many-positional-arguments
            reader: _Reader,
            request: _Message,
            client: socket.socket,
            upstream: socket.socket,
            upstream_reader: _Reader,
            fault: _Fault | None,
        ) -> bool:
            method, target = request.first.split()[:2]
            target = target.split("?")[0]
            view: _BodyView | None = None
            if fault is not None and fault.kind == "flip_request":
                reader = view = _BodyView(reader, int(fault.value))
            elif method == "PUT" and target not in bodies and self._wants_body(target):
                reader = view = _BodyView(reader, -1)
            if fault is not None and fault.kind == "whole_for_range":
                fault = dataclasses.replace(fault, path=target, body=bodies.get(target))
            try:
                return forward(reader, request, client, upstream, upstream_reader, fault)
            finally:
                if view is not None and view.offset < 0:
                    bodies.setdefault(target, b"".join(view.seen))

        def respond_faulted(client: socket.socket, head: bytes, body: bytes, fault: _Fault | None) -> bool:
            if fault is not None:
                head, body = _rewritten(head, body, fault)
            return respond(client, head, body, fault)

        setattr(self, "_forward", forward_faulted)  # instance attributes: _serve's self._forward finds them first
        setattr(self, "_respond", respond_faulted)

    def _wants_body(self, target: str) -> bool:
        """Whether an armed whole_for_range fault may answer for ``target`` (then its PUT bodies are kept)."""
        with self._lock:
            return any(f.kind == "whole_for_range" and f.matches("GET", target) for f in self._faults)


def _rewritten(head: bytes, body: bytes, fault: _Fault) -> tuple[bytes, bytes]:
    """The response head and body a rewrite_status or whole_for_range fault makes of the server's."""
    if fault.kind == "rewrite_status":
        from_status, to_status = divmod(int(fault.value), 1000)
        first, rest = head.split(b"\r\n", 1)
        if int(first.split()[1]) == from_status:
            head = f"HTTP/1.1 {to_status} Rewritten\r\n".encode() + rest
            if b"\netag:" not in head.lower():  # clients need one on a successful PUT
                head = head[:-2] + f'ETag: "{hashlib.md5(body).hexdigest()}"\r\n\r\n'.encode()
    if fault.kind == "whole_for_range" and fault.body is not None:
        body = fault.body
        text = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
        head = (text + f'ETag: "{hashlib.md5(body).hexdigest()}"\r\n\r\n').encode()
    return head, body


class _BodyView(_Reader):
    """A view of a connection's reader for one request body: keeps what it streams (``offset`` < 0), or
    inverts the byte at ``offset``."""

    def __init__(self, inner: _Reader, offset: int) -> None:  # pylint: disable=super-init-not-called  # a view
        self.inner = inner
        self.offset = offset
        self.position = 0
        self.seen: list[bytes] = []

    def line(self) -> bytes:
        return self.inner.line()

    def exact(self, size: int) -> bytes:
        return self._view(self.inner.exact(size))

    def some(self, limit: int) -> bytes:
        return self._view(self.inner.some(limit))

    def _view(self, data: bytes) -> bytes:
        at = self.offset - self.position
        self.position += len(data)
        if self.offset < 0:
            self.seen.append(data)
        elif 0 <= at < len(data):
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
        return data
