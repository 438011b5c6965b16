"""Edge configurations through boto3: StartEdgeConfigurationUpdate, DescribeEdgeConfiguration,
DeleteEdgeConfiguration and ListEdgeAgentConfigurations, with the sync status life cycle of an Edge Agent that
never answers (no agent can reach kvs-local).

Expected behaviour comes from the API reference (seed 003): each test cites the sentence it checks.
"""

from __future__ import annotations

import os
import time

import pytest

from conftest import make_client
from helpers import create_stream, unique
from server import KvsLocal


def hub_arn(name: str) -> str:
    return f"arn:aws:iot:us-east-1:123456789012:thing/{name}"


def edge_config(hub: str) -> dict:
    return {
        "HubDeviceArn": hub_arn(hub),
        "RecorderConfig": {
            "MediaSourceConfig": {
                "MediaUriSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:camera-1",
                "MediaUriType": "RTSP_URI",
            },
        },
        "UploaderConfig": {"ScheduleConfig": {"ScheduleExpression": "0 0 * * * ?", "DurationInSeconds": 600}},
        "DeletionConfig": {
            "EdgeRetentionInHours": 72,
            "LocalSizeConfig": {"MaxLocalMediaSizeInMB": 2048, "StrategyOnFullSize": "DENY_NEW_MEDIA"},
            "DeleteAfterUpload": True,
        },
    }


def test_start_then_describe_is_syncing(kv):
    info = create_stream(kv, retention=1)
    hub = unique("hub")
    started = kv.start_edge_configuration_update(StreamName=info["StreamName"], EdgeConfig=edge_config(hub))
    # "If this API is invoked for the first time, a new edge configuration will be created for the stream, and the
    # sync status will be set to SYNCING."
    assert started["SyncStatus"] == "SYNCING"
    assert started["StreamARN"] == info["StreamARN"]
    assert started["EdgeConfig"] == edge_config(hub)
    described = kv.describe_edge_configuration(StreamARN=info["StreamARN"])
    assert described["SyncStatus"] == "SYNCING"
    assert described["CreationTime"] == started["CreationTime"]
    assert described["EdgeConfig"] == edge_config(hub)


def test_start_while_syncing_is_resource_in_use(kv):
    # "If you invoke this API during the syncing process, a ResourceInUseException will be thrown."
    info = create_stream(kv, retention=1)
    kv.start_edge_configuration_update(StreamName=info["StreamName"], EdgeConfig=edge_config(unique("hub")))
    with pytest.raises(kv.exceptions.ResourceInUseException):
        kv.start_edge_configuration_update(StreamName=info["StreamName"], EdgeConfig=edge_config(unique("hub")))


def test_start_without_retention_is_no_data_retention(kv):
    info = create_stream(kv, retention=0)
    with pytest.raises(kv.exceptions.NoDataRetentionException):
        kv.start_edge_configuration_update(StreamName=info["StreamName"], EdgeConfig=edge_config("hub"))


def test_start_with_invalid_edge_config_is_invalid_argument(kv):
    info = create_stream(kv, retention=1)
    config = edge_config("hub")
    # EdgeRetentionInHours "Valid Range: Minimum value of 1. Maximum value of 720."
    config["DeletionConfig"]["EdgeRetentionInHours"] = 721
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.start_edge_configuration_update(StreamName=info["StreamName"], EdgeConfig=config)


def test_describe_and_delete_without_configuration_are_not_found(kv):
    info = create_stream(kv, retention=1)
    with pytest.raises(kv.exceptions.StreamEdgeConfigurationNotFoundException):
        kv.describe_edge_configuration(StreamName=info["StreamName"])
    with pytest.raises(kv.exceptions.StreamEdgeConfigurationNotFoundException):
        kv.delete_edge_configuration(StreamName=info["StreamName"])
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_edge_configuration(StreamName=unique("missing"))


def test_delete_goes_through_deleting_then_the_configuration_is_gone(kv):
    info = create_stream(kv, retention=1)
    name = info["StreamName"]
    kv.start_edge_configuration_update(StreamName=name, EdgeConfig=edge_config(unique("hub")))
    kv.delete_edge_configuration(StreamName=name)
    # "When you invoke this API, the sync status is set to DELETING."
    assert kv.describe_edge_configuration(StreamName=name)["SyncStatus"] == "DELETING"
    deadline = time.monotonic() + 10
    while True:
        try:
            kv.describe_edge_configuration(StreamName=name)
        except kv.exceptions.StreamEdgeConfigurationNotFoundException:
            break
        # "When the deletion process has completed successfully, the edge configuration is no longer accessible."
        assert time.monotonic() < deadline, "the deletion never completed"
        time.sleep(0.2)
    started = kv.start_edge_configuration_update(StreamName=name, EdgeConfig=edge_config(unique("other-hub")))
    assert started["SyncStatus"] == "SYNCING"


def test_list_edge_agent_configurations_pages(kv):
    hub = unique("hub")
    names = []
    for _ in range(7):
        info = create_stream(kv, retention=1)
        kv.start_edge_configuration_update(StreamName=info["StreamName"], EdgeConfig=edge_config(hub))
        names.append(info["StreamName"])
    # MaxResults: "The default is 5."
    first = kv.list_edge_agent_configurations(HubDeviceArn=hub_arn(hub))
    assert len(first["EdgeConfigs"]) == 5
    assert first.get("NextToken")
    second = kv.list_edge_agent_configurations(HubDeviceArn=hub_arn(hub), NextToken=first["NextToken"])
    assert len(second["EdgeConfigs"]) == 2
    assert "NextToken" not in second
    listed = [c["StreamName"] for c in first["EdgeConfigs"] + second["EdgeConfigs"]]
    assert sorted(listed) == sorted(names)
    assert all(c["SyncStatus"] == "SYNCING" for c in first["EdgeConfigs"] + second["EdgeConfigs"])
    paginator = kv.get_paginator("list_edge_agent_configurations")
    paged = [c["StreamName"] for p in paginator.paginate(HubDeviceArn=hub_arn(hub)) for c in p["EdgeConfigs"]]
    assert sorted(paged) == sorted(names)
    assert kv.list_edge_agent_configurations(HubDeviceArn=hub_arn(unique("idle")))["EdgeConfigs"] == []
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.list_edge_agent_configurations(HubDeviceArn=hub_arn(hub), MaxResults=11)


@pytest.fixture(scope="module")
def short_sync_kvs(tmp_path_factory, creds):
    """A kvs-local whose edge sync gives up after 0.5 s instead of the service's 15 minutes."""
    base = tmp_path_factory.mktemp("kvs-local-edge")
    saved = os.environ.get("KVS_LOCAL_EDGE_SYNC_TIMEOUT_MS")
    os.environ["KVS_LOCAL_EDGE_SYNC_TIMEOUT_MS"] = "500"
    server = KvsLocal(base / "data", creds, log_path=base / "server.log")
    try:
        server.start()
    finally:
        if saved is None:
            os.environ.pop("KVS_LOCAL_EDGE_SYNC_TIMEOUT_MS", None)
        else:
            os.environ["KVS_LOCAL_EDGE_SYNC_TIMEOUT_MS"] = saved
    yield server
    server.stop()


def test_sync_fails_when_no_agent_answers_and_survives_restart(short_sync_kvs, creds):
    # "The connectivity of the stream's edge configuration and the Edge Agent will be retried for 15 minutes. After
    # 15 minutes, the status will transition into the SYNC_FAILED state."
    kv = make_client("kinesisvideo", short_sync_kvs.url, creds)
    info = create_stream(kv, retention=1)
    name = info["StreamName"]
    started = kv.start_edge_configuration_update(StreamName=name, EdgeConfig=edge_config("hub-a"))
    time.sleep(0.8)
    failed = kv.describe_edge_configuration(StreamName=name)
    assert failed["SyncStatus"] == "SYNC_FAILED"
    assert failed["FailedStatusDetails"]
    # "You will have to wait for the sync status to reach a terminal state such as: IN_SYNC, or SYNC_FAILED, before
    # using this API again."
    again = kv.start_edge_configuration_update(StreamName=name, EdgeConfig=edge_config("hub-a"))
    assert again["SyncStatus"] == "SYNCING"
    assert again["CreationTime"] == started["CreationTime"]
    short_sync_kvs.stop()
    short_sync_kvs.start()
    kv = make_client("kinesisvideo", short_sync_kvs.url, creds)
    after = kv.describe_edge_configuration(StreamName=name)
    assert after["EdgeConfig"] == edge_config("hub-a")
    assert after["CreationTime"] == started["CreationTime"]
