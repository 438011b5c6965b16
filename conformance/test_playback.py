"""Archived playback through boto3's kinesis-video-archived-media model: GetClip (seed 004), HLS and DASH
sessions and GetImages on kvssink's H.264 + AAC capture, the outputs read back box by box, and the documented errors.
"""

from __future__ import annotations

import base64
import datetime
import os
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import botocore.exceptions
import pytest

from helpers import create_stream, unique
from wire import open_put_media

CAPTURE = "cpp-producer/audio-video/004-putMedia.mkv"
# First cluster Timecode of the capture (ABSOLUTE, milliseconds) and what it holds.
FIRST_MS = 1_795_268_509_622
FRAGMENTS = 5
VIDEO_FRAMES = 150


def capture_path(sub: str) -> Path:
    base = Path(os.environ.get("KVS_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))
    path = base / sub
    assert path.exists(), f"test data {path} is missing (set KVS_TESTDATA to the shared captures)"
    return path


def dt_ms(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, bytes]]:
    """The ISO BMFF boxes in data[start:end] as (type, body)."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        assert size >= header and pos + size <= end, f"box {kind!r} at {pos} overruns its parent"
        out.append((kind.decode("latin-1"), data[pos + header : pos + size]))
        pos += size
    return out


def child(body: bytes, kind: str) -> bytes:
    found = [b for k, b in boxes(body) if k == kind]
    assert found, f"no {kind} box"
    return found[0]


def tracks(moov: bytes) -> dict[str, int]:
    """Handler type -> sample count (stsz) of each trak."""
    out = {}
    for kind, trak in boxes(moov):
        if kind != "trak":
            continue
        mdia = child(trak, "mdia")
        handler = child(mdia, "hdlr")[8:12].decode("latin-1")
        stbl = child(child(mdia, "minf"), "stbl")
        out[handler] = struct.unpack(">I", child(stbl, "stsz")[8:12])[0]
    return out


@pytest.fixture(scope="module")
def capture_stream(kv, endpoint, creds):
    info = create_stream(kv, unique("clip"), retention=1, MediaType="video/h264,audio/aac")
    body = capture_path(CAPTURE).read_bytes()
    with open_put_media(endpoint, creds, stream_name=info["StreamName"]) as session:
        assert session.send(body), session.send_error

        def persisted(acks) -> bool:
            return sum(1 for a in acks if a.event_type == "PERSISTED") >= FRAGMENTS

        assert session.wait_for(persisted, timeout=30), session.events()
        assert not session.errors(), session.errors()
        session.finish()
        session.wait_closed(timeout=10)
    return info


def clip_selector(kind: str, start_ms: int, end_ms: int) -> dict:
    return {
        "FragmentSelectorType": kind,
        "TimestampRange": {"StartTimestamp": dt_ms(start_ms), "EndTimestamp": dt_ms(end_ms)},
    }


def test_get_clip_is_an_mp4_with_every_frame(archived_client_for, capture_stream):
    name = capture_stream["StreamName"]
    client = archived_client_for(name, "GET_CLIP")
    got = client.get_clip(
        StreamName=name, ClipFragmentSelector=clip_selector("PRODUCER_TIMESTAMP", FIRST_MS, FIRST_MS + 4_000)
    )
    assert got["ContentType"] == "video/mp4"
    mp4 = got["Payload"].read()
    top = [k for k, _ in boxes(mp4)]
    assert top[:2] == ["ftyp", "moov"], top
    assert "mdat" in top
    counts = tracks(child(mp4, "moov"))
    assert counts["vide"] == VIDEO_FRAMES
    # 232 AAC frames were sent; GStreamer 1.22's mp4mux leaves out a last frame that has no duration.
    assert counts["soun"] in (231, 232)


def test_get_clip_by_arn_and_sub_range(archived_client_for, capture_stream):
    name = capture_stream["StreamName"]
    client = archived_client_for(name, "GET_CLIP")
    got = client.get_clip(
        StreamARN=capture_stream["StreamARN"],
        ClipFragmentSelector=clip_selector("PRODUCER_TIMESTAMP", FIRST_MS + 1_000, FIRST_MS + 2_000),
    )
    counts = tracks(child(got["Payload"].read(), "moov"))
    assert counts["vide"] == 60, "two fragments of 30 frames"


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_get_clip_errors(kv, archived_client_for, capture_stream):
    name = capture_stream["StreamName"]
    client = archived_client_for(name, "GET_CLIP")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.get_clip(
            StreamName=name,
            ClipFragmentSelector=clip_selector("PRODUCER_TIMESTAMP", FIRST_MS + 60_000, FIRST_MS + 70_000),
        )
    assert error_code(e) == "ResourceNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.get_clip(
            StreamName=name,
            ClipFragmentSelector=clip_selector("SERVER_TIMESTAMP", FIRST_MS, FIRST_MS + 25 * 3600 * 1000),
        )
    assert error_code(e) == "InvalidArgumentException"
    assert "24 hours" in e.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.get_clip(
            StreamName=unique("missing"),
            ClipFragmentSelector=clip_selector("SERVER_TIMESTAMP", FIRST_MS, FIRST_MS + 1000),
        )
    assert error_code(e) == "ResourceNotFoundException"

    no_retention = create_stream(kv, unique("clip0"), retention=0)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.get_clip(
            StreamName=no_retention["StreamName"],
            ClipFragmentSelector=clip_selector("SERVER_TIMESTAMP", FIRST_MS, FIRST_MS + 1000),
        )
    assert error_code(e) == "NoDataRetentionException"


def fetch(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def hls_selector(start_ms: int, end_ms: int) -> dict:
    return {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": dt_ms(start_ms), "EndTimestamp": dt_ms(end_ms)},
    }


def test_hls_on_demand_session_fmp4(archived_client_for, capture_stream):
    name = capture_stream["StreamName"]
    client = archived_client_for(name, "GET_HLS_STREAMING_SESSION_URL")
    url = client.get_hls_streaming_session_url(
        StreamName=name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=hls_selector(FIRST_MS, FIRST_MS + 10_000),
        DisplayFragmentTimestamp="ALWAYS",
        Expires=600,
    )["HLSStreamingSessionURL"]
    status, master = fetch(url)
    assert status == 200
    master = master.decode()
    assert 'CODECS="avc1.' in master and "mp4a.40.2" in master, master
    assert "RESOLUTION=640x360" in master, master
    base = url.split("getHLSMasterPlaylist.m3u8")[0]
    media_line = [line for line in master.splitlines() if line.startswith("getHLSMediaPlaylist")][0]
    status, media = fetch(base + media_line)
    media = media.decode()
    assert status == 200
    assert media.count("#EXTINF:") == FRAGMENTS, media
    assert "#EXT-X-ENDLIST" in media and "#EXT-X-PLAYLIST-TYPE:VOD" in media
    assert "#EXT-X-PROGRAM-DATE-TIME:2026-11-21T13:41:49.622Z" in media, media
    init_uri = media.split('#EXT-X-MAP:URI="')[1].split('"')[0]
    status, init = fetch(base + init_uri)
    assert status == 200
    assert [k for k, _ in boxes(init)] == ["ftyp", "moov"]
    assert set(tracks(child(init, "moov"))) == {"vide", "soun"}
    frag_uri = [line for line in media.splitlines() if line.startswith("getMP4MediaFragment.mp4")][1]
    status, frag = fetch(base + frag_uri)
    assert status == 200
    kinds = [k for k, _ in boxes(frag)]
    assert kinds[0] == "moof" and "mdat" in kinds, kinds


def test_hls_mpeg_ts_session_and_token_checks(archived_client_for, capture_stream):
    name = capture_stream["StreamName"]
    client = archived_client_for(name, "GET_HLS_STREAMING_SESSION_URL")
    url = client.get_hls_streaming_session_url(
        StreamName=name,
        PlaybackMode="ON_DEMAND",
        ContainerFormat="MPEG_TS",
        HLSFragmentSelector=hls_selector(FIRST_MS, FIRST_MS + 10_000),
        MaxMediaPlaylistFragmentResults=2,
    )["HLSStreamingSessionURL"]
    base = url.split("getHLSMasterPlaylist.m3u8")[0]
    token = url.split("SessionToken=")[1]
    status, media = fetch(f"{base}getHLSMediaPlaylist.m3u8?SessionToken={token}")
    media = media.decode()
    lines = [line for line in media.splitlines() if line.startswith("getTSFragment.ts")]
    assert len(lines) == 2, media
    assert "#EXT-X-MAP" not in media
    status, ts = fetch(base + lines[0])
    assert status == 200
    assert len(ts) % 188 == 0 and ts[0] == 0x47 and ts[188] == 0x47, "MPEG-TS packets"

    status, body = fetch(f"{base}getHLSMediaPlaylist.m3u8?SessionToken={token[:-2]}xx")
    assert status == 401, body
    assert b"SessionToken" in body, body
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.get_hls_streaming_session_url(StreamName=name, PlaybackMode="ON_DEMAND")
    assert error_code(e) == "InvalidArgumentException"


def test_get_images_pages_and_no_media(archived_client_for, capture_stream):
    name = capture_stream["StreamName"]
    client = archived_client_for(name, "GET_IMAGES")
    args = dict(
        StreamName=name,
        ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=dt_ms(FIRST_MS + 100),
        EndTimestamp=dt_ms(FIRST_MS + 6_100),
        SamplingInterval=1000,
        Format="PNG",
        HeightPixels=180,
        WidthPixels=320,
        MaxResults=4,
    )
    first = client.get_images(**args)
    assert len(first["Images"]) == 4
    assert "NextToken" in first
    second = client.get_images(NextToken=first["NextToken"], **args)
    assert "NextToken" not in second
    images = first["Images"] + second["Images"]
    # 0.1 s .. 6.1 s every second: five within the five 1 s fragments, then two after them.
    assert [i.get("Error") for i in images] == [None] * 5 + ["NO_MEDIA"] * 2
    data = base64.b64decode(images[0]["ImageContent"])
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", data[16:24]) == (320, 180)
    assert images[0]["TimeStamp"] == dt_ms(FIRST_MS + 100)

    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.get_images(**{**args, "EndTimestamp": dt_ms(FIRST_MS + 400_000)})
    assert error_code(e) == "InvalidArgumentException"


def test_dash_on_demand_manifest_and_segments(archived_client_for, capture_stream):
    name = capture_stream["StreamName"]
    client = archived_client_for(name, "GET_DASH_STREAMING_SESSION_URL")
    url = client.get_dash_streaming_session_url(
        StreamName=name,
        PlaybackMode="ON_DEMAND",
        DisplayFragmentNumber="ALWAYS",
        DASHFragmentSelector=hls_selector(FIRST_MS, FIRST_MS + 10_000),
        MaxManifestFragmentResults=3,
    )["DASHStreamingSessionURL"]
    assert "/dash/v1/getDASHManifest.mpd?SessionToken=" in url
    status, mpd = fetch(url)
    assert status == 200
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ET.fromstring(mpd)
    assert root.get("type") == "static"
    rep = root.find("d:Period/d:AdaptationSet/d:Representation", ns)
    assert rep.get("codecs").startswith("avc1.") and "mp4a.40.2" in rep.get("codecs")
    segments = rep.findall("d:SegmentList/d:SegmentURL", ns)
    assert len(segments) == 3
    timeline = rep.findall("d:SegmentList/d:SegmentTimeline/d:S", ns)
    # One-second fragments; the timeline does not overlap although each one's audio reaches past the second.
    assert [s.get("d") for s in timeline[:2]] == ["1000", "1000"]
    assert 1000 <= int(timeline[2].get("d")) < 1100
    starts = [int(s.get("t")) for s in timeline]
    assert starts[1] - starts[0] == 1000 and starts[2] - starts[1] == 1000
    assert all(s.get("{https://kinesisvideo.amazonaws.com/ns/2018}fn", "").isdigit() for s in timeline)
    base = url.split("getDASHManifest.mpd")[0]
    init = rep.find("d:SegmentList/d:Initialization", ns).get("sourceURL")
    status, data = fetch(base + init)
    assert status == 200 and [k for k, _ in boxes(data)] == ["ftyp", "moov"]
    status, data = fetch(base + segments[2].get("media"))
    assert status == 200 and [k for k, _ in boxes(data)][0] == "moof"
