"""PutMedia, which no boto3 model has: a small client in wire.py signs with botocore's SigV4Auth and streams a
chunked MKV body, reading the acknowledgements on the same connection (seed 003, PutMedia).
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import mkv
from helpers import FRAGMENT_NUMBER_RE, create_stream, ingest, unique
from wire import open_put_media


def _acks_for(session, timecode: int) -> list[str]:
    return [a.event_type for a in session.acks if a.fragment_timecode == timecode and a.event_type != "IDLE"]


def test_acks_buffering_received_persisted_per_fragment(kv, endpoint, creds):
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000) - 10_000
    timecodes = [base + i * 1000 for i in range(3)]
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        assert s.send(mkv.segment_header())
        for i, tc in enumerate(timecodes):
            assert s.send(mkv.video_fragment(tc, seed=i))
        assert s.send(mkv.end_of_fragment_tags())
        done = s.wait_for(lambda acks: sum(a.event_type == "PERSISTED" for a in acks) >= 3, timeout=20)
        assert s.status == 200, f"PutMedia answered HTTP {s.status}: {s.body[:300]!r}"
        assert done, f"three PERSISTED acks expected, got {s.events()}"
        assert not s.errors(), s.errors()
        numbers = []
        for tc in timecodes:
            assert _acks_for(s, tc) == ["BUFFERING", "RECEIVED", "PERSISTED"], (tc, s.events())
            per_fragment = {a.fragment_number for a in s.acks if a.fragment_timecode == tc}
            assert len(per_fragment) == 1, f"the three acks of one fragment carry one FragmentNumber: {per_fragment}"
            number = per_fragment.pop()
            assert isinstance(number, str) and FRAGMENT_NUMBER_RE.match(number), number
            numbers.append(number)
        assert numbers == sorted(numbers) and len(set(numbers)) == 3, "fragment numbers increase with ingestion"
        s.finish()
        assert s.wait_closed(10), "the response ends once the body has ended and every ack is sent"


def test_ack_json_shape(kv, endpoint, creds):
    info = create_stream(kv, retention=1)
    tc = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(tc) + mkv.end_of_fragment_tags())
        assert s.wait_for(lambda acks: any(a.event_type == "PERSISTED" for a in acks))
        for a in s.acks:
            if a.event_type == "IDLE":
                continue
            assert set(a.raw) == {"EventType", "FragmentTimecode", "FragmentNumber"}, a.raw
            assert isinstance(a.raw["FragmentTimecode"], int) and a.raw["FragmentTimecode"] == tc
            assert isinstance(a.raw["FragmentNumber"], str)
        lines = [line for line in s.body.split(b"\n") if line.strip()]
        assert len(lines) == len(s.acks), "acks are newline-separated JSON objects"


def test_acks_stream_while_the_body_is_still_open(kv, endpoint, creds):
    """RECEIVED for a fragment comes when the next cluster starts, before the request body ends."""
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header())
        s.send(mkv.video_fragment(base))
        assert s.wait_for(lambda acks: any(a.event_type == "BUFFERING" for a in acks), timeout=10), (
            f"BUFFERING is sent when the first byte of a fragment arrives: {s.events()}"
        )
        s.send(mkv.video_fragment(base + 1000, seed=1)[:40])  # the next cluster has started
        assert s.wait_for(
            lambda acks: any(a.event_type == "RECEIVED" and a.fragment_timecode == base for a in acks), timeout=10
        ), f"RECEIVED of the first fragment must not wait for the end of the body: {s.events()}"
        assert s.wait_for(
            lambda acks: any(a.event_type == "PERSISTED" and a.fragment_timecode == base for a in acks), timeout=10
        )
        assert not s.closed


def test_no_persisted_ack_without_retention(kv, endpoint, creds):
    # "Persisted: ... You get this acknowledgement if you configured the stream to persist the data."
    info = create_stream(kv, retention=0)
    base = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(base) + mkv.video_fragment(base + 1000, seed=1))
        s.send(mkv.end_of_fragment_tags())
        assert s.wait_for(lambda acks: sum(a.event_type == "RECEIVED" for a in acks) >= 2, timeout=15), s.events()
        time.sleep(1.0)
        assert [e for e, _, _ in s.events() if e == "PERSISTED"] == []
        assert not s.errors()


def test_put_media_by_stream_arn(kv, endpoint, creds):
    info = create_stream(kv, retention=1)
    tc = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_arn=info["StreamARN"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(tc) + mkv.end_of_fragment_tags())
        assert s.wait_for(lambda acks: any(a.event_type == "PERSISTED" for a in acks)), s.events()
        assert s.status == 200


def test_put_media_two_tracks(kv, endpoint, creds, archived):
    info = create_stream(kv, retention=1)
    got = ingest(endpoint, creds, info["StreamName"], count=3, tracks=[mkv.VIDEO_TRACK, mkv.AUDIO_TRACK])
    assert len(got.fragment_numbers) == 3


def test_put_media_unknown_stream_is_resource_not_found(endpoint, creds):
    with open_put_media(endpoint, creds, stream_name=unique("missing")) as s:
        s.send(mkv.segment_header())
        assert s.wait_status() == 404
        s.wait_closed(5)
        assert s.headers.get("x-amzn-errortype", "").split(":")[0] == "ResourceNotFoundException", s.headers


def test_put_media_without_timecode_type_is_invalid_argument(kv, endpoint, creds):
    # FragmentTimecodeType: "Required: Yes"
    info = create_stream(kv, retention=1)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"], timecode_type=None) as s:
        s.send(mkv.segment_header())
        assert s.wait_status() == 400
        s.wait_closed(5)
        assert s.headers.get("x-amzn-errortype", "").split(":")[0] == "InvalidArgumentException", s.headers


def test_put_media_bad_timecode_type_is_invalid_argument(kv, endpoint, creds):
    info = create_stream(kv, retention=1)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"], timecode_type="SOMETIMES") as s:
        s.send(mkv.segment_header())
        assert s.wait_status() == 400
        s.wait_closed(5)
        assert s.headers.get("x-amzn-errortype", "").split(":")[0] == "InvalidArgumentException", s.headers


def test_second_concurrent_put_media_is_connection_limit_exceeded(kv, endpoint, creds):
    # "If you attempt more than one concurrent PutMedia connection, Kinesis Video Streams throttles the latest
    # connections with a ConnectionLimitExceededException error."
    info = create_stream(kv, retention=1)
    tc = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as first:
        first.send(mkv.segment_header() + mkv.video_fragment(tc))
        assert first.wait_for(lambda acks: any(a.event_type == "BUFFERING" for a in acks)), first.events()
        with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as second:
            second.send(mkv.segment_header())
            assert second.wait_status() == 400
            second.wait_closed(5)
            assert second.headers.get("x-amzn-errortype", "").split(":")[0] == "ConnectionLimitExceededException"
        first.send(mkv.video_fragment(tc + 1000, seed=1) + mkv.end_of_fragment_tags())
        assert first.wait_for(lambda acks: sum(a.event_type == "PERSISTED" for a in acks) >= 2), (
            f"the first session is unaffected: {first.events()}"
        )


def _expect_error_ack(session, error_id: int, error_code: str, timeout: float = 15.0) -> dict:
    ok = session.wait_for(lambda acks: any(a.event_type == "ERROR" for a in acks), timeout=timeout)
    assert session.status == 200, f"errors in the body come as ERROR acks after HTTP 200, got {session.status}"
    assert ok, f"expected an ERROR ack {error_id} {error_code}, got {session.events()}"
    err = session.errors()[0]
    assert (err.get("ErrorId"), err.get("ErrorCode")) == (error_id, error_code), err
    return err


def test_garbage_body_is_invalid_mkv_data(kv, endpoint, creds):
    info = create_stream(kv, retention=1)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(b"\x00\x01garbage that is not matroska" * 20)
        s.finish()
        _expect_error_ack(s, 4006, "INVALID_MKV_DATA")


def test_timecode_going_backwards(kv, endpoint, creds):
    # "The earliest frame timestamp in a fragment must be after the latest frame timestamp in the previous fragment."
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(base) + mkv.video_fragment(base - 5000, seed=1))
        s.send(mkv.end_of_fragment_tags())
        err = _expect_error_ack(s, 4004, "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS")
        assert err.get("FragmentTimecode") == base - 5000
        assert s.wait_for(
            lambda acks: any(a.event_type == "PERSISTED" and a.fragment_timecode == base for a in acks), timeout=10
        ), f"the valid fragment before the bad one is still stored: {s.events()}"


def test_more_than_three_tracks(kv, endpoint, creds):
    info = create_stream(kv, retention=1)
    tracks = [mkv.Track(n, "V_MPEG4/ISO/AVC", 1, f"t{n}", mkv.AVC_CODEC_PRIVATE) for n in range(1, 5)]
    base = int(time.time() * 1000)
    frames = [mkv.Frame(n, 0, True, mkv.frame_payload(n, 200)) for n in range(1, 5)]
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header(tracks) + mkv.cluster(base, frames) + mkv.end_of_fragment_tags())
        _expect_error_ack(s, 4005, "MORE_THAN_ALLOWED_TRACKS_FOUND")


def test_frame_of_unknown_track(kv, endpoint, creds):
    # 4010 TRACK_NUMBER_MISMATCH: "The track number in an MKV frame did not match the tracks in the MKV header."
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    frames = [mkv.Frame(1, 0, True, mkv.frame_payload(1, 200)), mkv.Frame(7, 10, False, mkv.frame_payload(2, 100))]
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.cluster(base, frames) + mkv.end_of_fragment_tags())
        _expect_error_ack(s, 4010, "TRACK_NUMBER_MISMATCH")


def test_track_without_frames(kv, endpoint, creds):
    # 4011 FRAMES_MISSING_FOR_TRACK: "The fragment did not contain any frames for at least one of the tracks"
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header([mkv.VIDEO_TRACK, mkv.AUDIO_TRACK]) + mkv.video_fragment(base))
        s.send(mkv.end_of_fragment_tags())
        _expect_error_ack(s, 4011, "FRAMES_MISSING_FOR_TRACK")


def test_producer_tag_with_aws_prefix(kv, endpoint, creds):
    # 4012 INVALID_FRAGMENT_METADATA: "Fragment metadata name cannot begin with the string AWS_."
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(base) + mkv.tags([("AWS_MY_TAG", "x")]))
        s.send(mkv.video_fragment(base + 1000, seed=1) + mkv.end_of_fragment_tags())
        _expect_error_ack(s, 4012, "INVALID_FRAGMENT_METADATA")


def test_stream_deleted_during_put_media(kv, endpoint, creds):
    # 4008 STREAM_NOT_ACTIVE: "Stream no longer exists (deleted)."
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(base))
        assert s.wait_for(lambda acks: any(a.event_type == "BUFFERING" for a in acks))
        kv.delete_stream(StreamARN=info["StreamARN"])
        time.sleep(0.5)
        s.send(mkv.video_fragment(base + 1000, seed=1) + mkv.video_fragment(base + 2000, seed=2))
        _expect_error_ack(s, 4008, "STREAM_NOT_ACTIVE")


def test_idle_acks_while_no_data(kv, endpoint, creds):
    # "Idle: The PutMedia session is in-progress. However, Kinesis Video Streams is currently not receiving data."
    info = create_stream(kv, retention=1)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(int(time.time() * 1000)) + mkv.end_of_fragment_tags())
        assert s.wait_for(lambda acks: any(a.event_type == "PERSISTED" for a in acks))
        assert s.wait_for(lambda acks: any(a.event_type == "IDLE" for a in acks), timeout=12), (
            f"no IDLE ack within 12 s of silence: {s.events()}"
        )
        assert not s.closed, "the session stays open while IDLE acks are sent"


def test_dot_dot_stream_stores_media(kv, endpoint, creds, media):
    """A stream named `..` is a name, not a path: its media goes in and comes back."""
    name = ".."
    try:
        kv.describe_stream(StreamName=name)
    except kv.exceptions.ResourceNotFoundException:
        kv.create_stream(StreamName=name, DataRetentionInHours=1)
    got = ingest(endpoint, creds, name, count=2)
    out = media.get_media(StreamName=name, StartSelector={"StartSelectorType": "EARLIEST"})
    from helpers import read_streaming_body

    body, _ = read_streaming_body(out["Payload"])
    numbers = [f.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER") for f in mkv.split_fragments(body)]
    assert got.fragment_numbers[-2:] == numbers[-2:]


@pytest.fixture(scope="module")
def gst_mkv(tmp_path_factory) -> Path:
    if shutil.which("gst-launch-1.0") is None:
        pytest.skip("gst-launch-1.0 not installed")
    out = tmp_path_factory.mktemp("gst") / "testsrc.mkv"
    cmd = [
        "gst-launch-1.0",
        "-q",
        "videotestsrc",
        "num-buffers=30",
        "!",
        "video/x-raw,width=160,height=120,framerate=10/1",
        "!",
        "x264enc",
        "key-int-max=10",
        "tune=zerolatency",
        "speed-preset=ultrafast",
        "!",
        "h264parse",
        "!",
        "matroskamux",
        "streamable=true",
        "!",
        "filesink",
        f"location={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    if proc.returncode != 0 or not out.exists():
        pytest.skip(f"x264 pipeline unavailable: {proc.stderr.decode(errors='replace')[-300:]}")
    return out


def test_gstreamer_mkv_relative_timecodes(kv, endpoint, creds, gst_mkv, archived):
    """A matroskamux file (timecodes from 0) sent with RELATIVE: producer time = start timestamp + timecode."""
    info = create_stream(kv, retention=1)
    header, clusters = mkv.parse_putmedia_body(gst_mkv.read_bytes())
    assert len(clusters) == 3, [tc for tc, _ in clusters]
    start = round(time.time() - 60, 3)
    with open_put_media(
        endpoint, creds, stream_name=info["StreamName"], timecode_type="RELATIVE", producer_start=start
    ) as s:
        s.send(header)
        for _, c in clusters:
            s.send(c)
        s.send(mkv.end_of_fragment_tags())
        assert s.wait_for(lambda acks: sum(a.event_type == "PERSISTED" for a in acks) >= 3, timeout=20), s.events()
        assert [a.fragment_timecode for a in s.acks if a.event_type == "PERSISTED"] == [tc for tc, _ in clusters]
    frags = archived.list_fragments(
        StreamName=info["StreamName"],
        FragmentSelector={
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": datetime.datetime.fromtimestamp(time.time() - 600, datetime.timezone.utc),
                "EndTimestamp": datetime.datetime.fromtimestamp(time.time() + 5, datetime.timezone.utc),
            },
        },
    )["Fragments"]
    producer = sorted(round(f["ProducerTimestamp"].timestamp(), 3) for f in frags)
    assert producer == [round(start + tc / 1000, 3) for tc, _ in clusters]


def test_bad_stream_does_not_disturb_another(kv, endpoint, creds):
    """Garbage on one stream while another ingests: the good one gets every ack, the bad one an ERROR."""
    good = create_stream(kv, retention=1)
    bad = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=good["StreamName"]) as g:
        g.send(mkv.segment_header() + mkv.video_fragment(base))
        with open_put_media(endpoint, creds, stream_name=bad["StreamName"]) as b:
            b.send(mkv.segment_header() + b"\x1f\x43\xb6\x75\xff" + b"\xee" * 5000)
            b.finish()
            _expect_error_ack(b, 4006, "INVALID_MKV_DATA")
        g.send(mkv.video_fragment(base + 1000, seed=1) + mkv.end_of_fragment_tags())
        assert g.wait_for(lambda acks: sum(a.event_type == "PERSISTED" for a in acks) >= 2), g.events()
        assert not g.errors()


def test_client_vanishing_mid_fragment(kv, endpoint, creds, media):
    """A producer that disappears inside a fragment: what was PERSISTED stays, the partial fragment is not
    served, and the stream takes a new PutMedia at once (the connection slot is released)."""
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000) - 10_000
    first = mkv.video_fragment(base)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + first)
        partial = mkv.video_fragment(base + 1000, seed=1)
        s.send(partial[: len(partial) // 2])
        assert s.wait_for(
            lambda acks: any(a.event_type == "PERSISTED" and a.fragment_timecode == base for a in acks)
        ), s.events()
    # the socket is closed abruptly by the context manager; a new session must be accepted quickly
    deadline = time.monotonic() + 5
    while True:
        with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as again:
            again.send(mkv.segment_header() + mkv.video_fragment(base + 2000, seed=2) + mkv.end_of_fragment_tags())
            again.wait_status()
            if again.status == 200:
                assert again.wait_for(lambda acks: any(a.event_type == "PERSISTED" for a in acks)), again.events()
                break
            assert again.headers.get("x-amzn-errortype", "").startswith("ConnectionLimitExceeded"), again.headers
        assert time.monotonic() < deadline, "the vanished producer's connection still counts 5 s later"
        time.sleep(0.2)
    from helpers import read_streaming_body

    out = media.get_media(StreamName=info["StreamName"], StartSelector={"StartSelectorType": "EARLIEST"})
    body, _ = read_streaming_body(out["Payload"])
    timecodes = [f.cluster_timecode for f in mkv.split_fragments(body)]
    assert timecodes == [base, base + 2000], "the half-sent fragment is not served"


def test_put_media_signed_like_the_cpp_producer(kv, endpoint, creds):
    """Signed headers connection;host;transfer-encoding;user-agent;x-amz-date;x-amzn-*, and Expect: 100-continue:
    the server answers 100 Continue before the body is sent (a client waiting for it must not stall)."""
    info = create_stream(kv, retention=1)
    tc = int(time.time() * 1000)
    with open_put_media(endpoint, creds, stream_name=info["StreamName"], like_cpp_producer=True) as s:
        assert s.wait_continue(2.0), f"no 100 Continue within 2 s (status {s.status}, body {s.body[:200]!r})"
        s.send(mkv.segment_header() + mkv.video_fragment(tc) + mkv.end_of_fragment_tags())
        assert s.wait_for(lambda acks: any(a.event_type == "PERSISTED" for a in acks)), (s.status, s.body[:300])
        assert s.status == 200
