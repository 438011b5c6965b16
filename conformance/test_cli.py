"""The AWS CLI (installed into the venv from PyPI with the pinned botocore) talks to kvs-local."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import create_stream


def aws_cli() -> str | None:
    beside_python = Path(sys.executable).with_name("aws")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("aws")


def test_aws_cli_list_streams(kv, endpoint, creds):
    cli = aws_cli()
    if cli is None:
        pytest.skip("the AWS CLI is not installed")
    info = create_stream(kv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=creds.access_key,
        AWS_SECRET_ACCESS_KEY=creds.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    proc = subprocess.run(
        [cli, "kinesisvideo", "list-streams", "--endpoint-url", endpoint, "--output", "json"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    names = [s["StreamName"] for s in json.loads(proc.stdout)["StreamInfoList"]]
    assert info["StreamName"] in names
