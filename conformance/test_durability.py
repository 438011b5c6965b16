"""Persistence as a client sees it: stream state and PERSISTED fragments survive `kill -9` and a restart,
and read back byte for byte (issue: "PERSISTED means the fragment survives kill -9 of kvs-local and a restart").
"""

from __future__ import annotations

import mkv
from conftest import make_client
from helpers import create_stream, expected_frames, frames_of, ingest, read_streaming_body, unique
from server import KvsLocal


def test_persisted_fragments_and_streams_survive_kill_and_restart(tmp_path, creds):
    server = KvsLocal(tmp_path / "data", creds, log_path=tmp_path / "server.log")
    server.start()
    try:
        kv = make_client("kinesisvideo", server.url, creds)
        info = create_stream(kv, unique("durable"), retention=1, DeviceName="cam-9", Tags={"keep": "me"})
        got = ingest(server.url, creds, info["StreamName"], count=3)
        server.kill9()
        server.start()
        kv = make_client("kinesisvideo", server.url, creds)
        after = kv.describe_stream(StreamName=info["StreamName"])["StreamInfo"]
        assert after["StreamARN"] == info["StreamARN"]
        assert after["Version"] == info["Version"]
        assert after["DeviceName"] == "cam-9"
        assert after["DataRetentionInHours"] == 1
        assert kv.list_tags_for_stream(StreamName=info["StreamName"])["Tags"] == {"keep": "me"}
        archived = make_client("kinesis-video-archived-media", server.url, creds)
        out = archived.get_media_for_fragment_list(StreamName=info["StreamName"], Fragments=got.fragment_numbers)
        body, _ = read_streaming_body(out["Payload"])
        frags = sorted(mkv.split_fragments(body), key=lambda f: f.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER"))
        assert [f.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER") for f in frags] == got.fragment_numbers
        for frag, cluster in zip(frags, got.clusters, strict=True):
            assert frames_of(frag) == expected_frames(cluster)
        # New fragments after the restart get numbers above the old ones.
        more = ingest(server.url, creds, info["StreamName"], count=1, base_ms=got.timecodes[-1] + 1000, seed=50)
        assert more.fragment_numbers[0] > got.fragment_numbers[-1]
    finally:
        server.stop()
