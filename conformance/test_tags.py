"""Stream tags (TagStream, UntagStream, ListTagsForStream) and resource tags (TagResource, UntagResource,
ListTagsForResource) through boto3.

The reference describes the *Resource operations for signaling channels; kvs-local has streams only, so they are
exercised with a stream ARN, the only kind of kinesisvideo ARN kvs-local holds.
"""

from __future__ import annotations

import pytest

from helpers import create_stream, unique

MISSING_ARN = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/{}/1700000000000"


def test_create_stream_with_tags(kv):
    info = create_stream(kv, Tags={"team": "video", "env": "test"})
    assert kv.list_tags_for_stream(StreamName=info["StreamName"])["Tags"] == {"team": "video", "env": "test"}


def test_tag_untag_list_stream(kv):
    info = create_stream(kv)
    name, arn = info["StreamName"], info["StreamARN"]
    assert kv.list_tags_for_stream(StreamName=name).get("Tags", {}) == {}
    kv.tag_stream(StreamName=name, Tags={"a": "1", "b": "2"})
    kv.tag_stream(StreamARN=arn, Tags={"b": "20", "c": ""})
    # "If you specify a tag that already exists, the tag value is replaced"; "the value is optional"
    assert kv.list_tags_for_stream(StreamARN=arn)["Tags"] == {"a": "1", "b": "20", "c": ""}
    # "If you specify a tag key that does not exist, it's ignored."
    kv.untag_stream(StreamName=name, TagKeyList=["a", "not-there"])
    assert kv.list_tags_for_stream(StreamName=name)["Tags"] == {"b": "20", "c": ""}
    kv.untag_stream(StreamARN=arn, TagKeyList=["b", "c"])
    assert kv.list_tags_for_stream(StreamName=name).get("Tags", {}) == {}


def test_tag_stream_over_fifty_is_tags_per_resource_exceeded(kv):
    # "A Kinesis video stream can support up to 50 tags."
    info = create_stream(kv)
    name = info["StreamName"]
    kv.tag_stream(StreamName=name, Tags={f"k{i}": str(i) for i in range(45)})
    with pytest.raises(kv.exceptions.TagsPerResourceExceededLimitException):
        kv.tag_stream(StreamName=name, Tags={f"n{i}": str(i) for i in range(6)})
    tags = kv.list_tags_for_stream(StreamName=name)["Tags"]
    assert len(tags) == 45, "a refused TagStream adds nothing"
    kv.tag_stream(StreamName=name, Tags={f"n{i}": str(i) for i in range(5)})
    assert len(kv.list_tags_for_stream(StreamName=name)["Tags"]) == 50


def test_tag_stream_key_off_pattern_is_invalid_argument(kv):
    info = create_stream(kv)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.tag_stream(StreamName=info["StreamName"], Tags={"bad{key}": "v"})
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.tag_stream(StreamName=info["StreamName"], Tags={"k" * 129: "v"})


def test_tag_operations_on_unknown_stream_are_resource_not_found(kv):
    missing = unique("missing")
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.tag_stream(StreamName=missing, Tags={"a": "b"})
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.untag_stream(StreamName=missing, TagKeyList=["a"])
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.list_tags_for_stream(StreamName=missing)


def test_tag_resource_round_trip(kv):
    info = create_stream(kv)
    arn = info["StreamARN"]
    kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "owner", "Value": "qa"}, {"Key": "tier", "Value": "1"}])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"owner": "qa", "tier": "1"}
    kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "tier", "Value": "2"}])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"owner": "qa", "tier": "2"}
    kv.untag_resource(ResourceARN=arn, TagKeyList=["owner", "absent"])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"tier": "2"}
    # Both tag APIs see the same tags of the stream.
    assert kv.list_tags_for_stream(StreamARN=arn)["Tags"] == {"tier": "2"}


def test_tag_resource_unknown_arn_is_resource_not_found(kv):
    arn = MISSING_ARN.format(unique("missing"))
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "a", "Value": "b"}])
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.untag_resource(ResourceARN=arn, TagKeyList=["a"])
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.list_tags_for_resource(ResourceARN=arn)


def test_tag_resource_over_fifty_is_tags_per_resource_exceeded(kv):
    info = create_stream(kv)
    arn = info["StreamARN"]
    kv.tag_resource(ResourceARN=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    with pytest.raises(kv.exceptions.TagsPerResourceExceededLimitException):
        kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "one-more", "Value": "v"}])


def test_tag_resource_malformed_arn_is_invalid_argument(kv):
    # ResourceARN pattern: arn:[a-z\d-]+:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.list_tags_for_resource(ResourceARN="not-an-arn")
