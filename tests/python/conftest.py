"""Fixtures that run the real `switchboard` binary as a process on a free loopback port."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHBOARD_BIN", ROOT / "target" / "release" / "switchboard"))
SECRET = "python-test-secret-0123456789abcdef"
API_KEY = "python-test-api-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running gateway process; its stderr (the log) is captured to a file."""

    def __init__(self, tmp_path: Path, args=(), env=None, port=None):
        listen_port = free_port()
        self.port = port or listen_port
        self.log_path = tmp_path / f"switchboard-{self.port}.log"
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "SWITCHBOARD_LISTEN": f"127.0.0.1:{listen_port}",
            "SWITCHBOARD_TOKEN_HMAC_SECRET": SECRET,
            "SWITCHBOARD_API_KEY": API_KEY,
        }
        full_env.update(env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(BINARY), "serve", *args], env=full_env, stderr=self.log, stdout=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early: {self.read_log()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not become healthy in 10 s")

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://{self.base}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def api(self, method, body, key=API_KEY):
        request = urllib.request.Request(
            f"http://{self.base}/api/{method}",
            data=json.dumps(body).encode(),
            headers={"X-API-Key": key, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def token(self, user, ttl="1h"):
        out = subprocess.run(
            [str(BINARY), "token", "--user", user, "--ttl", ttl],
            env={"SWITCHBOARD_TOKEN_HMAC_SECRET": SECRET},
            capture_output=True, text=True, check=True, timeout=10,
        )
        return out.stdout.strip()

    def read_log(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def log_events(self):
        events = []
        for line in self.read_log().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return events

    def stop(self, sig=signal.SIGTERM, timeout=15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def make_server(tmp_path):
    started = []

    def make(args=(), env=None, port=None):
        s = Server(tmp_path, args, env, port)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
