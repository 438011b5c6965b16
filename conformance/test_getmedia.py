"""GetMedia through boto3's kinesis-video-media model: every StartSelector type, the per-fragment MKV layout and
AWS tags of the real captures (wire notes section 5, seed 003 GetMedia and StartSelector), live tailing, limits.
"""

from __future__ import annotations

import datetime
import threading
import time

import pytest

import mkv
from helpers import (
    FRAGMENT_NUMBER_RE,
    TIMESTAMP_TAG_RE,
    create_stream,
    expected_frames,
    frames_of,
    ingest,
    read_available,
    read_streaming_body,
    unique,
)

FN = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
ST = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
PT = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
MBN = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"
CT = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"
LAYOUT = ["EBML", "Segment", "Info", "Tracks", "Tags", "Cluster", "Tags"]


def get_media(client, stream: str, selector: dict) -> tuple[list[mkv.FragmentFile], dict, float]:
    out = client.get_media(StreamName=stream, StartSelector=selector)
    body, took = read_streaming_body(out["Payload"])
    return mkv.split_fragments(body), out, took


def numbers(frags: list[mkv.FragmentFile]) -> list[str | None]:
    return [f.tag(FN) for f in frags]


def dt(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def dt_ms(ms: int) -> datetime.datetime:
    """Exact millisecond instant (float seconds would round .622 to .621999)."""
    return datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc) + datetime.timedelta(
        milliseconds=ms % 1000
    )


def test_earliest_returns_every_fragment_in_the_service_layout(stored, media_client_for):
    info, got = stored
    client = media_client_for(info["StreamName"])
    frags, out, took = get_media(client, info["StreamName"], {"StartSelectorType": "EARLIEST"})
    assert out["ContentType"] == "video/webm"
    assert numbers(frags) == got.fragment_numbers, "EARLIEST starts at the first fragment, in fragment-number order"
    for i, frag in enumerate(frags):
        assert frag.layout == LAYOUT, f"fragment {i}: {frag.layout}"
        assert frag.doc_type == "matroska"
        assert frag.timecode_scale == 1_000_000
        assert frag.track_numbers == [1] and frag.codec_ids == ["V_MPEG4/ISO/AVC"], "the producer's Tracks, as sent"
        before, after = frag.tags
        assert [k for k, _ in before.pairs] == [FN, ST, PT]
        assert [k for k, _ in after.pairs] == [MBN, CT]
        for t in (before, after):
            assert not t.has_targets, "the AWS Tag elements have no Targets"
            assert set(t.value_element_ids) == {mkv.TAG_STRING}, "tag values are TagString (0x4487)"
        assert FRAGMENT_NUMBER_RE.match(before.get(FN))
        assert before.get(PT) == f"{got.timecodes[i] / 1000:.3f}", "producer timestamp = ABSOLUTE timecode, 3 decimals"
        server_ts = before.get(ST)
        assert TIMESTAMP_TAG_RE.match(server_ts), server_ts
        assert got.started - 1 <= float(server_ts) <= got.finished + 1, "server timestamp = when it was received"
        assert after.get(CT) == before.get(FN), "the continuation token names the fragment it follows"
        assert after.get(MBN).isdigit(), after.get(MBN)
        assert frag.cluster_timecode == got.timecodes[i]
        assert frames_of(frag) == expected_frames(got.clusters[i]), "frames come back byte for byte"
    assert 2.5 <= took <= 12, f"the body ends about 3 s after the last fragment, took {took:.1f} s"


def test_fragment_number_starts_after_that_fragment(stored, media):
    # StartSelectorType FRAGMENT_NUMBER: "Start with the chunk after a specific fragment."
    info, got = stored
    frags, _, _ = get_media(
        media,
        info["StreamName"],
        {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": got.fragment_numbers[1]},
    )
    assert numbers(frags) == got.fragment_numbers[2:]


def test_continuation_token_resumes_after_the_fragment_it_names(stored, media):
    info, got = stored
    first, _, _ = get_media(media, info["StreamName"], {"StartSelectorType": "EARLIEST"})
    token = first[1].tag(CT)
    frags, _, _ = get_media(
        media, info["StreamName"], {"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": token}
    )
    assert numbers(frags) == got.fragment_numbers[2:]


def test_producer_timestamp_exact_start(stored, media):
    # "Start with the chunk containing a fragment with the specified producer or server timestamp."
    info, got = stored
    frags, _, _ = get_media(
        media,
        info["StreamName"],
        {"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": dt_ms(got.timecodes[2])},
    )
    assert numbers(frags) == got.fragment_numbers[2:]


def test_producer_timestamp_inside_a_fragment_starts_with_that_fragment(stored, media):
    info, got = stored
    inside = got.timecodes[2] + 200  # between the fragment's first and last frame
    frags, _, _ = get_media(
        media, info["StreamName"], {"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": dt_ms(inside)}
    )
    assert numbers(frags) == got.fragment_numbers[2:], "the chunk *containing* the timestamp comes first"


def test_server_timestamp_start(kv, endpoint, creds, media, archived):
    # "Start with the chunk containing a fragment with the specified producer or server timestamp."
    info = create_stream(kv, retention=1)
    got = ingest(endpoint, creds, info["StreamName"], count=5, pause=1.1)  # server spans must not overlap
    listed = archived.list_fragments(
        StreamName=info["StreamName"],
        FragmentSelector={
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": dt(got.started - 60), "EndTimestamp": dt(got.finished + 60)},
        },
    )["Fragments"]
    server_ts = {f["FragmentNumber"]: f["ServerTimestamp"] for f in listed}
    ordered = [server_ts[n] for n in got.fragment_numbers]
    assert ordered == sorted(ordered) and len(set(ordered)) == 5, f"server timestamps: {ordered}"
    start = server_ts[got.fragment_numbers[3]]
    frags, _, _ = get_media(
        media, info["StreamName"], {"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": start}
    )
    assert numbers(frags) == got.fragment_numbers[3:]


def test_now_tails_live_fragments(kv, endpoint, creds, media):
    """NOW starts with the latest chunk; fragments put while the body is open arrive as they are received."""
    info = create_stream(kv, retention=1)
    old = ingest(endpoint, creds, info["StreamName"], count=3, base_ms=int(time.time() * 1000) - 20_000)
    out = media.get_media(StreamName=info["StreamName"], StartSelector={"StartSelectorType": "NOW"})
    result: dict = {}

    def reader():
        try:
            result["body"], result["took"] = read_streaming_body(out["Payload"], limit_seconds=40)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.5)
    new = ingest(endpoint, creds, info["StreamName"], count=2, base_ms=int(time.time() * 1000), seed=100)
    t.join(timeout=45)
    assert "error" not in result, result.get("error")
    frags = mkv.split_fragments(result["body"])
    got = numbers(frags)
    assert got[-2:] == new.fragment_numbers, f"live fragments missing: {got}"
    assert not set(got) & set(old.fragment_numbers[:-1]), "NOW does not replay older fragments than the latest"


def test_fragment_arrives_as_soon_as_received(kv, endpoint, creds, media):
    """Live tailing: a GetMedia reader sees a fragment while its PutMedia session is still open."""
    from wire import open_put_media

    info = create_stream(kv, retention=1)
    out = media.get_media(StreamName=info["StreamName"], StartSelector={"StartSelectorType": "NOW"})
    base = int(time.time() * 1000)
    seen: dict = {}

    def reader():
        buf = b""
        while True:
            data = read_available(out["Payload"])
            if not data:
                return
            buf += data
            try:
                frags = mkv.split_fragments(buf)
            except mkv.MkvError:
                continue
            if frags and frags[0].cluster_timecode == base and frags[0].tag(CT):
                seen["at"] = time.monotonic()
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(base))
        s.send(mkv.video_fragment(base + 1000, seed=1)[:30])
        assert s.wait_for(lambda acks: any(a.event_type == "RECEIVED" for a in acks), timeout=10), s.events()
        t.join(timeout=2.5)
        assert "at" in seen, "the reader did not get the fragment within 2.5 s of its RECEIVED ack"
        assert not s.closed


def test_get_media_unknown_stream_is_resource_not_found(media):
    with pytest.raises(media.exceptions.ResourceNotFoundException):
        media.get_media(StreamName=unique("missing"), StartSelector={"StartSelectorType": "EARLIEST"})


@pytest.mark.parametrize(
    "selector",
    [
        {"StartSelectorType": "FRAGMENT_NUMBER"},
        {"StartSelectorType": "SERVER_TIMESTAMP"},
        {"StartSelectorType": "PRODUCER_TIMESTAMP"},
        {"StartSelectorType": "CONTINUATION_TOKEN"},
        {"StartSelectorType": "YESTERDAY"},
    ],
    ids=[
        "fragment-number-without-number",
        "server-ts-without-ts",
        "producer-ts-without-ts",
        "token-without-token",
        "bad-type",
    ],
)
def test_incomplete_start_selector_is_invalid_argument(stored, media, selector):
    info, _ = stored
    with pytest.raises(media.exceptions.InvalidArgumentException):
        media.get_media(StreamName=info["StreamName"], StartSelector=selector)


def test_fourth_concurrent_get_media_is_connection_limit_exceeded(kv, media):
    # "If you attempt more than three concurrent GetMedia connections, Kinesis Video Streams throttles the latest
    # connections with a ConnectionLimitExceededException error."
    info = create_stream(kv, retention=1)
    open_bodies = []
    try:
        for _ in range(3):
            out = media.get_media(StreamName=info["StreamName"], StartSelector={"StartSelectorType": "NOW"})
            open_bodies.append(out["Payload"])
        with pytest.raises(media.exceptions.ConnectionLimitExceededException):
            media.get_media(StreamName=info["StreamName"], StartSelector={"StartSelectorType": "NOW"})
    finally:
        for body in open_bodies:
            body.close()


def test_get_media_without_retention_serves_recent_fragments(kv, endpoint, creds, media):
    # DataRetentionInHours: "When the DataRetentionInHours value is 0, consumers can still consume the fragments
    # that remain in the service host buffer, which has a retention time limit of 5 minutes"
    info = create_stream(kv, retention=0)
    got = ingest(endpoint, creds, info["StreamName"], count=2, wait_event="RECEIVED")
    frags, _, _ = get_media(media, info["StreamName"], {"StartSelectorType": "EARLIEST"})
    assert numbers(frags) == got.fragment_numbers


def test_get_media_after_delete_is_resource_not_found(kv, endpoint, creds, media):
    # DeleteStream "makes the data in the stream inaccessible immediately."
    info = create_stream(kv, retention=1)
    ingest(endpoint, creds, info["StreamName"], count=1)
    kv.delete_stream(StreamARN=info["StreamARN"])
    with pytest.raises(media.exceptions.ResourceNotFoundException):
        media.get_media(StreamName=info["StreamName"], StartSelector={"StartSelectorType": "EARLIEST"})


def test_get_media_by_stream_arn(stored, media):
    info, got = stored
    out = media.get_media(StreamARN=info["StreamARN"], StartSelector={"StartSelectorType": "EARLIEST"})
    body, _ = read_streaming_body(out["Payload"])
    assert numbers(mkv.split_fragments(body)) == got.fragment_numbers


def test_unknown_fragment_number_reports_error_4000(stored, media):
    # GetMedia: "The following tags will be present if an error occurs: AWS_KINESISVIDEO_ERROR_CODE ...
    # AWS_KINESISVIDEO_ERROR_ID ... 4000 - Requested fragment is not found"
    from helpers import plausible_fragment_number

    info, _ = stored
    out = media.get_media(
        StreamName=info["StreamName"],
        StartSelector={
            "StartSelectorType": "FRAGMENT_NUMBER",
            "AfterFragmentNumber": plausible_fragment_number(2**40, 1000),
        },
    )
    body, _ = read_streaming_body(out["Payload"])
    frags = mkv.split_fragments(body)
    error_ids = [f.tag("AWS_KINESISVIDEO_ERROR_ID") for f in frags if f.tag("AWS_KINESISVIDEO_ERROR_ID")]
    assert error_ids == ["4000"], f"expected one error Tags with id 4000, got {[f.all_tag_names() for f in frags]}"
    assert all(f.tag(FN) is None for f in frags), "no fragment is served"


def test_producer_metadata_tags_are_served(kv, endpoint, creds, media):
    """Producer tags (Tags between clusters, names not starting with AWS_) are fragment metadata the service keeps
    and serves back in GetMedia (seen in the real capture test_mixed_tags.mkv)."""
    from wire import open_put_media

    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000) - 5000
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(base) + mkv.tags([("camera-zone", "north")]))
        s.send(mkv.video_fragment(base + 1000, seed=1) + mkv.end_of_fragment_tags())
        assert s.wait_for(lambda acks: sum(a.event_type == "PERSISTED" for a in acks) >= 2), s.events()
        assert not s.errors()
    frags, _, _ = get_media(media, info["StreamName"], {"StartSelectorType": "EARLIEST"})
    values = [f.tag("camera-zone") for f in frags]
    assert "north" in values, f"producer tag not served: {[f.all_tag_names() for f in frags]}"
    assert all("AWS_KINESISVIDEO_END_OF_FRAGMENT" not in f.all_tag_names() for f in frags), (
        "the producer's end-of-fragment marker is a control tag, not metadata"
    )
