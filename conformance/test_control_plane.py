"""Control plane through boto3's kinesisvideo model: streams, versions, retention, endpoints, storage tier.

Expected behaviour comes from the API reference (seed 003): each test cites the sentence it checks.
"""

from __future__ import annotations

import datetime
import re
import time

import pytest
from botocore.exceptions import ClientError

from helpers import ARN_RE, create_stream, unique, wait_active

VERSION_RE = re.compile(r"^[a-zA-Z0-9]{1,64}$")
API_NAMES = [
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
]


def test_create_stream_returns_arn_of_the_service_shape(kv):
    name = unique()
    before_ms = int(time.time() * 1000)
    arn = kv.create_stream(StreamName=name, DataRetentionInHours=2)["StreamARN"]
    after_ms = int(time.time() * 1000)
    m = ARN_RE.match(arn)
    assert m, f"StreamARN {arn!r} is not arn:aws:kinesisvideo:us-east-1:<12 digits>:stream/<name>/<ms>"
    assert m.group("name") == name
    assert before_ms - 5000 <= int(m.group("ms")) <= after_ms + 5000, "the ARN's last part is the creation time in ms"


def test_describe_stream_reports_what_was_created(kv):
    name = unique()
    arn = kv.create_stream(StreamName=name, DeviceName="cam-1", MediaType="video/h264", DataRetentionInHours=24)[
        "StreamARN"
    ]
    info = wait_active(kv, name)
    assert info["StreamName"] == name
    assert info["StreamARN"] == arn
    assert info["DeviceName"] == "cam-1"
    assert info["MediaType"] == "video/h264"
    assert info["DataRetentionInHours"] == 24
    assert VERSION_RE.match(info["Version"]), info["Version"]
    created = info["CreationTime"]
    assert isinstance(created, datetime.datetime)
    age = datetime.datetime.now(datetime.timezone.utc) - created
    assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(minutes=5), created
    by_arn = kv.describe_stream(StreamARN=arn)["StreamInfo"]
    assert by_arn["StreamName"] == name and by_arn["Version"] == info["Version"]


def test_create_stream_defaults_to_no_retention(kv):
    # "The default value is 0, indicating that the stream does not persist data."
    name = unique()
    kv.create_stream(StreamName=name)
    info = wait_active(kv, name)
    assert info["DataRetentionInHours"] == 0


def test_create_existing_stream_is_resource_in_use(kv):
    name = unique()
    create_stream(kv, name)
    with pytest.raises(kv.exceptions.ResourceInUseException):
        kv.create_stream(StreamName=name)


def test_describe_unknown_stream_is_resource_not_found(kv):
    with pytest.raises(kv.exceptions.ResourceNotFoundException) as exc:
        kv.describe_stream(StreamName=unique("missing"))
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert exc.value.response["Error"]["Message"], "errors carry a Message"
    assert exc.value.response["ResponseMetadata"].get("RequestId"), "errors carry x-amzn-RequestId"
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_stream(StreamARN=f"arn:aws:kinesisvideo:us-east-1:123456789012:stream/{unique('nope')}/1")


def test_describe_without_name_or_arn_is_invalid_argument(kv):
    # "You must specify either the StreamName or the StreamARN."
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.describe_stream()


def test_dot_names_are_valid_streams(kv):
    # `.` and `..` match [a-zA-Z0-9_.-]+; they must be streams like any other.
    for name in (".", ".."):
        arn = kv.create_stream(StreamName=name, DataRetentionInHours=1)["StreamARN"]
        assert ARN_RE.match(arn).group("name") == name
        info = wait_active(kv, name)
        assert info["StreamName"] == name
        kv.tag_stream(StreamName=name, Tags={"k": "v"})
        assert kv.list_tags_for_stream(StreamName=name)["Tags"] == {"k": "v"}


def test_list_streams_paginator_with_name_condition(kv):
    prefix = unique("page")
    names = {f"{prefix}-{i}" for i in range(5)}
    for n in names:
        kv.create_stream(StreamName=n)
    kv.create_stream(StreamName=unique("other"))
    paginator = kv.get_paginator("list_streams")
    pages = list(
        paginator.paginate(
            StreamNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": prefix},
            PaginationConfig={"PageSize": 2},
        )
    )
    seen = [s["StreamName"] for p in pages for s in p["StreamInfoList"]]
    assert sorted(seen) == sorted(names), "BEGINS_WITH returns exactly the streams with that prefix, each once"
    assert all(len(p["StreamInfoList"]) <= 2 for p in pages), "MaxResults bounds each page"
    assert len(pages) >= 3
    assert all(p.get("NextToken") for p in pages[:-1]), "every page but the last carries NextToken"
    assert not pages[-1].get("NextToken")
    for s in (s for p in pages for s in p["StreamInfoList"]):
        assert ARN_RE.match(s["StreamARN"]) and s["Status"] in ("CREATING", "ACTIVE")
        assert VERSION_RE.match(s["Version"]) and isinstance(s["CreationTime"], datetime.datetime)


def test_list_streams_without_condition_includes_new_stream(kv):
    name = unique()
    kv.create_stream(StreamName=name)
    all_names = [s["StreamName"] for p in kv.get_paginator("list_streams").paginate() for s in p["StreamInfoList"]]
    assert name in all_names
    assert len(all_names) == len(set(all_names)), "pagination repeats no stream"


def test_list_streams_max_results_above_limit_is_invalid_argument(kv):
    # "MaxResults ... Valid Range: Minimum value of 1. Maximum value of 10000." (botocore checks only the minimum.)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.list_streams(MaxResults=10001)


def test_delete_stream_checks_current_version(kv):
    name = unique()
    info = create_stream(kv, name)
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.delete_stream(StreamARN=info["StreamARN"], CurrentVersion="0stale0")
    assert kv.describe_stream(StreamName=name)["StreamInfo"]["Status"] == "ACTIVE", "a refused delete changes nothing"
    kv.delete_stream(StreamARN=info["StreamARN"], CurrentVersion=info["Version"])
    deadline = time.monotonic() + 10
    while True:
        try:
            status = kv.describe_stream(StreamName=name)["StreamInfo"]["Status"]
        except kv.exceptions.ResourceNotFoundException:
            break
        assert status == "DELETING", f"a deleted stream may only show DELETING before it disappears, got {status}"
        assert time.monotonic() < deadline, "stream still listed 10 s after DeleteStream"
        time.sleep(0.2)


def test_delete_stream_without_version(kv):
    info = create_stream(kv)
    kv.delete_stream(StreamARN=info["StreamARN"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            kv.describe_stream(StreamARN=info["StreamARN"])
        except kv.exceptions.ResourceNotFoundException:
            return
        time.sleep(0.2)
    pytest.fail("stream still present 10 s after DeleteStream")


def test_delete_unknown_stream_is_resource_not_found(kv):
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.delete_stream(StreamARN=f"arn:aws:kinesisvideo:us-east-1:123456789012:stream/{unique('gone')}/1")


def test_update_stream_changes_metadata_and_version(kv):
    name = unique()
    info = create_stream(kv, name, DeviceName="old-device", MediaType="video/h264")
    kv.update_stream(
        StreamName=name, CurrentVersion=info["Version"], DeviceName="new-device", MediaType="video/h264,audio/aac"
    )
    after = wait_active(kv, name)
    assert after["DeviceName"] == "new-device"
    assert after["MediaType"] == "video/h264,audio/aac"
    assert after["Version"] != info["Version"], "When you update a stream, Kinesis Video Streams assigns a new version"
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.update_stream(StreamName=name, CurrentVersion=info["Version"], DeviceName="stale")
    assert wait_active(kv, name)["DeviceName"] == "new-device"


def test_update_stream_unknown_stream_is_resource_not_found(kv):
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.update_stream(StreamName=unique("missing"), CurrentVersion="abc", DeviceName="d")


def test_update_data_retention_increase_and_decrease(kv):
    name = unique()
    info = create_stream(kv, name, retention=2)
    kv.update_data_retention(
        StreamName=name,
        CurrentVersion=info["Version"],
        Operation="INCREASE_DATA_RETENTION",
        DataRetentionChangeInHours=5,
    )
    info = wait_active(kv, name)
    assert info["DataRetentionInHours"] == 7
    kv.update_data_retention(
        StreamARN=info["StreamARN"],
        CurrentVersion=info["Version"],
        Operation="DECREASE_DATA_RETENTION",
        DataRetentionChangeInHours=6,
    )
    info = wait_active(kv, name)
    assert info["DataRetentionInHours"] == 1


def test_update_data_retention_below_zero_is_invalid_argument(kv):
    # "The minimum value for data retention is 0"
    name = unique()
    info = create_stream(kv, name, retention=1)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_data_retention(
            StreamName=name,
            CurrentVersion=info["Version"],
            Operation="DECREASE_DATA_RETENTION",
            DataRetentionChangeInHours=5,
        )
    assert wait_active(kv, name)["DataRetentionInHours"] == 1


def test_update_data_retention_above_ten_years_is_invalid_argument(kv):
    # "the maximum value is 87600 (ten years)"
    name = unique()
    info = create_stream(kv, name, retention=1)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_data_retention(
            StreamName=name,
            CurrentVersion=info["Version"],
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=87600,
        )


def test_update_data_retention_stale_version_is_version_mismatch(kv):
    name = unique()
    create_stream(kv, name, retention=1)
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.update_data_retention(
            StreamName=name,
            CurrentVersion="0stale0",
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        )


def test_update_data_retention_bad_operation_is_invalid_argument(kv):
    name = unique()
    info = create_stream(kv, name, retention=1)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_data_retention(
            StreamName=name,
            CurrentVersion=info["Version"],
            Operation="DOUBLE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        )


@pytest.fixture(scope="module")
def endpoint_stream(kv):
    return create_stream(kv, unique("endpoint"))


@pytest.mark.parametrize("api_name", API_NAMES)
def test_get_data_endpoint_every_api_name(kv, endpoint, endpoint_stream, api_name):
    url = kv.get_data_endpoint(StreamName=endpoint_stream["StreamName"], APIName=api_name)["DataEndpoint"]
    # "The returned endpoint does not have the API name appended."
    assert url.rstrip("/") == endpoint, f"{api_name}: kvs-local serves every API on its own address, got {url}"
    by_arn = kv.get_data_endpoint(StreamARN=endpoint_stream["StreamARN"], APIName=api_name)["DataEndpoint"]
    assert by_arn == url


def test_get_data_endpoint_unknown_api_name_is_invalid_argument(kv, endpoint_stream):
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.get_data_endpoint(StreamName=endpoint_stream["StreamName"], APIName="PUT_EVERYTHING")


def test_get_data_endpoint_unknown_stream_is_resource_not_found(kv):
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.get_data_endpoint(StreamName=unique("missing"), APIName="PUT_MEDIA")


def test_storage_configuration_defaults_to_hot(kv):
    # "If not specified, the stream will use the default storage configuration with HOT tier"
    info = create_stream(kv)
    out = kv.describe_stream_storage_configuration(StreamName=info["StreamName"])
    assert out["StreamName"] == info["StreamName"]
    assert out["StreamARN"] == info["StreamARN"]
    assert out["StreamStorageConfiguration"] == {"DefaultStorageTier": "HOT"}


def test_storage_configuration_given_at_creation(kv):
    name = unique()
    kv.create_stream(StreamName=name, StreamStorageConfiguration={"DefaultStorageTier": "WARM"})
    info = wait_active(kv, name)
    out = kv.describe_stream_storage_configuration(StreamARN=info["StreamARN"])
    assert out["StreamStorageConfiguration"]["DefaultStorageTier"] == "WARM"


def test_update_storage_configuration(kv):
    name = unique()
    info = create_stream(kv, name)
    kv.update_stream_storage_configuration(
        StreamName=name, CurrentVersion=info["Version"], StreamStorageConfiguration={"DefaultStorageTier": "WARM"}
    )
    wait_active(kv, name)
    deadline = time.monotonic() + 10
    while True:
        tier = kv.describe_stream_storage_configuration(StreamName=name)["StreamStorageConfiguration"]
        if tier["DefaultStorageTier"] == "WARM":
            break
        assert time.monotonic() < deadline, f"tier still {tier} 10 s after the update"
        time.sleep(0.2)


def test_update_storage_configuration_stale_version_is_version_mismatch(kv):
    name = unique()
    create_stream(kv, name)
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.update_stream_storage_configuration(
            StreamName=name, CurrentVersion="0stale0", StreamStorageConfiguration={"DefaultStorageTier": "WARM"}
        )
    out = kv.describe_stream_storage_configuration(StreamName=name)
    assert out["StreamStorageConfiguration"]["DefaultStorageTier"] == "HOT"


def test_storage_configuration_bad_tier_is_invalid_argument(kv):
    name = unique()
    info = create_stream(kv, name)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_stream_storage_configuration(
            StreamName=name, CurrentVersion=info["Version"], StreamStorageConfiguration={"DefaultStorageTier": "COLD"}
        )


def test_storage_configuration_unknown_stream_is_resource_not_found(kv):
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_stream_storage_configuration(StreamName=unique("missing"))
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.update_stream_storage_configuration(
            StreamName=unique("missing"), CurrentVersion="abc", StreamStorageConfiguration={"DefaultStorageTier": "HOT"}
        )


def test_error_responses_name_the_exception(kv):
    """The error type reaches boto3 through x-amzn-ErrorType; without it boto3 would only see the status."""
    try:
        kv.describe_stream(StreamName=unique("missing"))
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ResourceNotFoundException"
        assert "x-amzn-errortype" in {k.lower() for k in exc.response["ResponseMetadata"]["HTTPHeaders"]}
    else:
        pytest.fail("DescribeStream of a missing stream succeeded")


def test_raw_response_shapes(endpoint, creds, kv):
    """What SDKs stricter than boto3 need: JSON bodies, epoch-second numbers (the Rust SDK rejects strings),
    and x-amzn-RequestId on every response."""
    import json as _json

    from wire import raw_post

    info = create_stream(kv, retention=1)
    resp = raw_post(endpoint, "/describeStream", _json.dumps({"StreamName": info["StreamName"]}).encode(), creds)
    assert resp.status == 200
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    assert resp.headers.get("x-amzn-requestid")
    created = resp.json()["StreamInfo"]["CreationTime"]
    assert isinstance(created, (int, float)) and not isinstance(created, bool), f"CreationTime {created!r}"
    listed = raw_post(endpoint, "/listStreams", b"{}", creds).json()["StreamInfoList"]
    assert all(isinstance(s["CreationTime"], (int, float)) for s in listed)


def test_list_streams_garbage_next_token_is_invalid_argument(kv):
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.list_streams(NextToken="bm90IGEgdG9rZW4gb2YgdGhpcyBzZXJ2ZXI=")
