"""Ingestion from a log: a backend appends publications to a Redis Stream or a JetStream
stream, the gateway publishes each once (acknowledged after the publish, idempotency keys
against redelivery), skips entries that can never be published, and keeps serving."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import websockets

from conftest import free_port


class RedisServer:
    """A private redis-server on a free loopback port (never the machine's 6379)."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        )
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class NatsServer:
    """A private nats-server with JetStream on a free loopback port (never the machine's 4222)."""

    def __init__(self, tmp_path):
        self.port = free_port()
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.proc = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(tmp_path / "js")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        assert not os.environ.get("CI"), "redis-server is required under CI"
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path):
    if shutil.which("nats-server") is None and not os.path.exists("/usr/sbin/nats-server"):
        assert not os.environ.get("CI"), "nats-server is required under CI"
        pytest.skip("nats-server is not installed")
    server = NatsServer(tmp_path)
    yield server
    server.stop()


async def receive(ws, count, timeout=10.0):
    got = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < count:
        left = deadline - asyncio.get_running_loop().time()
        got.append(await asyncio.wait_for(ws.recv(), max(left, 0.01)))
    return got


async def nothing_more(ws, wait=0.5):
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.recv(), wait)


def test_redis_stream_entries_are_published_once_and_bad_ones_are_skipped(make_server, redis_server):
    server = make_server(env={
        "SWITCHBOARD_INGEST_SOURCE": "redis",
        "SWITCHBOARD_REDIS_URL": redis_server.url,
        "SWITCHBOARD_INGEST_STREAM": "feed",
    })

    def add(entry):
        redis_server.cli("XADD", "feed", "*", "payload", json.dumps(entry))

    async def scenario():
        url = f"ws://{server.base}/ws/chat/log?token={server.token('alice')}"
        async with websockets.connect(url) as ws:
            add({"channel": "chat:log", "data": "first", "idempotency_key": "k1"})
            add({"channel": "chat:log", "data": "again", "idempotency_key": "k1"})
            add({"channel": "nowhere:at-all", "data": "x"})
            redis_server.cli("XADD", "feed", "*", "payload", "not json")
            add({"channel": "chat:log", "data": "second"})
            assert await receive(ws, 2) == ["first", "second"], "the repeated key is applied once; bad entries are skipped"
            await nothing_more(ws)
        # Everything was acknowledged: nothing is pending in the group.
        deadline = time.monotonic() + 5
        while redis_server.cli("XPENDING", "feed", "switchboard").splitlines()[:1] != ["0"]:
            assert time.monotonic() < deadline, redis_server.cli("XPENDING", "feed", "switchboard")
            time.sleep(0.1)
        events = [e for e in server.log_events() if e.get("event") == "ingest_entry_dropped"]
        assert len(events) == 2, events
        status, _ = server.get("/metrics")
        assert status == 200

    asyncio.run(scenario())


def test_redis_stream_entries_written_while_the_gateway_was_down_are_published_after_it_starts(make_server, redis_server):
    redis_server.cli("XGROUP", "CREATE", "feed", "switchboard", "0", "MKSTREAM")
    for n in range(3):
        redis_server.cli("XADD", "feed", "*", "payload", json.dumps({"channel": "chat:late", "data": f"m{n}"}))
    server = make_server(env={
        "SWITCHBOARD_INGEST_SOURCE": "redis",
        "SWITCHBOARD_REDIS_URL": redis_server.url,
        "SWITCHBOARD_INGEST_STREAM": "feed",
        "SWITCHBOARD_BROKER": "redis",
    })

    async def scenario():
        # History is off in `chat`, so the proof is the group's position: every entry was
        # read and acknowledged once the gateway ran.
        deadline = time.monotonic() + 10
        while True:
            info = redis_server.cli("XINFO", "GROUPS", "feed")
            if "entries-read\n3" in info and "pending\n0" in info:
                break
            assert time.monotonic() < deadline, info
            await asyncio.sleep(0.1)
        url = f"ws://{server.base}/ws/chat/late?token={server.token('bob')}"
        async with websockets.connect(url) as ws:
            redis_server.cli("XADD", "feed", "*", "payload", json.dumps({"channel": "chat:late", "data": "live"}))
            assert await receive(ws, 1) == ["live"]

    asyncio.run(scenario())


def test_jetstream_messages_are_published_once(make_server, nats_server):
    nats = pytest.importorskip("nats")
    server = make_server(env={
        "SWITCHBOARD_INGEST_SOURCE": "nats",
        "SWITCHBOARD_NATS_URL": nats_server.url,
        "SWITCHBOARD_INGEST_STREAM": "FEED",
        "SWITCHBOARD_INGEST_SUBJECT": "feed.in",
    })

    async def scenario():
        client = await nats.connect(nats_server.url)
        js = client.jetstream()
        url = f"ws://{server.base}/ws/chat/js?token={server.token('carol')}"
        async with websockets.connect(url) as ws:
            # The gateway makes the stream on first use; wait for it before publishing.
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    await js.stream_info("FEED")
                    break
                except Exception:
                    assert asyncio.get_running_loop().time() < deadline, "the ingest stream was not made"
                    await asyncio.sleep(0.1)
            for entry in (
                {"channel": "chat:js", "data": "one", "idempotency_key": "j1"},
                {"channel": "chat:js", "data": "one again", "idempotency_key": "j1"},
                {"channel": "chat:js", "data": "two"},
            ):
                await js.publish("feed.in", json.dumps(entry).encode())
            assert await receive(ws, 2) == ["one", "two"]
            await nothing_more(ws)
        await client.close()

    asyncio.run(scenario())
