"""Helpers for cluster tests: a private broker process (redis-server or nats-server on a free
loopback port, never 6379 or 4222), several `switchboard serve` nodes joined by it, and a small
asyncio client of the JSON client protocol that keeps everything it receives.

Every process is started here and stopped by its pid in the fixtures' teardown."""

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import websockets

from conftest import Server, free_port

BROKERS = ["redis", "nats"]
RESERVED_PORTS = {6379, 4222, 26379, 8222}

# One namespace with everything a cluster shares: history with recovery, presence, join/leave.
CONFIG = """
[channels.namespaces.c]
subscribe = "authenticated"
publish = "subscribers"
presence = true
join_leave = true
history_size = 10000
history_ttl = "10m"
recover = true
"""

NODE_ENV = {
    "SWITCHBOARD_PRESENCE_TTL": "3s",
    "SWITCHBOARD_ANNOUNCE_INTERVAL": "500ms",
    "SWITCHBOARD_POSITION_CHECK_INTERVAL": "1s",
    "SWITCHBOARD_BROKER_TIMEOUT": "2s",
    "SWITCHBOARD_SHUTDOWN_DRAIN": "1s",
    "SWITCHBOARD_CLIENT_MESSAGE_RATE": "0",
    "SWITCHBOARD_LOG_LEVEL": "info",
}

# Close codes after which a client-protocol SDK reconnects and recovers.
RECONNECT_CODES = {3001, 3004, 3008, 3010, 3012, 3013, 1006, 1011, 1001}


def loopback_port() -> int:
    while True:
        port = free_port()
        if port not in RESERVED_PORTS:
            return port


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed: the cluster tests need it (scripts/test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip("!!! SKIPPED LOUDLY: " + message)
    return path


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Polls `predicate` until it returns a truthy value (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except OSError as error:  # a node or broker that is away
            last = error
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")
        time.sleep(interval)


async def async_wait_until(predicate, timeout, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(interval)


def run(coro, timeout=60):
    """Runs a test scenario with a hard bound on its time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class HookBackend:
    """A real HTTP backend on a free loopback port for the connect hook: answers every POST with
    a user while `healthy`, HTTP 500 while not, and keeps each call's `traceparent` header."""

    def __init__(self, user="hooked"):
        self.healthy = True
        self.traceparents = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                backend.traceparents.append(self.headers.get("traceparent"))
                if backend.healthy:
                    status, body = 200, json.dumps({"result": {"user": user}}).encode()
                else:
                    status, body = 500, b'{"error": "down"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/connect"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# ---- brokers ----


class Broker:
    """A private broker process on a free loopback port; `restart` reuses the port."""

    def __init__(self, kind: str, tmp_path: Path, extra_args=(), port=None, name=None, argv=None):
        self.kind = kind
        self.argv = argv
        self.tmp_path = tmp_path
        self.port = port or loopback_port()
        self.extra_args = list(extra_args)
        self.name = name or f"{kind}-{self.port}"
        self.store = tmp_path / f"{self.name}-store"
        self.store.mkdir(exist_ok=True)
        self.proc = None
        self.log = None
        self.start()

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}"

    def command(self):
        if self.argv:
            return list(self.argv)
        if self.kind == "redis":
            return [require("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.store), *self.extra_args]
        return [require("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.store), *self.extra_args]

    def start(self):
        assert self.port not in RESERVED_PORTS
        self.log = open(self.tmp_path / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=self.log)
        wait_until(self.answers, 10, what=f"{self.name} answering")

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.read_log()[-2000:]}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            if self.kind == "redis":
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
            return s.recv(4096).startswith(b"INFO")

    def read_log(self) -> str:
        self.log.flush()
        return (self.tmp_path / f"{self.name}.log").read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.log.close()

    def restart(self):
        self.kill()
        self.start()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.log and not self.log.closed:
            self.log.close()

    def cli(self, *args, timeout=5) -> str:
        """`redis-cli` against this Redis (Redis only)."""
        assert self.kind == "redis"
        out = subprocess.run([require("redis-cli"), "-p", str(self.port), *args],
                             capture_output=True, text=True, timeout=timeout, check=True)
        return out.stdout.strip()


# ---- nodes ----


class Cluster:
    """Switchboard nodes joined by one broker."""

    def __init__(self, broker: Broker, tmp_path: Path, nodes=3, env=None, url=None):
        self.broker = broker
        self.tmp_path = tmp_path
        self.config = tmp_path / "cluster.toml"
        self.config.write_text(CONFIG)
        self.env = dict(NODE_ENV)
        self.env["SWITCHBOARD_BROKER"] = broker.kind
        key = "SWITCHBOARD_REDIS_URL" if broker.kind == "redis" else "SWITCHBOARD_NATS_URL"
        self.env[key] = url or broker.url
        self.env.update(env or {})
        self.nodes: list[Server] = []
        self.stopped: list[Server] = []
        try:
            for i in range(nodes):
                self.nodes.append(self.start_node(i))
            self.wait_formed()
        except BaseException:
            self.stop()
            raise

    def start_node(self, index: int) -> Server:
        env = dict(self.env, SWITCHBOARD_NODE_NAME=f"node{index + 1}")
        return Server(self.tmp_path, ["--config", str(self.config)], env)

    def wait_formed(self, timeout=15):
        """Every node ready, and every node's `info` listing every node."""
        want = len(self.nodes)
        for node in self.nodes:
            wait_until(lambda: node.get("/readyz")[0] == 200, timeout, what=f"{node.base} ready")
            wait_until(lambda: len(node_names(node)) == want, timeout, what=f"{node.base} sees {want} nodes")

    def kill_node(self, node: Server) -> Server:
        """SIGKILLs `node` and takes it out of `nodes`."""
        node.proc.kill()
        node.proc.wait(timeout=10)
        self.nodes.remove(node)
        self.stopped.append(node)
        return node

    def stop(self):
        for node in self.nodes + self.stopped:
            node.stop(timeout=5)

    def logs(self) -> str:
        return "\n".join(f"--- {n.base}\n{n.read_log()[-4000:]}" for n in self.nodes)


def node_names(node: Server):
    status, body = node.api("info", {})
    if status != 200:
        return []
    return sorted(n["name"] for n in body["result"]["nodes"])


def publish(node: Server, channel: str, data, timeout=5):
    """API publish; returns (status, body)."""
    return node.api("publish", {"channel": channel, "data": data})


def publish_ok(node: Server, channel: str, data) -> dict:
    status, body = publish(node, channel, data)
    assert status == 200 and "result" in body, (status, body)
    return body["result"]


def serves(cluster: Cluster, channel="c:alive", timeout=10):
    """The cluster still serves: every node publishes with history, one client on each node
    gets them all."""
    for node in cluster.nodes:
        wait_until(lambda: node.get("/readyz")[0] == 200, timeout, what=f"{node.base} ready")

    async def check():
        clients = [await Client.open(node, f"alive-{i}") for i, node in enumerate(cluster.nodes)]
        try:
            for c in clients:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        await c.subscribe(channel)
                        break
                    except ReplyError as error:
                        # 100 is temporary: an SDK retries (a pub/sub link may still be in its
                        # reconnect backoff just after the broker came back).
                        if error.code != 100 or time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
            results = []
            for node in cluster.nodes:
                results.append(await asyncio.to_thread(publish_ok, node, channel, {"alive": node.base}))
            last = max(r["offset"] for r in results)
            for c in clients:
                await async_wait_until(lambda: c.offsets(channel) and c.offsets(channel)[-1] >= last,
                                       timeout, what=f"{c.name} gets the liveness publications")
        finally:
            for c in clients:
                await c.close()

    run(check(), timeout + 10)
    return True


# ---- a client-protocol client ----


class ReplyError(Exception):
    def __init__(self, error):
        super().__init__(error)
        self.code = error.get("code")


class Client:
    """One JSON client-protocol connection that answers pings and keeps what it receives:
    publications per channel (a subscribe reply's recovered publications first), every other
    push, and the close code."""

    _ids = itertools.count(1)

    def __init__(self, node: Server, user: str, ws):
        self.node = node
        self.user = user
        self.name = f"{user}@{node.base}"
        self.ws = ws
        self.pending: dict[int, asyncio.Future] = {}
        self.pubs: dict[str, list[dict]] = {}
        self.pushes: list[dict] = []
        self.close_code = None
        self.closed = asyncio.Event()
        self.client_id = None
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, node: Server, user: str, timeout=5) -> "Client":
        ws = await asyncio.wait_for(websockets.connect(f"ws://{node.base}/connection/websocket", max_size=None), timeout)
        client = cls(node, user, ws)
        token = await asyncio.to_thread(node.token, user)
        reply = await client.command("connect", {"token": token, "name": "pytest"}, timeout)
        client.client_id = reply["client"]
        return client

    async def _read(self):
        try:
            async for message in self.ws:
                for line in message.split("\n"):
                    if not line.strip():
                        continue
                    frame = json.loads(line)
                    if frame == {}:
                        await self.ws.send("{}")
                    elif frame.get("id"):
                        future = self.pending.pop(frame["id"], None)
                        if future and not future.done():
                            future.set_result(frame)
                    elif "push" in frame:
                        push = frame["push"]
                        if "pub" in push:
                            self.pubs.setdefault(push["channel"], []).append(push["pub"])
                        else:
                            self.pushes.append(push)
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd else 1006
            self.closed.set()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"closed {self.close_code}"))

    async def command(self, method: str, body: dict, timeout=5) -> dict:
        command_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        await self.ws.send(json.dumps({"id": command_id, method: body}))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise ReplyError(reply["error"])
        return reply.get(method, {})

    async def subscribe(self, channel, recover=False, offset=0, epoch="", timeout=5) -> dict:
        body = {"channel": channel}
        if recover:
            body.update(recover=True, offset=offset, epoch=epoch)
        result = await self.command("subscribe", body, timeout)
        received = self.pubs.setdefault(channel, [])
        # Recovered publications come before any live one (the reply is queued first).
        received[0:0] = result.get("publications", [])
        return result

    async def publish(self, channel, data, timeout=5) -> dict:
        return await self.command("publish", {"channel": channel, "data": data}, timeout)

    def offsets(self, channel) -> list[int]:
        return [p.get("offset", 0) for p in self.pubs.get(channel, [])]

    def data(self, channel) -> list:
        return [p.get("data") for p in self.pubs.get(channel, [])]

    async def wait_closed(self, timeout) -> int:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self):
        if not self.closed.is_set():
            await self.ws.close()
        try:
            await asyncio.wait_for(self.reader, 5)
        except (asyncio.TimeoutError, Exception):
            self.reader.cancel()


class Subscriber:
    """A subscriber that behaves like an SDK: on a close with a reconnect code it reconnects
    (to the next node) and resubscribes with recovery from the last offset and epoch it holds.
    `received` is every publication it ended with, in order; `outcomes` every subscribe
    reply's (was_recovering, recovered); `codes` every close code."""

    def __init__(self, nodes, user, channel, start=0):
        self.nodes = list(nodes)
        self.user = user
        self.channel = channel
        self.turn = start
        self.client = None
        self.received: list[dict] = []
        self.outcomes: list[tuple[bool, bool]] = []
        self.codes: list[int] = []
        self.epoch = ""
        self.offset = 0
        self.task = None
        self.stopping = False
        self.failed = None

    async def start(self):
        await self._connect(recover=False)
        self.task = asyncio.create_task(self._watch())

    async def _connect(self, recover: bool):
        node = self.nodes[self.turn % len(self.nodes)]
        self.turn += 1
        client = await Client.open(node, self.user)
        result = await client.subscribe(self.channel, recover=recover, offset=self.offset, epoch=self.epoch)
        self.outcomes.append((recover, bool(result.get("recovered"))))
        if recover and not result.get("recovered"):
            client.pubs[self.channel] = [p for p in client.pubs[self.channel] if p.get("offset", 0) > result.get("offset", 0)]
        self.epoch = result.get("epoch", "")
        self.offset = result.get("offset", 0)
        self.client = client
        self.taken = 0

    def _take(self):
        pubs = self.client.pubs.get(self.channel, [])
        for pub in pubs[self.taken:]:
            pub["_epoch"] = self.epoch
            self.received.append(pub)
            self.offset = max(self.offset, pub.get("offset", 0))
        self.taken = len(pubs)

    async def _watch(self):
        try:
            while True:
                self._take()
                if self.client.closed.is_set():
                    self._take()
                    if self.stopping:
                        return
                    self.codes.append(self.client.close_code)
                    if self.client.close_code not in RECONNECT_CODES:
                        return
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            await self._connect(recover=True)
                            break
                        except (OSError, ConnectionError, ReplyError, asyncio.TimeoutError, websockets.WebSocketException):
                            if time.monotonic() > deadline:
                                raise
                            await asyncio.sleep(0.2)
                    continue
                await asyncio.sleep(0.01)
        except Exception as error:  # surfaced by the test through `failed`
            self.failed = error

    def offsets(self) -> list[int]:
        if self.client:
            self._take()
        return [p.get("offset", 0) for p in self.received]

    def positions(self) -> list[tuple[str, int]]:
        """(epoch, offset) of every publication received."""
        self.offsets()
        return [(p["_epoch"], p.get("offset", 0)) for p in self.received]

    def describe(self) -> str:
        return (f"{self.user}: positions {self.positions()}, close codes {self.codes}, "
                f"(recovering, recovered) {self.outcomes}, now at {self.epoch}/{self.offset}, "
                f"connection {'closed' if self.client.closed.is_set() else 'open'} on {self.client.node.base}")

    async def stop(self):
        self.stopping = True
        if self.client:
            await self.client.close()
        if self.task:
            await asyncio.wait_for(self.task, 10)
        assert self.failed is None, f"{self.user}: {self.failed!r}"


class Forwarder:
    """A TCP forwarder on a free loopback port to `target_port`; `cut` stops forwarding and
    drops every connection, so what was in flight through it never arrives."""

    def __init__(self, target_port: int):
        import threading
        self.target_port = target_port
        self.port = loopback_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.cut_off = threading.Event()
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while not self.cut_off.is_set():
            try:
                down, _ = self.listener.accept()
                up = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                continue
            self.sockets += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while not self.cut_off.is_set():
                data = source.recv(65536)
                if not data or self.cut_off.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass

    def cut(self):
        self.cut_off.set()
        for s in self.sockets + [self.listener]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
