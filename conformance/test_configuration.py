"""Per-stream configurations through boto3: image generation, notification, mapped resource and (already
served by the control plane) stream storage.

Expected behaviour comes from the API reference (seed 003): each test cites the sentence it checks.
"""

from __future__ import annotations

import copy

import pytest

from helpers import create_stream, unique

IMAGE_CONFIG = {
    "Status": "ENABLED",
    "ImageSelectorType": "SERVER_TIMESTAMP",
    "DestinationConfig": {"Uri": "s3://images-bucket/cam", "DestinationRegion": "us-east-1"},
    "SamplingInterval": 2000,
    "Format": "JPEG",
    "FormatConfig": {"JPEGQuality": "90"},
    "WidthPixels": 1280,
    "HeightPixels": 720,
}
NOTIFICATION_CONFIG = {
    "Status": "ENABLED",
    "DestinationConfig": {"Uri": "arn:aws:sns:us-east-1:123456789012:fragments"},
}


def test_image_generation_round_trip(kv):
    info = create_stream(kv, retention=1)
    name = info["StreamName"]
    assert "ImageGenerationConfiguration" not in kv.describe_image_generation_configuration(StreamName=name)
    kv.update_image_generation_configuration(StreamName=name, ImageGenerationConfiguration=IMAGE_CONFIG)
    got = kv.describe_image_generation_configuration(StreamARN=info["StreamARN"])
    assert got["ImageGenerationConfiguration"] == IMAGE_CONFIG
    # "If the structure is null, the configuration will be deleted from the stream."
    kv.update_image_generation_configuration(StreamName=name)
    assert "ImageGenerationConfiguration" not in kv.describe_image_generation_configuration(StreamName=name)


def test_image_generation_on_a_stream_without_retention_is_no_data_retention(kv):
    info = create_stream(kv, retention=0)
    with pytest.raises(kv.exceptions.NoDataRetentionException):
        kv.update_image_generation_configuration(
            StreamName=info["StreamName"], ImageGenerationConfiguration=IMAGE_CONFIG
        )


@pytest.mark.parametrize(
    "change",
    [
        # "The minimum value that can be provided is 200 ms."
        {"SamplingInterval": 199},
        # HeightPixels "Valid Range: Minimum value of 1. Maximum value of 2160."
        {"HeightPixels": 2161},
        # "This DestinationRegion must match the Region where the stream is located."
        {"DestinationConfig": {"Uri": "s3://b/p", "DestinationRegion": "eu-west-1"}},
        # FormatConfig "accepts ints from 1 to 100"
        {"FormatConfig": {"JPEGQuality": "0"}},
    ],
)
def test_image_generation_out_of_range_is_invalid_argument(kv, change):
    info = create_stream(kv, retention=1)
    config = copy.deepcopy(IMAGE_CONFIG)
    config.update(change)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_image_generation_configuration(StreamName=info["StreamName"], ImageGenerationConfiguration=config)


def test_image_generation_of_a_missing_stream_is_resource_not_found(kv):
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_image_generation_configuration(StreamName=unique("missing"))


def test_notification_round_trip(kv):
    info = create_stream(kv, retention=1)
    name = info["StreamName"]
    assert "NotificationConfiguration" not in kv.describe_notification_configuration(StreamName=name)
    kv.update_notification_configuration(StreamName=name, NotificationConfiguration=NOTIFICATION_CONFIG)
    got = kv.describe_notification_configuration(StreamName=name)
    assert got["NotificationConfiguration"] == NOTIFICATION_CONFIG
    kv.update_notification_configuration(StreamARN=info["StreamARN"])
    assert "NotificationConfiguration" not in kv.describe_notification_configuration(StreamName=name)


def test_notification_without_retention_and_invalid_values(kv):
    live = create_stream(kv, retention=0)
    with pytest.raises(kv.exceptions.NoDataRetentionException):
        kv.update_notification_configuration(
            StreamName=live["StreamName"], NotificationConfiguration=NOTIFICATION_CONFIG
        )
    info = create_stream(kv, retention=1)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_notification_configuration(
            StreamName=info["StreamName"],
            NotificationConfiguration={"Status": "ENABLED", "DestinationConfig": {"Uri": "no-scheme"}},
        )


def test_mapped_resource_configuration(kv):
    info = create_stream(kv, retention=1)
    got = kv.describe_mapped_resource_configuration(StreamName=info["StreamName"], MaxResults=1)
    assert got["MappedResourceConfigurationList"] == []
    channel = unique("mapped")
    arn = kv.create_signaling_channel(ChannelName=channel)["ChannelARN"]
    kv.update_media_storage_configuration(
        ChannelARN=arn, MediaStorageConfiguration={"Status": "ENABLED", "StreamARN": info["StreamARN"]}
    )
    got = kv.describe_mapped_resource_configuration(StreamARN=info["StreamARN"])
    assert [item["ARN"] for item in got["MappedResourceConfigurationList"]] == [arn]
    paginator = kv.get_paginator("describe_mapped_resource_configuration")
    items = [
        i for page in paginator.paginate(StreamName=info["StreamName"]) for i in page["MappedResourceConfigurationList"]
    ]
    assert [i["ARN"] for i in items] == [arn]
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_mapped_resource_configuration(StreamName=unique("missing"))


def test_stream_storage_configuration(kv):
    info = create_stream(kv, retention=1)
    got = kv.describe_stream_storage_configuration(StreamName=info["StreamName"])
    assert got["StreamStorageConfiguration"] == {"DefaultStorageTier": "HOT"}
    kv.update_stream_storage_configuration(
        StreamName=info["StreamName"],
        CurrentVersion=info["Version"],
        StreamStorageConfiguration={"DefaultStorageTier": "WARM"},
    )
    got = kv.describe_stream_storage_configuration(StreamARN=info["StreamARN"])
    assert got["StreamStorageConfiguration"] == {"DefaultStorageTier": "WARM"}
