"""ListFragments and GetMediaForFragmentList through boto3's kinesis-video-archived-media model
(seed 003: ListFragments, FragmentSelector, Fragment, GetMediaForFragmentList; wire notes section 6).
"""

from __future__ import annotations

import datetime
import time

import pytest

import mkv
from conftest import make_client
from helpers import (
    create_stream,
    expected_frames,
    frames_of,
    ingest,
    plausible_fragment_number,
    read_streaming_body,
    unique,
)

FN = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"


def dt_ms(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc) + datetime.timedelta(
        milliseconds=ms % 1000
    )


def dt(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def ms_of(value: datetime.datetime) -> int:
    return round(value.timestamp() * 1000)


def server_range(got) -> dict:
    return {
        "FragmentSelectorType": "SERVER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": dt(got.started - 60), "EndTimestamp": dt(got.finished + 60)},
    }


def test_list_fragments_server_timestamp_describes_each_fragment(stored, archived_client_for):
    info, got = stored
    client = archived_client_for(info["StreamName"], "LIST_FRAGMENTS")
    out = client.list_fragments(StreamName=info["StreamName"], FragmentSelector=server_range(got))
    frags = sorted(out["Fragments"], key=lambda f: f["FragmentNumber"])
    assert [f["FragmentNumber"] for f in frags] == got.fragment_numbers
    assert not out.get("NextToken"), "NextToken is null when there are no more results"
    for f, tc in zip(frags, got.timecodes, strict=True):
        assert ms_of(f["ProducerTimestamp"]) == tc, "ABSOLUTE: producer timestamp = fragment timecode"
        assert got.started - 1 <= f["ServerTimestamp"].timestamp() <= got.finished + 1
        assert f["FragmentSizeInBytes"] > 0
        assert 0 < f["FragmentLengthInMilliseconds"] <= 1000, f


def test_list_fragments_producer_timestamp_range_is_inclusive(stored, archived):
    # "Only fragments with a start timestamp greater than or equal to the given start time and less than or equal
    # to the end time are returned."
    info, got = stored
    out = archived.list_fragments(
        StreamName=info["StreamName"],
        FragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": dt_ms(got.timecodes[1]), "EndTimestamp": dt_ms(got.timecodes[3])},
        },
    )
    assert sorted(f["FragmentNumber"] for f in out["Fragments"]) == got.fragment_numbers[1:4]


def test_list_fragments_range_between_fragment_starts(stored, archived):
    info, got = stored
    out = archived.list_fragments(
        StreamName=info["StreamName"],
        FragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": dt_ms(got.timecodes[0] + 1),
                "EndTimestamp": dt_ms(got.timecodes[2] - 1),
            },
        },
    )
    assert sorted(f["FragmentNumber"] for f in out["Fragments"]) == [got.fragment_numbers[1]]


def test_list_fragments_empty_range_is_an_empty_list(stored, archived):
    # "If there are no fragments in the stream that meet the selector criteria, an empty list is returned."
    info, got = stored
    out = archived.list_fragments(
        StreamName=info["StreamName"],
        FragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": dt(1000), "EndTimestamp": dt(2000)},
        },
    )
    assert out["Fragments"] == []


def test_list_fragments_paginator(stored, archived):
    info, got = stored
    pages = list(
        archived.get_paginator("list_fragments").paginate(
            StreamName=info["StreamName"], FragmentSelector=server_range(got), PaginationConfig={"PageSize": 2}
        )
    )
    listed = [f["FragmentNumber"] for p in pages for f in p["Fragments"]]
    assert sorted(listed) == got.fragment_numbers, "every fragment exactly once across pages"
    assert all(len(p["Fragments"]) <= 2 for p in pages)
    assert len(pages) == 3
    for p in pages[:-1]:
        token = p["NextToken"]
        assert 1 <= len(token) <= 4096


def test_list_fragments_max_results_above_limit_is_invalid_argument(stored, archived):
    # MaxResults: "Valid Range: Minimum value of 1. Maximum value of 1000."
    info, got = stored
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.list_fragments(StreamName=info["StreamName"], FragmentSelector=server_range(got), MaxResults=1001)


def test_list_fragments_bad_selector_type_is_invalid_argument(stored, archived):
    info, got = stored
    selector = server_range(got) | {"FragmentSelectorType": "ARRIVAL_TIMESTAMP"}
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.list_fragments(StreamName=info["StreamName"], FragmentSelector=selector)


def test_list_fragments_unknown_stream_is_resource_not_found(archived):
    with pytest.raises(archived.exceptions.ResourceNotFoundException):
        archived.list_fragments(
            StreamName=unique("missing"),
            FragmentSelector={
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": dt(0), "EndTimestamp": dt(time.time())},
            },
        )


def test_archived_reads_without_retention_are_no_data_retention(kv, endpoint, creds, archived):
    """A stream with DataRetentionInHours 0 keeps nothing to list (issue: NoDataRetentionException)."""
    info = create_stream(kv, retention=0)
    with pytest.raises(archived.exceptions.NoDataRetentionException):
        archived.list_fragments(
            StreamName=info["StreamName"],
            FragmentSelector={
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": dt(0), "EndTimestamp": dt(time.time())},
            },
        )
    with pytest.raises(archived.exceptions.NoDataRetentionException):
        archived.get_media_for_fragment_list(StreamName=info["StreamName"], Fragments=[plausible_fragment_number()])


def test_get_media_for_fragment_list(stored, archived_client_for):
    info, got = stored
    client = archived_client_for(info["StreamName"], "GET_MEDIA_FOR_FRAGMENT_LIST")
    wanted = [got.fragment_numbers[3], got.fragment_numbers[0]]
    out = client.get_media_for_fragment_list(StreamName=info["StreamName"], Fragments=wanted)
    assert out["ContentType"] == "video/webm"
    body, _ = read_streaming_body(out["Payload"])
    frags = mkv.split_fragments(body)
    assert sorted(f.tag(FN) for f in frags) == sorted(wanted)
    by_number = {n: i for i, n in enumerate(got.fragment_numbers)}
    for frag in frags:
        i = by_number[frag.tag(FN)]
        assert frag.layout == ["EBML", "Segment", "Info", "Tracks", "Tags", "Cluster"], frag.layout
        # Seed 003, GetMediaForFragmentList: the chunks "include the following additional Matroska (MKV) tags:
        # AWS_KINESISVIDEO_FRAGMENT_NUMBER, AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP,
        # AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP" (the wire notes say SERVER_/PRODUCER_TIMESTAMP; the seed wins).
        assert frag.all_tag_names() == [
            "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
            "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP",
            "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP",
        ], "no MILLIS_BEHIND_NOW and no CONTINUATION_TOKEN"
        assert frag.tag("AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP") == f"{got.timecodes[i] / 1000:.3f}"
        assert frag.cluster_timecode == got.timecodes[i]
        assert frames_of(frag) == expected_frames(got.clusters[i])


def test_get_media_for_fragment_list_over_thousand_is_invalid_argument(stored, archived):
    # Fragments: "Array Members: Minimum number of 1 item. Maximum number of 1000 items."
    info, got = stored
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.get_media_for_fragment_list(StreamName=info["StreamName"], Fragments=[got.fragment_numbers[0]] * 1001)


def test_get_media_for_fragment_list_non_numeric_is_invalid_argument(stored, archived):
    # Fragments: "Pattern: ^[0-9]+$"
    info, _ = stored
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.get_media_for_fragment_list(StreamName=info["StreamName"], Fragments=["12ab"])


def test_get_media_for_fragment_list_unknown_stream_is_resource_not_found(archived):
    with pytest.raises(archived.exceptions.ResourceNotFoundException):
        archived.get_media_for_fragment_list(StreamName=unique("missing"), Fragments=[plausible_fragment_number()])


def test_ordered_list_fragments_flag(ordered_kvs, creds):
    """With --ordered-list-fragments the results come sorted by fragment number, on every page."""
    url = ordered_kvs.url
    kv = make_client("kinesisvideo", url, creds)
    archived = make_client("kinesis-video-archived-media", url, creds)
    info = create_stream(kv, retention=1)
    got = ingest(url, creds, info["StreamName"], count=6)
    pages = list(
        archived.get_paginator("list_fragments").paginate(
            StreamName=info["StreamName"], FragmentSelector=server_range(got), PaginationConfig={"PageSize": 4}
        )
    )
    listed = [f["FragmentNumber"] for p in pages for f in p["Fragments"]]
    assert listed == got.fragment_numbers


def test_list_fragments_raw_timestamps_are_numbers(stored, endpoint, creds):
    import json

    from wire import raw_post

    info, got = stored
    body = {
        "StreamName": info["StreamName"],
        "FragmentSelector": {
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": got.started - 60, "EndTimestamp": got.finished + 60},
        },
    }
    resp = raw_post(endpoint, "/listFragments", json.dumps(body).encode(), creds)
    assert resp.status == 200, resp.body
    for f in resp.json()["Fragments"]:
        for key in ("ProducerTimestamp", "ServerTimestamp"):
            assert isinstance(f[key], (int, float)), f"{key} must be an epoch-second number: {f[key]!r}"
        assert isinstance(f["FragmentNumber"], str)
        assert isinstance(f["FragmentSizeInBytes"], int) and isinstance(f["FragmentLengthInMilliseconds"], int)


def test_list_fragments_garbage_next_token_is_invalid_argument(stored, archived):
    info, _ = stored
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.list_fragments(StreamName=info["StreamName"], NextToken="Z2FyYmFnZQ==")
