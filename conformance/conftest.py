"""Fixtures: a kvs-local child process per session and boto3 clients pointed at it.

The server runs with a key pair made up for this run, passed in its environment; the clients use the same pair,
region us-east-1 and no retries, so every error the server returns reaches the test unchanged.
"""

from __future__ import annotations

import os

import boto3
import pytest
from botocore.config import Config

from server import KvsLocal, server_binary, throwaway_creds
from wire import Creds

# Keep the developer's own AWS configuration (profiles, endpoint overrides, real keys) out of every client.
for _var in [v for v in os.environ if v.startswith("AWS_")]:
    del os.environ[_var]
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

REGION = "us-east-1"
CLIENT_CONFIG = Config(
    region_name=REGION,
    retries={"total_max_attempts": 1, "mode": "standard"},
    connect_timeout=5,
    read_timeout=60,
)


def make_client(service: str, endpoint: str, creds: Creds):
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.session_token,
        config=CLIENT_CONFIG,
    )


def pytest_report_header(config):
    try:
        return f"kvs-local binary: {server_binary()}"
    except FileNotFoundError as exc:
        return str(exc)


@pytest.fixture(scope="session")
def creds() -> Creds:
    return throwaway_creds()


@pytest.fixture(scope="session")
def kvs(tmp_path_factory, creds):
    base = tmp_path_factory.mktemp("kvs-local")
    server = KvsLocal(base / "data", creds, log_path=base / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def endpoint(kvs) -> str:
    assert kvs.url is not None
    return kvs.url


@pytest.fixture(autouse=True)
def server_survives(request):
    """Every test must leave the shared server running: a crash is reported against the test that caused it."""
    yield
    if "kvs" in request.fixturenames:
        server = request.getfixturevalue("kvs")
        assert server.alive(), f"kvs-local exited during this test; log tail:\n{server.log_tail()}"


@pytest.fixture(scope="session")
def kv(endpoint, creds):
    return make_client("kinesisvideo", endpoint, creds)


@pytest.fixture(scope="session")
def media_client_for(kv, creds):
    """Returns a kinesis-video-media client at the endpoint GetDataEndpoint(GET_MEDIA) gives for a stream."""

    def factory(stream: str):
        url = kv.get_data_endpoint(StreamName=stream, APIName="GET_MEDIA")["DataEndpoint"]
        return make_client("kinesis-video-media", url, creds)

    return factory


@pytest.fixture(scope="session")
def archived_client_for(kv, creds):
    """Returns a kinesis-video-archived-media client at the endpoint GetDataEndpoint gives for the API."""

    def factory(stream: str, api: str = "LIST_FRAGMENTS"):
        url = kv.get_data_endpoint(StreamName=stream, APIName=api)["DataEndpoint"]
        return make_client("kinesis-video-archived-media", url, creds)

    return factory


@pytest.fixture(scope="session")
def media(endpoint, creds):
    return make_client("kinesis-video-media", endpoint, creds)


@pytest.fixture(scope="session")
def archived(endpoint, creds):
    return make_client("kinesis-video-archived-media", endpoint, creds)


@pytest.fixture(scope="session")
def ordered_kvs(tmp_path_factory, creds):
    """A second server started with --ordered-list-fragments."""
    base = tmp_path_factory.mktemp("kvs-local-ordered")
    server = KvsLocal(base / "data", creds, extra_args=["--ordered-list-fragments"], log_path=base / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stored(kv, endpoint, creds):
    """A stream holding five persisted one-second fragments, put 5..1 s in the past (ABSOLUTE timecodes)."""
    from helpers import create_stream, ingest, unique

    info = create_stream(kv, unique("stored"), retention=1, MediaType="video/h264")
    got = ingest(endpoint, creds, info["StreamName"], count=5)
    return info, got
