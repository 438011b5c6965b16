"""Bad input, sent as correctly signed raw requests (botocore's SigV4Auth) so only the content is wrong.

Each answer must be an error of the right type (x-amzn-ErrorType + {"Message": ...} + x-amzn-RequestId), and the
server must keep serving (the autouse fixture checks it is still running after each test).
"""

from __future__ import annotations

import json

import pytest

from helpers import create_stream, unique
from wire import raw_post

# What a client can see for input the service rejects before acting on it: the operation's own
# InvalidArgumentException, or the generic validation/serialization errors of AWS JSON services.
INPUT_ERROR_TYPES = {"InvalidArgumentException", "ValidationError", "ValidationException", "SerializationException"}


def assert_error(resp, status: int, types: set[str]) -> None:
    assert resp.status == status, f"expected HTTP {status}, got {resp.status}: {resp.body[:300]!r}"
    assert resp.error_type in types, f"x-amzn-ErrorType {resp.error_type!r} not in {sorted(types)}"
    assert resp.headers.get("x-amzn-requestid"), "every response carries x-amzn-RequestId"
    body = resp.json()
    assert isinstance(body.get("Message"), str) and body["Message"], f"body must be {{'Message': ...}}: {body}"


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json at all", b"[1, 2, 3]", b"\xff\xfe\x00garbage", b'{"StreamName": "a"'],
    ids=["truncated", "text", "array", "binary", "unterminated"],
)
def test_malformed_json_is_rejected(endpoint, creds, body):
    resp = raw_post(endpoint, "/createStream", body, creds)
    assert_error(resp, 400, INPUT_ERROR_TYPES)


@pytest.mark.parametrize(
    "payload",
    [
        {"StreamName": 12345},
        {"StreamName": ["a"]},
        {"StreamName": None},
        {"StreamName": "ok-name", "DataRetentionInHours": "twenty"},
        {"StreamName": "ok-name", "Tags": ["a", "b"]},
        {"StreamName": "ok-name", "Tags": {"k": 5}},
    ],
    ids=["name-number", "name-list", "name-null", "retention-string", "tags-list", "tag-number"],
)
def test_wrong_types_are_rejected(endpoint, creds, kv, payload):
    name = unique("typed")
    payload = {k: (name if v == "ok-name" else v) for k, v in payload.items()}
    resp = raw_post(endpoint, "/createStream", json.dumps(payload).encode(), creds)
    assert_error(resp, 400, INPUT_ERROR_TYPES)
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_stream(StreamName=name)


def test_missing_required_member_is_rejected(endpoint, creds):
    resp = raw_post(endpoint, "/createStream", b"{}", creds)
    assert_error(resp, 400, INPUT_ERROR_TYPES)


def test_negative_retention_is_rejected(endpoint, creds):
    # "DataRetentionInHours ... Valid Range: Minimum value of 0." (boto3 would refuse to send it.)
    resp = raw_post(
        endpoint, "/createStream", json.dumps({"StreamName": unique(), "DataRetentionInHours": -1}).encode(), creds
    )
    assert_error(resp, 400, INPUT_ERROR_TYPES)


@pytest.mark.parametrize(
    "name",
    ["has space", "slash/inside", "../escape", "star*", "x" * 257, "ünïcödé", "tab\tname"],
    ids=["space", "slash", "dotdot-slash", "star", "too-long", "unicode", "tab"],
)
def test_stream_name_off_pattern_is_invalid_argument(kv, name):
    # StreamName: "Length Constraints: Minimum length of 1. Maximum length of 256. Pattern: [a-zA-Z0-9_.-]+"
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.create_stream(StreamName=name)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.describe_stream(StreamName=name)


def test_longest_valid_name_is_accepted(kv):
    name = "n" * 240 + unique("")[:16]
    assert len(name) <= 256
    info = create_stream(kv, name)
    assert info["StreamName"] == name


@pytest.mark.parametrize("media_type", ["video", "video/h264,", "video h264", "v" * 129 + "/x"])
def test_media_type_off_pattern_is_invalid_argument(kv, media_type):
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.create_stream(StreamName=unique(), MediaType=media_type)


def test_device_name_off_pattern_is_invalid_argument(kv):
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.create_stream(StreamName=unique(), DeviceName="my camera!")


def test_malformed_arn_is_rejected(kv):
    with pytest.raises((kv.exceptions.InvalidArgumentException, kv.exceptions.InvalidResourceFormatException)):
        kv.describe_stream(StreamARN="arn:aws:s3:::bucket/key")


def test_oversized_body_is_request_entity_too_large(endpoint, creds, kv):
    # Common Error Types: RequestEntityTooLargeException, HTTP 413.
    name = unique()
    padding = "a" * (12 * 1024 * 1024)
    body = json.dumps({"StreamName": name, "DeviceName": padding}).encode()
    resp = raw_post(endpoint, "/createStream", body, creds, timeout=60)
    assert_error(resp, 413, {"RequestEntityTooLargeException"})
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_stream(StreamName=name)


def test_unknown_operation_path(endpoint, creds):
    # Common Error Types: UnknownOperationException, HTTP 404.
    resp = raw_post(endpoint, "/makeCoffee", b"{}", creds)
    assert_error(resp, 404, {"UnknownOperationException"})


def test_server_still_serves_after_bad_input(kv):
    info = create_stream(kv)
    assert kv.describe_stream(StreamName=info["StreamName"])["StreamInfo"]["Status"] == "ACTIVE"
