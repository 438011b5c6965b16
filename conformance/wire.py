"""Raw signed HTTP for what boto3 cannot send: PutMedia (in no Python SDK) and deliberately bad requests.

Requests are signed with botocore's own SigV4Auth, so the signatures are the ones the official client makes.
The HTTP is written by hand on a socket: PutMedia needs its chunked body sent while the acknowledgements are
read on the same connection, which neither http.client nor requests allow.
"""

from __future__ import annotations

import datetime
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from unittest import mock
from urllib.parse import urlsplit

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "kinesisvideo"


@dataclass
class Creds:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def botocore(self) -> Credentials:
        return Credentials(self.access_key, self.secret_key, self.session_token)


class _SignEveryHeader(SigV4Auth):
    """SigV4 exactly as botocore computes it, but over every header sent, hop-by-hop ones included: the official
    C++ producer signs connection, transfer-encoding and user-agent on PutMedia."""

    def headers_to_sign(self, request):
        from botocore.awsrequest import HTTPHeaders

        header_map = HTTPHeaders()
        for name, value in request.headers.items():
            header_map[name.lower()] = value
        if "host" not in header_map:
            header_map["host"] = urlsplit(request.url).netloc
        return header_map


def sign(
    url: str,
    headers: dict[str, str],
    body: bytes,
    creds: Creds,
    region: str = "us-east-1",
    service: str = SERVICE,
    when: datetime.datetime | None = None,
    sign_every_header: bool = False,
) -> dict[str, str]:
    """Returns the headers to send: the given ones plus Host, X-Amz-Date, Authorization (and the token)."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    signer_class = _SignEveryHeader if sign_every_header else SigV4Auth
    signer = signer_class(creds.botocore(), service, region)
    if when is None:
        signer.add_auth(request)
    else:
        naive_utc = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=naive_utc):
            signer.add_auth(request)
    out = {"Host": urlsplit(url).netloc}
    out.update({k: v for k, v in request.headers.items()})
    return out


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def error_type(self) -> str | None:
        value = self.headers.get("x-amzn-errortype")
        return value.split(":", 1)[0] if value is not None else None

    def json(self) -> dict:
        return json.loads(self.body.decode("utf-8"))


def _connect(url: str, timeout: float) -> socket.socket:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http endpoints are supported by the raw client, got {url}")
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _HttpReader:
    """Incremental HTTP/1.1 response reader: status line and headers, then a chunked or sized body."""

    def __init__(self, sock: socket.socket, on_informational=None):
        self.sock = sock
        self.buf = b""
        self.eof = False
        self.on_informational = on_informational

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, OSError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill():
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> tuple[int, dict[str, str]] | None:
        while True:
            line = self.read_line()
            if line is None:
                return None
            parts = line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError(f"not an HTTP status line: {line!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            while True:
                h = self.read_line()
                if h is None:
                    return None
                if h == b"":
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                if self.on_informational is not None:
                    self.on_informational(status)
                continue  # 100 Continue and friends precede the real response
            return status, headers

    def body_chunks(self, headers: dict[str, str]):
        """Yields body bytes as they arrive."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                line = self.read_line()
                if line is None:
                    return
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self.read_line()
                    return
                data = self.read_exact(size)
                if data is None:
                    return
                self.read_exact(2)
                yield data
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                if not self.buf and not self._fill():
                    return
                take = self.buf[:remaining]
                self.buf = self.buf[len(take) :]
                remaining -= len(take)
                yield take
        else:
            while True:
                if self.buf:
                    data, self.buf = self.buf, b""
                    yield data
                if not self._fill():
                    if self.buf:
                        data, self.buf = self.buf, b""
                        yield data
                    return


def raw_post(
    endpoint: str,
    path: str,
    body: bytes,
    creds: Creds | None,
    headers: dict[str, str] | None = None,
    region: str = "us-east-1",
    service: str = SERVICE,
    when: datetime.datetime | None = None,
    timeout: float = 30.0,
    override: dict[str, str] | None = None,
) -> RawResponse:
    """POSTs a body signed by botocore (or unsigned when creds is None); override replaces headers after signing."""
    url = endpoint.rstrip("/") + path
    base = {"Content-Type": "application/json"}
    base.update(headers or {})
    if creds is not None:
        sent = sign(url, base, body, creds, region, service, when)
    else:
        sent = {"Host": urlsplit(url).netloc, **base}
    for k, v in (override or {}).items():
        for existing in [e for e in sent if e.lower() == k.lower()]:
            del sent[existing]
        if v is not None:
            sent[k] = v
    sent["Content-Length"] = str(len(body))
    sent["Connection"] = "close"
    sock = _connect(url, timeout)

    def upload() -> None:
        try:
            sock.sendall(_head(path, sent))
            sock.sendall(body)
        except OSError:
            pass  # the server may answer (e.g. 413) before reading the whole body; the reader sees its answer

    # Sending while reading lets a server answer early (413) without the client blocking on a full window.
    sender = threading.Thread(target=upload, name="raw-post-upload", daemon=True)
    sender.start()
    try:
        reader = _HttpReader(sock)
        head = reader.read_head()
        if head is None:
            raise ConnectionError(f"{path}: connection closed without an HTTP response")
        status, resp_headers = head
        data = b"".join(reader.body_chunks(resp_headers))
        return RawResponse(status, resp_headers, data)
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sender.join(timeout=5)
        sock.close()


# --------------------------------------------------------------------------------------------------------------
# PutMedia


@dataclass
class Ack:
    received_at: float
    raw: dict

    @property
    def event_type(self) -> str:
        return self.raw.get("EventType", "")

    @property
    def fragment_number(self) -> str | None:
        return self.raw.get("FragmentNumber")

    @property
    def fragment_timecode(self) -> int | None:
        return self.raw.get("FragmentTimecode")


@dataclass
class PutMediaSession:
    """One PutMedia request: chunks go out with send(), acknowledgements are collected by a reader thread."""

    sock: socket.socket
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    acks: list[Ack] = field(default_factory=list)
    closed: bool = False
    send_error: str | None = None
    parse_error: str | None = None
    informational: list[int] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None

    def start_reader(self) -> None:
        self._thread = threading.Thread(target=self._read, name="putmedia-acks", daemon=True)
        self._thread.start()

    def _informational(self, status: int) -> None:
        with self._cond:
            self.informational.append(status)
            self._cond.notify_all()

    def wait_continue(self, timeout: float = 2.0) -> bool:
        """Waits for `100 Continue` (asked for with Expect: 100-continue)."""
        with self._cond:
            return self._cond.wait_for(lambda: 100 in self.informational or self.closed, timeout) and (
                100 in self.informational
            )

    def _read(self) -> None:
        reader = _HttpReader(self.sock, self._informational)
        try:
            head = reader.read_head()
            if head is None:
                return
            with self._cond:
                self.status, self.headers = head
                self._cond.notify_all()
            pending = b""
            decoder = json.JSONDecoder()
            for data in reader.body_chunks(self.headers):
                with self._cond:
                    self.body += data
                if self.status != 200:
                    continue  # an error response carries {"Message": ...}, not acks
                pending += data
                while True:
                    stripped = pending.lstrip()
                    if not stripped:
                        pending = b""
                        break
                    try:
                        obj, end = decoder.raw_decode(stripped.decode("utf-8"))
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        pending = stripped
                        break
                    consumed = len(stripped.decode("utf-8")[:end].encode("utf-8"))
                    pending = stripped[consumed:]
                    with self._cond:
                        self.acks.append(Ack(time.monotonic(), obj))
                        self._cond.notify_all()
            if pending.strip() and self.status == 200:
                self.parse_error = f"trailing bytes that are not an ack: {pending[:200]!r}"
        except (ValueError, OSError) as exc:
            self.parse_error = str(exc)
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def send(self, data: bytes) -> bool:
        """Sends one HTTP chunk. Returns False (and records why) if the server already closed the connection."""
        if not data:
            return True
        try:
            self.sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
            return True
        except OSError as exc:
            self.send_error = str(exc)
            return False

    def finish(self) -> None:
        """Ends the chunked body (zero-length chunk)."""
        try:
            self.sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            self.send_error = str(exc)

    def wait_status(self, timeout: float = 10.0) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: self.status is not None or self.closed, timeout)
            return self.status

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:
        """Waits until predicate(acks) holds or the response ends; returns whether it holds."""
        with self._cond:
            self._cond.wait_for(lambda: predicate(self.acks) or self.closed, timeout)
            return bool(predicate(self.acks))

    def wait_closed(self, timeout: float = 15.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.closed, timeout)

    def events(self) -> list[tuple[str, int | None, str | None]]:
        with self._cond:
            return [(a.event_type, a.fragment_timecode, a.fragment_number) for a in self.acks]

    def errors(self) -> list[dict]:
        with self._cond:
            return [a.raw for a in self.acks if a.event_type == "ERROR"]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PutMediaSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_put_media(
    endpoint: str,
    creds: Creds,
    stream_name: str | None = None,
    stream_arn: str | None = None,
    timecode_type: str | None = "ABSOLUTE",
    producer_start: float | None = None,
    ack_required: bool = True,
    region: str = "us-east-1",
    extra_headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    like_cpp_producer: bool = False,
) -> PutMediaSession:
    """Opens a PutMedia request the way the C++ producer does (chunked, keep-alive, empty-body payload hash)."""
    url = endpoint.rstrip("/") + "/putMedia"
    headers: dict[str, str] = {}
    if stream_name is not None:
        headers["x-amzn-stream-name"] = stream_name
    if stream_arn is not None:
        headers["x-amzn-stream-arn"] = stream_arn
    if timecode_type is not None:
        headers["x-amzn-fragment-timecode-type"] = timecode_type
    start = producer_start if producer_start is not None else time.time()
    headers["x-amzn-producer-start-timestamp"] = f"{start:.3f}"
    headers["x-amzn-fragment-acknowledgment-required"] = "1" if ack_required else "0"
    headers.update(extra_headers or {})
    if like_cpp_producer:
        # Header set and signing of the official C++ producer (testdata/cpp-producer): hop-by-hop headers and
        # user-agent signed, Expect: 100-continue sent unsigned after them.
        headers.update(
            {
                "connection": "keep-alive",
                "transfer-encoding": "chunked",
                "user-agent": "AWS-SDK-KVS-CPP-CLIENT/3.6.0 conformance",
            }
        )
        signed = sign(url, headers, b"", creds, region, sign_every_header=True)
        signed["Expect"] = "100-continue"
    else:
        signed = sign(url, headers, b"", creds, region)
        signed["transfer-encoding"] = "chunked"
        signed["connection"] = "keep-alive"
    sock = _connect(url, timeout)
    sock.sendall(_head("/putMedia", signed))
    session = PutMediaSession(sock)
    session.start_reader()
    return session
