"""SigV4 verification as clients observe it: boto3 with bad keys, and raw requests with broken signatures.

Common Error Types (seed 003): UnrecognizedClientException 403 for an unknown key, IncompleteSignature 403 for a
malformed signature, AccessDeniedException 403, ExpiredTokenException 403.
"""

from __future__ import annotations

import datetime
import json

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import REGION, make_client
from helpers import create_stream, unique
from wire import Creds, raw_post

COMMON_403_TYPES = {
    "AccessDeniedException",
    "IncompleteSignature",
    "UnrecognizedClientException",
    "ExpiredTokenException",
}


def _error(exc: ClientError) -> tuple[str, int, str]:
    return (
        exc.response["Error"]["Code"],
        exc.response["ResponseMetadata"]["HTTPStatusCode"],
        exc.response["Error"].get("Message", ""),
    )


def test_unknown_access_key_is_unrecognized_client(endpoint):
    client = make_client("kinesisvideo", endpoint, Creds("AKIDNOSUCHKEY0000000", "whatever-secret"))
    with pytest.raises(ClientError) as exc:
        client.list_streams()
    code, status, message = _error(exc.value)
    assert (code, status) == ("UnrecognizedClientException", 403), message
    assert message, "the message says which check failed"


def test_wrong_secret_is_access_denied(endpoint, creds):
    client = make_client("kinesisvideo", endpoint, Creds(creds.access_key, creds.secret_key + "x"))
    with pytest.raises(ClientError) as exc:
        client.list_streams()
    code, status, message = _error(exc.value)
    assert (code, status) == ("AccessDeniedException", 403), message
    assert "signature" in message.lower(), f"message should say the signature does not match: {message!r}"


def test_wrong_secret_on_media_endpoint_is_refused(endpoint, creds, kv):
    info = create_stream(kv)
    client = make_client("kinesis-video-media", endpoint, Creds(creds.access_key, creds.secret_key + "x"))
    with pytest.raises(ClientError) as exc:
        client.get_media(StreamName=info["StreamName"], StartSelector={"StartSelectorType": "EARLIEST"})
    code, status, _ = _error(exc.value)
    assert (code, status) == ("AccessDeniedException", 403)


def test_unknown_key_on_archived_media_endpoint_is_unrecognized_client(endpoint, kv):
    info = create_stream(kv)
    client = make_client("kinesis-video-archived-media", endpoint, Creds("AKIDNOSUCHKEY0000001", "s"))
    with pytest.raises(ClientError) as exc:
        client.list_fragments(
            StreamName=info["StreamName"],
            FragmentSelector={
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 0, "EndTimestamp": 2000000000},
            },
        )
    assert _error(exc.value)[:2] == ("UnrecognizedClientException", 403)


def test_unsigned_request_is_refused(endpoint):
    client = boto3.session.Session().client(
        "kinesisvideo", endpoint_url=endpoint, region_name=REGION, config=Config(signature_version=UNSIGNED)
    )
    with pytest.raises(ClientError) as exc:
        client.list_streams()
    code, status, message = _error(exc.value)
    assert status == 403, f"a request without Authorization must get 403, got {status} {code}"
    assert code in COMMON_403_TYPES | {"MissingAuthenticationTokenException"}, code


def test_malformed_authorization_is_incomplete_signature(endpoint, creds):
    resp = raw_post(
        endpoint,
        "/listStreams",
        b"{}",
        creds,
        override={"Authorization": "AWS4-HMAC-SHA256 Credential=garbage"},
    )
    assert resp.status == 403
    assert resp.error_type == "IncompleteSignature", resp.headers
    assert resp.json().get("Message"), resp.body


def test_wrong_service_in_scope_is_refused(endpoint, creds):
    resp = raw_post(endpoint, "/listStreams", b"{}", creds, service="kinesis")
    assert resp.status == 403, resp.body
    assert resp.error_type in COMMON_403_TYPES, resp.error_type


def test_clock_skew_over_fifteen_minutes_is_refused(endpoint, creds):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
    resp = raw_post(endpoint, "/listStreams", b"{}", creds, when=past)
    assert resp.status == 403, resp.body
    assert resp.error_type in COMMON_403_TYPES, resp.error_type
    message = json.loads(resp.body).get("Message", "")
    assert any(w in message.lower() for w in ("time", "date", "expired", "skew")), message


def test_small_clock_skew_is_accepted(endpoint, creds):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    resp = raw_post(endpoint, "/listStreams", b"{}", creds, when=past)
    assert resp.status == 200, resp.body


def test_body_altered_after_signing_is_refused(endpoint, creds):
    """The payload hash is part of the signature: a body changed in transit must not be accepted."""
    name = unique()
    body = json.dumps({"StreamName": name}).encode()
    from wire import sign

    headers = sign(endpoint + "/createStream", {"Content-Type": "application/json"}, body, creds)
    tampered = json.dumps({"StreamName": name + "x"}).encode()
    resp = raw_post(endpoint, "/createStream", tampered, None, override=headers)
    assert resp.status == 403, resp.body
    assert resp.error_type in COMMON_403_TYPES


def test_boto3_signed_request_with_session_token_key_is_checked(endpoint, creds):
    """A valid key with a session token the server never issued must not pass as that key."""
    client = make_client(
        "kinesisvideo", endpoint, Creds(creds.access_key, creds.secret_key, session_token="FQoGZXIvYXdzEXAMPLE")
    )
    with pytest.raises(ClientError) as exc:
        client.list_streams()
    code, status, _ = _error(exc.value)
    assert status == 403 and code in COMMON_403_TYPES, code


def test_wrong_region_in_scope_is_refused(endpoint, creds):
    resp = raw_post(endpoint, "/listStreams", b"{}", creds, region="us-west-2")
    assert resp.status == 403, resp.body
    assert resp.error_type in COMMON_403_TYPES, resp.error_type


def test_put_media_with_wrong_secret_is_refused(kv, endpoint, creds):
    import mkv
    from wire import open_put_media

    info = create_stream(kv)
    with open_put_media(endpoint, Creds(creds.access_key, creds.secret_key + "x"), stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header())
        assert s.wait_status() == 403
        s.wait_closed(5)
        assert s.headers.get("x-amzn-errortype", "").split(":")[0] == "AccessDeniedException", s.headers
        assert not s.acks, "a refused PutMedia sends no acks"
