"""Starts and stops a kvs-local child process for the conformance suite."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

from wire import Creds

READY_LINE = re.compile(r"^kvs-local listening on (https?://127\.0\.0\.1:\d+)\s*$")
REPO_ROOT = Path(__file__).resolve().parent.parent


def server_binary() -> Path:
    env = os.environ.get("KVS_LOCAL_BIN")
    path = Path(env) if env else REPO_ROOT / "target" / "debug" / "kvs-local"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"kvs-local binary not found at {path}: build it with `cargo build -p kvs-local` "
            "or point KVS_LOCAL_BIN at it"
        )
    return path


def throwaway_creds() -> Creds:
    """A key pair made up for this run, so nothing real can ever be used or leaked by the suite."""
    return Creds("AKIDCONF" + secrets.token_hex(6).upper(), secrets.token_urlsafe(30))


class KvsLocal:
    """One kvs-local process listening on 127.0.0.1:<free port> with its own data directory."""

    def __init__(self, data_dir: Path, creds: Creds, extra_args: list[str] | None = None, log_path: Path | None = None):
        self.data_dir = data_dir
        self.creds = creds
        self.extra_args = list(extra_args or [])
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.stdout_lines: list[str] = []
        self._log_file = None

    def start(self, timeout: float = 30.0) -> str:
        binary = server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_ACCESS_KEY_ID"] = self.creds.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.creds.secret_key
        if self.creds.session_token:
            env["AWS_SESSION_TOKEN"] = self.creds.session_token
        env.setdefault("RUST_LOG", "info")
        args = [str(binary), "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir), *self.extra_args]
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._log_file, stdin=subprocess.DEVNULL, env=env
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace")
                self.stdout_lines.append(line)
                if self.url is None:
                    m = READY_LINE.match(line.strip())
                    if m:
                        self.url = m.group(1)
                        ready.set()
            ready.set()

        threading.Thread(target=pump, name="kvs-local-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kvs-local did not print its ready line within {timeout} s; log: {self.log_path}")
        if self.url is None:
            code = self.proc.poll()
            raise RuntimeError(
                f"kvs-local exited (code {code}) before printing 'kvs-local listening on http://127.0.0.1:PORT'; "
                f"stdout: {''.join(self.stdout_lines)[-2000:]!r}; log: {self.log_path}"
            )
        return self.url

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.url = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.url = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""
