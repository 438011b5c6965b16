"""Shared steps of the conformance tests: stream set-up, media ingestion through PutMedia, GetMedia reading."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

import mkv
from wire import Creds, open_put_media

FRAGMENT_NUMBER_RE = re.compile(r"^[0-9]{47}$")
TIMESTAMP_TAG_RE = re.compile(r"^[0-9]+\.[0-9]{3}$")
ARN_RE = re.compile(r"^arn:aws:kinesisvideo:us-east-1:[0-9]{12}:stream/(?P<name>[a-zA-Z0-9_.-]+)/(?P<ms>[0-9]+)$")


def plausible_fragment_number(seq: int = 1, server_ts_ms: int | None = None) -> str:
    """A number of the service's observed shape ((2^64 + seq) << 92 | ms << 28), 47 digits, that names no fragment."""
    ms = server_ts_ms if server_ts_ms is not None else int(time.time() * 1000)
    return str(((2**64 + seq) << 92) | (ms << 28))


def unique(prefix: str = "conf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_active(kv, name: str, timeout: float = 10.0) -> dict:
    """CreateStream and the updates are asynchronous: waits for ACTIVE through CREATING or UPDATING."""
    deadline = time.monotonic() + timeout
    while True:
        info = kv.describe_stream(StreamName=name)["StreamInfo"]
        if info["Status"] == "ACTIVE":
            return info
        assert info["Status"] in ("CREATING", "UPDATING"), f"stream {name} went to {info['Status']}, not ACTIVE"
        if time.monotonic() > deadline:
            raise AssertionError(f"stream {name} still CREATING after {timeout} s")
        time.sleep(0.1)


def create_stream(kv, name: str | None = None, retention: int = 1, **kwargs) -> dict:
    name = name or unique()
    kv.create_stream(StreamName=name, DataRetentionInHours=retention, **kwargs)
    return wait_active(kv, name)


@dataclass
class Ingested:
    """What was put: per fragment its cluster timecode (ms), its bytes and the number the acks gave it."""

    stream: str
    timecodes: list[int]
    clusters: list[bytes]
    fragment_numbers: list[str]
    header: bytes
    started: float
    finished: float


def fragment_numbers_from_acks(session, event: str) -> dict[int, str]:
    return {a.fragment_timecode: a.fragment_number for a in session.acks if a.event_type == event}


def ingest(
    endpoint: str,
    creds: Creds,
    stream: str,
    count: int = 5,
    base_ms: int | None = None,
    step_ms: int = 1000,
    wait_event: str = "PERSISTED",
    tracks: list[mkv.Track] | None = None,
    seed: int = 0,
    pause: float = 0.0,
) -> Ingested:
    """PutMedia of `count` one-second fragments with ABSOLUTE timecodes; waits for `wait_event` of each."""
    base_ms = base_ms if base_ms is not None else int(time.time() * 1000) - count * step_ms
    timecodes = [base_ms + i * step_ms for i in range(count)]
    header = mkv.segment_header(tracks)
    two_tracks = tracks is not None and len(tracks) == 2
    clusters = [
        mkv.av_fragment(tc, seed=seed + i) if two_tracks else mkv.video_fragment(tc, seed=seed + i)
        for i, tc in enumerate(timecodes)
    ]
    started = time.time()
    with open_put_media(endpoint, creds, stream_name=stream) as session:
        assert session.send(header)
        for c in clusters:
            assert session.send(c), session.send_error
            time.sleep(pause)
        assert session.send(mkv.end_of_fragment_tags()), session.send_error

        def all_done(acks) -> bool:
            got = {a.fragment_timecode for a in acks if a.event_type == wait_event}
            return all(tc in got for tc in timecodes)

        ok = session.wait_for(all_done, timeout=30)
        assert session.status == 200, f"PutMedia answered {session.status}: {session.body[:500]!r}"
        assert ok, f"not every fragment got {wait_event}: acks {session.events()}"
        assert not session.errors(), f"unexpected ERROR acks: {session.errors()}"
        numbers = fragment_numbers_from_acks(session, wait_event)
        session.finish()
        session.wait_closed(timeout=10)
    return Ingested(stream, timecodes, clusters, [numbers[tc] for tc in timecodes], header, started, time.time())


def read_streaming_body(body, limit_seconds: float = 30.0) -> tuple[bytes, float]:
    """Reads a botocore StreamingBody to its end; returns the bytes and how long the read took."""
    start = time.monotonic()
    chunks = []
    while True:
        data = body.read(65536)
        if not data:
            break
        chunks.append(data)
        if time.monotonic() - start > limit_seconds:
            body.close()
            raise AssertionError(f"streaming body still open after {limit_seconds} s")
    return b"".join(chunks), time.monotonic() - start


def read_available(body, size: int = 65536) -> bytes:
    """Returns what has arrived so far (at least one byte, or b"" at the end) without waiting for `size` bytes.

    StreamingBody.read(n) waits until n bytes or the end: useless for watching a live body.
    """
    raw = getattr(body, "_raw_stream", None)
    if raw is not None and hasattr(raw, "read1"):
        return raw.read1(size)
    return body.read(1)


def expected_frames(cluster_bytes: bytes) -> list[tuple[int, int, bool, bytes]]:
    frag = mkv.split_fragments(mkv.segment_header() + cluster_bytes)[0]
    return [(b.track, b.rel_timecode, b.keyframe, b.payload) for b in frag.blocks]


def frames_of(frag: mkv.FragmentFile) -> list[tuple[int, int, bool, bytes]]:
    return [(b.track, b.rel_timecode, b.keyframe, b.payload) for b in frag.blocks]
