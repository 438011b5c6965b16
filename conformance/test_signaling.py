"""Signaling channels through boto3: the kinesisvideo channel operations, the kinesis-video-signaling client
(GetIceServerConfig, SendAlexaOfferToMaster) at the HTTPS endpoint GetSignalingChannelEndpoint gives, and
resource tags on channels.

Expected behaviour comes from the API reference (seed 003): each test cites the sentence it checks. kvs-local
serves no WebSocket signaling, so no master ever connects to its channels; the tests check the answers the service
gives in that situation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import CLIENT_CONFIG, REGION, make_client
from helpers import create_stream, unique
from server import KvsLocal

CHANNEL_ARN_RE = re.compile(
    r"^arn:aws:kinesisvideo:us-east-1:[0-9]{12}:channel/(?P<name>[a-zA-Z0-9_.-]+)/(?P<ms>[0-9]+)$"
)
MISSING_CHANNEL = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/{}/1700000000000"


@pytest.fixture(scope="module")
def unvalidated_kv(endpoint, creds):
    """A kinesisvideo client that sends values below a member's minimum instead of refusing them itself."""
    return boto3.session.Session().client(
        "kinesisvideo",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.session_token,
        config=CLIENT_CONFIG.merge(Config(parameter_validation=False)),
    )


def wait_channel_active(kv, name: str, timeout: float = 10.0) -> dict:
    """CreateSignalingChannel is asynchronous: waits for ACTIVE through CREATING or UPDATING."""
    deadline = time.monotonic() + timeout
    while True:
        info = kv.describe_signaling_channel(ChannelName=name)["ChannelInfo"]
        if info["ChannelStatus"] == "ACTIVE":
            return info
        assert info["ChannelStatus"] in ("CREATING", "UPDATING"), f"channel {name} went to {info['ChannelStatus']}"
        if time.monotonic() > deadline:
            raise AssertionError(f"channel {name} not ACTIVE after {timeout} s")
        time.sleep(0.1)


def create_channel(kv, name: str | None = None, **kwargs) -> dict:
    name = name or unique("chan")
    kv.create_signaling_channel(ChannelName=name, **kwargs)
    return wait_channel_active(kv, name)


def https_endpoint(kv, arn: str, role: str = "MASTER") -> str:
    got = kv.get_signaling_channel_endpoint(
        ChannelARN=arn, SingleMasterChannelEndpointConfiguration={"Protocols": ["HTTPS"], "Role": role}
    )["ResourceEndpointList"]
    assert [e["Protocol"] for e in got] == ["HTTPS"]
    return got[0]["ResourceEndpoint"]


def test_create_returns_a_channel_arn_and_describe_shows_defaults(kv):
    name = unique("chan")
    before_ms = int(time.time() * 1000)
    arn = kv.create_signaling_channel(ChannelName=name)["ChannelARN"]
    m = CHANNEL_ARN_RE.match(arn)
    assert m and m.group("name") == name, arn
    assert before_ms - 5000 <= int(m.group("ms")) <= int(time.time() * 1000) + 5000
    info = wait_channel_active(kv, name)
    assert info["ChannelARN"] == arn
    # "Currently, SINGLE_MASTER is the only supported channel type."
    assert info["ChannelType"] == "SINGLE_MASTER"
    # "The default configuration for the channel message's time to live is 60 seconds (1 minute)."
    assert info["SingleMasterConfiguration"] == {"MessageTtlSeconds": 60}
    assert re.fullmatch(r"[a-zA-Z0-9]{1,64}", info["Version"])
    by_arn = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert by_arn == info


def test_create_twice_is_resource_in_use(kv):
    info = create_channel(kv)
    with pytest.raises(kv.exceptions.ResourceInUseException):
        kv.create_signaling_channel(ChannelName=info["ChannelName"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"SingleMasterConfiguration": {"MessageTtlSeconds": 4}},
        {"SingleMasterConfiguration": {"MessageTtlSeconds": 121}},
        {"ChannelType": "FULL_MESH"},
    ],
)
def test_create_with_invalid_configuration_is_invalid_argument(unvalidated_kv, kwargs):
    # MessageTtlSeconds "Valid Range: Minimum value of 5. Maximum value of 120."
    kv = unvalidated_kv
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.create_signaling_channel(ChannelName=unique("chan"), **kwargs)


def test_create_with_more_than_fifty_tags_is_tags_per_resource_exceeded(kv):
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    with pytest.raises(kv.exceptions.TagsPerResourceExceededLimitException):
        kv.create_signaling_channel(ChannelName=unique("chan"), Tags=tags)


def test_update_checks_and_changes_the_version(kv):
    info = create_channel(kv)
    arn = info["ChannelARN"]
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.update_signaling_channel(
            ChannelARN=arn, CurrentVersion="stale", SingleMasterConfiguration={"MessageTtlSeconds": 30}
        )
    kv.update_signaling_channel(
        ChannelARN=arn, CurrentVersion=info["Version"], SingleMasterConfiguration={"MessageTtlSeconds": 30}
    )
    after = wait_channel_active(kv, info["ChannelName"])
    assert after["SingleMasterConfiguration"] == {"MessageTtlSeconds": 30}
    assert after["Version"] != info["Version"]


def test_delete_checks_the_version_and_removes_the_channel(kv):
    info = create_channel(kv)
    arn = info["ChannelARN"]
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.delete_signaling_channel(ChannelARN=arn, CurrentVersion="stale")
    # "If you don't specify the channel's current version, the most recent version is deleted."
    kv.delete_signaling_channel(ChannelARN=arn)
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_signaling_channel(ChannelARN=arn)
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.delete_signaling_channel(ChannelARN=arn)


def test_list_pages_with_begins_with(kv):
    prefix = unique("page")
    names = sorted(f"{prefix}-{i}" for i in range(5))
    for n in names:
        create_channel(kv, n)
    seen, pages, token = [], 0, None
    while True:
        kwargs = {
            "MaxResults": 2,
            "ChannelNameCondition": {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": prefix},
        }
        if token:
            kwargs["NextToken"] = token
        page = kv.list_signaling_channels(**kwargs)
        pages += 1
        assert len(page["ChannelInfoList"]) <= 2
        seen += [c["ChannelName"] for c in page["ChannelInfoList"]]
        token = page.get("NextToken")
        if not token:
            break
    assert sorted(seen) == names
    assert pages == 3
    paginator = kv.get_paginator("list_signaling_channels")
    listed = [
        c["ChannelName"]
        for p in paginator.paginate(
            ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": prefix},
            PaginationConfig={"PageSize": 3},
        )
        for c in p["ChannelInfoList"]
    ]
    assert sorted(listed) == names


def test_get_signaling_channel_endpoint_points_at_kvs_local(kv, endpoint):
    info = create_channel(kv)
    got = kv.get_signaling_channel_endpoint(
        ChannelARN=info["ChannelARN"],
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": "VIEWER"},
    )["ResourceEndpointList"]
    by_protocol = {e["Protocol"]: e["ResourceEndpoint"] for e in got}
    assert by_protocol["HTTPS"] == endpoint
    assert by_protocol["WSS"] == endpoint.replace("http://", "ws://", 1)


def test_webrtc_endpoint_needs_a_channel_configured_for_ingestion(kv):
    # "If you specify WEBRTC as the protocol, but the signaling channel isn't configured for ingestion, you will
    # receive the error InvalidArgumentException."
    info = create_channel(kv)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.get_signaling_channel_endpoint(
            ChannelARN=info["ChannelARN"],
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "MASTER"},
        )
    stream = create_stream(kv, retention=1)
    kv.update_media_storage_configuration(
        ChannelARN=info["ChannelARN"],
        MediaStorageConfiguration={"Status": "ENABLED", "StreamARN": stream["StreamARN"]},
    )
    got = kv.get_signaling_channel_endpoint(
        ChannelARN=info["ChannelARN"],
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "MASTER"},
    )["ResourceEndpointList"]
    assert [e["Protocol"] for e in got] == ["WEBRTC"]


def test_media_storage_configuration(kv):
    info = create_channel(kv)
    arn = info["ChannelARN"]
    got = kv.describe_media_storage_configuration(ChannelARN=arn)["MediaStorageConfiguration"]
    assert got["Status"] == "DISABLED"
    # "In order for WebRTC Ingestion to work, the stream must have data retention enabled."
    live = create_stream(kv, retention=0)
    with pytest.raises(kv.exceptions.NoDataRetentionException):
        kv.update_media_storage_configuration(
            ChannelARN=arn, MediaStorageConfiguration={"Status": "ENABLED", "StreamARN": live["StreamARN"]}
        )
    stream = create_stream(kv, retention=1)
    kv.update_media_storage_configuration(
        ChannelARN=arn, MediaStorageConfiguration={"Status": "ENABLED", "StreamARN": stream["StreamARN"]}
    )
    got = kv.describe_media_storage_configuration(ChannelName=info["ChannelName"])["MediaStorageConfiguration"]
    assert got == {"Status": "ENABLED", "StreamARN": stream["StreamARN"]}
    # "When the input StreamARN or ChannelARN in CLOUD_STORAGE_MODE is already mapped to a different Kinesis Video
    # Stream resource ... ResourceInUseException"
    other = create_channel(kv)
    with pytest.raises(kv.exceptions.ResourceInUseException):
        kv.update_media_storage_configuration(
            ChannelARN=other["ChannelARN"],
            MediaStorageConfiguration={"Status": "ENABLED", "StreamARN": stream["StreamARN"]},
        )
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_media_storage_configuration(ChannelARN=MISSING_CHANNEL.format(unique("none")))


def test_channel_resource_tags(kv):
    info = create_channel(kv, Tags=[{"Key": "team", "Value": "video"}])
    arn = info["ChannelARN"]
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"team": "video"}
    kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "env", "Value": "test"}, {"Key": "team", "Value": "media"}])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"team": "media", "env": "test"}
    kv.untag_resource(ResourceARN=arn, TagKeyList=["team", "absent"])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"env": "test"}
    with pytest.raises(kv.exceptions.TagsPerResourceExceededLimitException):
        kv.tag_resource(ResourceARN=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.list_tags_for_resource(ResourceARN=MISSING_CHANNEL.format(unique("none")))


def test_channels_survive_a_restart(tmp_path, creds):
    server = KvsLocal(tmp_path / "data", creds, log_path=tmp_path / "server.log")
    server.start()
    try:
        kv = make_client("kinesisvideo", server.url, creds)
        info = create_channel(kv, Tags=[{"Key": "k", "Value": "v"}])
        server.stop()
        server.start()
        kv = make_client("kinesisvideo", server.url, creds)
        assert kv.describe_signaling_channel(ChannelName=info["ChannelName"])["ChannelInfo"] == info
        assert kv.list_tags_for_resource(ResourceARN=info["ChannelARN"])["Tags"] == {"k": "v"}
    finally:
        server.stop()


def test_ice_server_config_without_a_turn_server_is_empty(kv, creds):
    info = create_channel(kv)
    signaling = make_client("kinesis-video-signaling", https_endpoint(kv, info["ChannelARN"], "VIEWER"), creds)
    got = signaling.get_ice_server_config(ChannelARN=info["ChannelARN"], ClientId="viewer-1", Service="TURN")
    assert got["IceServerList"] == []
    with pytest.raises(signaling.exceptions.ResourceNotFoundException):
        signaling.get_ice_server_config(ChannelARN=MISSING_CHANNEL.format(unique("none")))
    with pytest.raises(signaling.exceptions.InvalidArgumentException):
        signaling.get_ice_server_config(ChannelARN=info["ChannelARN"], ClientId="not valid")


@pytest.fixture(scope="module")
def turn_kvs(tmp_path_factory, creds):
    """A kvs-local that hands out credentials for a TURN server sharing a secret with it."""
    base = tmp_path_factory.mktemp("kvs-local-turn")
    saved = {k: os.environ.get(k) for k in ("KVS_LOCAL_TURN_URIS", "KVS_LOCAL_TURN_SECRET")}
    os.environ["KVS_LOCAL_TURN_URIS"] = "turn:127.0.0.1:3478?transport=udp,turns:127.0.0.1:5349?transport=tcp"
    os.environ["KVS_LOCAL_TURN_SECRET"] = "turn-shared-secret"
    server = KvsLocal(base / "data", creds, log_path=base / "server.log")
    try:
        server.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield server
    server.stop()


def test_ice_server_config_gives_turn_rest_api_credentials(turn_kvs, creds):
    kv = make_client("kinesisvideo", turn_kvs.url, creds)
    info = create_channel(kv)
    signaling = make_client("kinesis-video-signaling", https_endpoint(kv, info["ChannelARN"]), creds)
    before = int(time.time())
    servers = signaling.get_ice_server_config(ChannelARN=info["ChannelARN"], ClientId="viewer-7")["IceServerList"]
    assert len(servers) == 1
    server = servers[0]
    # IceServer Ttl: "Valid Range: Fixed value of 300."
    assert server["Ttl"] == 300
    assert server["Uris"] == ["turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:5349?transport=tcp"]
    expiry, user = server["Username"].split(":", 1)
    assert user == "viewer-7"
    assert before + 300 <= int(expiry) <= int(time.time()) + 300
    digest = hmac.new(b"turn-shared-secret", server["Username"].encode(), hashlib.sha1).digest()
    assert server["Password"] == base64.b64encode(digest).decode()


def test_send_alexa_offer_without_a_master_has_no_answer(kv, creds):
    info = create_channel(kv)
    signaling = make_client("kinesis-video-signaling", https_endpoint(kv, info["ChannelARN"]), creds)
    offer = base64.b64encode(b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n").decode()
    got = signaling.send_alexa_offer_to_master(
        ChannelARN=info["ChannelARN"], SenderClientId="alexa-1", MessagePayload=offer
    )
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "Answer" not in got, "no master is connected to answer the offer"
    with pytest.raises(signaling.exceptions.InvalidArgumentException):
        signaling.send_alexa_offer_to_master(
            ChannelARN=info["ChannelARN"], SenderClientId="alexa-1", MessagePayload="not base64!"
        )
    with pytest.raises(signaling.exceptions.ResourceNotFoundException):
        signaling.send_alexa_offer_to_master(
            ChannelARN=MISSING_CHANNEL.format(unique("none")), SenderClientId="alexa-1", MessagePayload=offer
        )


def test_join_storage_session_is_not_served(kv, endpoint, creds):
    # kvs-local has no WebRTC media server to join (README, "Not served"): the webrtc-storage operations are unknown
    # operations rather than a session that would never receive media.
    info = create_channel(kv)
    storage = make_client("kinesis-video-webrtc-storage", endpoint, creds)
    with pytest.raises(ClientError) as err:
        storage.join_storage_session(channelArn=info["ChannelARN"])
    assert err.value.response["Error"]["Code"] == "UnknownOperationException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
