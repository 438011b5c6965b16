"""Behaviours that need a server started with other options: several keys from --credentials, HTTPS, and the
PutMedia limits (fragment size 4001, fragment duration 4002, connection duration 4003, idle close) shortened so a
test can reach them in seconds. The limits' ids and names are the seed's (PutMedia, ErrorId list).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

import mkv
from conftest import CLIENT_CONFIG, REGION, make_client
from helpers import create_stream, unique
from server import KvsLocal, throwaway_creds
from wire import Creds, open_put_media


@pytest.fixture
def start_server(tmp_path, creds):
    started: list[KvsLocal] = []

    def start(*args: str, server_creds: Creds | None = None) -> KvsLocal:
        n = len(started)
        server = KvsLocal(
            tmp_path / f"data{n}", server_creds or creds, extra_args=list(args), log_path=tmp_path / f"server{n}.log"
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        alive = server.alive()
        server.stop()
        assert alive, f"kvs-local exited during the test; log tail:\n{server.log_tail()}"


def test_credentials_file_accepts_each_key(start_server, tmp_path, creds):
    second = throwaway_creds()
    temporary = Creds("ASIACONF" + unique("")[-12:].upper(), "temporary-secret", "FQoGZXIvYXdzEXAMPLETOKEN")
    path = tmp_path / "keys.txt"
    path.write_text(
        "# accepted keys\n"
        f"{second.access_key} {second.secret_key}\n"
        f"{temporary.access_key} {temporary.secret_key} {temporary.session_token}\n"
    )
    server = start_server("--credentials", str(path))
    for who in (creds, second, temporary):
        make_client("kinesisvideo", server.url, who).list_streams()
    without_token = make_client("kinesisvideo", server.url, Creds(temporary.access_key, temporary.secret_key))
    with pytest.raises(ClientError) as exc:
        without_token.list_streams()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    wrong_token = make_client(
        "kinesisvideo", server.url, Creds(temporary.access_key, temporary.secret_key, "FQoGZXIvYXdzOTHERTOKEN")
    )
    with pytest.raises(ClientError) as exc:
        wrong_token.list_streams()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_https_with_boto3(start_server, tmp_path, creds):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = KvsLocal(
        tmp_path / "tls-data",
        creds,
        extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
        log_path=tmp_path / "tls.log",
    )
    try:
        url = server.start()
        assert url.startswith("https://127.0.0.1:"), url
        client = boto3.session.Session().client(
            "kinesisvideo",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            config=CLIENT_CONFIG,
            verify=str(cert),
        )
        name = unique()
        client.create_stream(StreamName=name, DataRetentionInHours=1)
        assert client.describe_stream(StreamName=name)["StreamInfo"]["StreamName"] == name
        endpoint = client.get_data_endpoint(StreamName=name, APIName="GET_MEDIA")["DataEndpoint"]
        assert endpoint.rstrip("/") == url, "GetDataEndpoint names the HTTPS address"
    finally:
        server.stop()


def _error_ack(session, timeout: float = 15.0) -> dict:
    assert session.wait_for(lambda acks: any(a.event_type == "ERROR" for a in acks), timeout=timeout), session.events()
    return session.errors()[0]


def test_fragment_over_size_limit_is_4001(start_server, creds):
    server = start_server("--max-fragment-size", "100000")
    kv = make_client("kinesisvideo", server.url, creds)
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    big = mkv.video_fragment(base, frames=30, size=5000)  # about 150 kB
    assert len(big) > 100_000
    with open_put_media(server.url, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header())
        s.send(big)
        s.send(mkv.end_of_fragment_tags())
        err = _error_ack(s)
        assert (err["ErrorId"], err["ErrorCode"]) == (4001, "MAX_FRAGMENT_SIZE_REACHED"), err


def test_fragment_over_duration_limit_is_4002(start_server, creds):
    server = start_server("--max-fragment-duration-ms", "3000")
    kv = make_client("kinesisvideo", server.url, creds)
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000) - 10_000
    long_fragment = mkv.video_fragment(base, frames=6, frame_ms=1000)  # frames over 5 s
    with open_put_media(server.url, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + long_fragment + mkv.end_of_fragment_tags())
        err = _error_ack(s)
        assert (err["ErrorId"], err["ErrorCode"]) == (4002, "MAX_FRAGMENT_DURATION_REACHED"), err


def test_connection_over_duration_limit_is_4003(start_server, creds):
    server = start_server("--max-connection-duration", "3")
    kv = make_client("kinesisvideo", server.url, creds)
    info = create_stream(kv, retention=1)
    base = int(time.time() * 1000)
    started = time.monotonic()
    with open_put_media(server.url, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header())
        i = 0
        while not s.closed and time.monotonic() - started < 10:
            if not s.send(mkv.video_fragment(base + i * 500, frames=3, frame_ms=100, seed=i)):
                break
            i += 1
            time.sleep(0.5)
        err = _error_ack(s, timeout=5)
        assert (err["ErrorId"], err["ErrorCode"]) == (4003, "MAX_CONNECTION_DURATION_REACHED"), err
        assert s.wait_closed(5), "the request ends after 4003"
        assert 2.5 <= time.monotonic() - started <= 8
        persisted = [a for a in s.acks if a.event_type == "PERSISTED"]
        assert persisted, "fragments before the limit were stored"


def test_put_media_closed_after_idle_timeout(start_server, creds):
    # "If no data is received within the 30 seconds, Kinesis Video Streams closes the request." (shortened to 2 s)
    server = start_server("--put-media-idle-timeout", "2", "--idle-ack-interval-ms", "500")
    kv = make_client("kinesisvideo", server.url, creds)
    info = create_stream(kv, retention=1)
    with open_put_media(server.url, creds, stream_name=info["StreamName"]) as s:
        s.send(mkv.segment_header() + mkv.video_fragment(int(time.time() * 1000)) + mkv.end_of_fragment_tags())
        assert s.wait_for(lambda acks: any(a.event_type == "PERSISTED" for a in acks))
        quiet_since = time.monotonic()
        assert s.wait_closed(10), "the server must close a PutMedia request that stays idle"
        assert 1.5 <= time.monotonic() - quiet_since <= 6
        idle = [a for a in s.acks if a.event_type == "IDLE"]
        assert idle, "IDLE acks are sent while waiting"
        assert all("ErrorId" not in a.raw for a in idle), [a.raw for a in idle]


def test_state_written_by_one_server_is_read_by_the_next(tmp_path, creds):
    """Stream state survives a clean stop too (not only kill -9, see test_durability.py)."""
    data: Path = tmp_path / "shared-data"
    first = KvsLocal(data, creds, log_path=tmp_path / "first.log")
    first.start()
    try:
        kv = make_client("kinesisvideo", first.url, creds)
        info = create_stream(kv, retention=3)
    finally:
        first.stop()
    second = KvsLocal(data, creds, log_path=tmp_path / "second.log")
    second.start()
    try:
        kv = make_client("kinesisvideo", second.url, creds)
        again = kv.describe_stream(StreamName=info["StreamName"])["StreamInfo"]
        assert again["StreamARN"] == info["StreamARN"] and again["DataRetentionInHours"] == 3
    finally:
        second.stop()
