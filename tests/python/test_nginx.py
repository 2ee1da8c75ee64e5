"""Real nginx (Debian package) with the shipped deploy/nginx/switchboard.conf, changed only in
its listen port and upstream servers, on a loopback port in front of two Switchboard nodes
sharing a private Redis: WebSocket traffic through it, the client's address passed on in
X-Forwarded-For, an nginx reload with clients connected, and one node stopped with SIGTERM
while its clients reconnect through nginx and recover every publication.

nginx runs in the foreground (`daemon off`) so its master is the process the test started,
reloaded with SIGHUP and stopped by its pid; its temporary files and logs stay in tmp_path."""

import asyncio
import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import websockets

from cluster import (Broker, Client, Cluster, Subscriber, async_wait_until, loopback_port, publish_ok,
                     require, run, wait_until)
from conftest import API_KEY, ROOT

SHIPPED = ROOT / "deploy" / "nginx" / "switchboard.conf"
CHANNEL = "c:nginx"


def templated(text: str, port: int, upstreams) -> str:
    """The shipped file with only the listen port and the upstream servers replaced."""
    servers = re.findall(r"^    server 10\.0\.0\.\d+:8000([^;]*);$", text, flags=re.M)
    assert len(servers) == 3, "the shipped upstream block changed shape; update the template"
    options = servers[0]
    lines = "\n".join(f"    server {address}{options};" for address in upstreams)
    text = re.sub(r"(^    server 10\.0\.0\.\d+:8000[^;]*;\n)+", lines + "\n", text, flags=re.M)
    text, listens = re.subn(r"^    listen 80;$", f"    listen 127.0.0.1:{port};", text, flags=re.M)
    assert listens == 1
    return text


class Nginx:
    def __init__(self, tmp_path: Path, upstreams):
        binary = require("nginx")
        self.port = loopback_port()
        self.dir = tmp_path / "nginx"
        self.dir.mkdir()
        (self.dir / "switchboard.conf").write_text(templated(SHIPPED.read_text(), self.port, upstreams))
        # nginx.conf's own part, as docs/operations.md advises: worker_shutdown_timeout bounds
        # how long a reload's old workers keep their WebSockets (5 s here to keep the test short).
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log notice;
worker_shutdown_timeout 5s;
events {{ worker_connections 1024; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {self.dir}/client_body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    include {self.dir}/switchboard.conf;
}}
""")
        check = subprocess.run([binary, "-t", "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                                "-c", str(self.dir / "nginx.conf")], capture_output=True, text=True, timeout=20)
        assert check.returncode == 0, check.stderr
        self.log = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen([binary, "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                                      "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
                                     stdout=self.log, stderr=self.log)
        try:
            wait_until(lambda: self.get("/readyz")[0] == 200, 10, what="nginx answering")
        except BaseException:
            self.stop()
            raise

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path):
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(self.dir / 'error.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{self.base}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def workers(self) -> set:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return set(children)

    def reload(self):
        before = self.workers()
        self.proc.send_signal(signal.SIGHUP)
        # The new worker is started; the old one goes once its connections are closed.
        wait_until(lambda: self.workers() - before, 10, what="nginx's new worker")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: closes every connection
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


class Via:
    """nginx seen as a node by the cluster helpers' clients: they connect to its address and
    get their tokens from a node."""

    def __init__(self, nginx: Nginx, node):
        self.base = nginx.base
        self.node = node

    def token(self, user):
        return self.node.token(user)


def contiguous(offsets):
    return offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True


def test_websockets_through_nginx_survive_a_reload_and_a_node_stopped_with_sigterm(tmp_path):
    started = []
    try:
        redis = Broker("redis", tmp_path)
        started.append(redis)
        # The nodes trust nginx (loopback) to name the client in X-Forwarded-For; a drain long
        # enough to see clients leave and land on the other node.
        cluster = Cluster(redis, tmp_path, nodes=2, env={
            "SWITCHBOARD_TRUSTED_PROXIES": "127.0.0.1",
            "SWITCHBOARD_SHUTDOWN_DRAIN": "3s",
        })
        started.append(cluster)
        first, second = cluster.nodes
        nginx = Nginx(tmp_path, [n.base for n in cluster.nodes])
        started.append(nginx)
        via = Via(nginx, second)

        # The operations endpoints outside the doors stay private to the nodes.
        assert nginx.get("/metrics")[0] == 404

        asyncio_result = run(scenario(nginx, via, cluster), 120)
        subscribers, acked = asyncio_result

        for s in subscribers:
            positions = s.positions()
            offsets = [offset for _, offset in positions]
            assert len(set(positions)) == len(positions), f"duplicates: {s.describe()}"
            assert contiguous(offsets), s.describe()
            if s.user != "after-reload":
                assert offsets[0] == 1, s.describe()
            missing = [offset for offset in acked if offset >= offsets[0] and offset not in offsets]
            assert not missing, f"{s.user} lost {missing}: {s.describe()}"
            # Every reconnection recovered (no unrecovered resubscribe).
            assert all(recovered for recovering, recovered in s.outcomes if recovering), s.describe()
        # The subscribers on the old worker were cut by the reload and came back; those on the
        # stopped node were told to go (3001 on the client protocol) and came back.
        assert all(s.codes for s in subscribers if s.user != "after-reload"), [s.describe() for s in subscribers]
        told_to_go = [s for s in subscribers if 3001 in s.codes or 1001 in s.codes]
        assert told_to_go, "no subscriber was on the stopped node: " + "; ".join(s.describe() for s in subscribers)
        assert first.proc.returncode == 0, "the stopped node drained and exited 0"

        # The client's own address reached the node through X-Forwarded-For.
        wait_until(lambda: any(e.get("event") == "connected" and e.get("ip") == "127.0.0.3"
                               for n in cluster.nodes + cluster.stopped for e in n.log_events()),
                   5, what="a node logging the client's address")
        # nginx still serves.
        assert nginx.get("/readyz")[0] == 200
    finally:
        for thing in reversed(started):
            thing.stop()


async def scenario(nginx: Nginx, via: Via, cluster: Cluster):
    first, second = cluster.nodes

    # A plain room through nginx, from a distinct client address (127.0.0.3): nginx puts it in
    # X-Forwarded-For, and the node, trusting nginx, logs it as the client.
    room_url = f"ws://{nginx.base}/ws/chat/lobby?token={second.token('plain')}"
    async with websockets.connect(room_url, local_addr=("127.0.0.3", 0)) as a, websockets.connect(room_url) as b:
        await a.send("through nginx")
        assert await asyncio.wait_for(b.recv(), 5) == "through nginx"
        assert await asyncio.wait_for(a.recv(), 5) == "through nginx"

    # Client-protocol subscribers through nginx (least_conn spreads them over both nodes).
    subscribers = [Subscriber([via], f"s{i}", CHANNEL) for i in range(6)]
    for s in subscribers:
        await s.start()
    on_first = await asyncio.to_thread(clients_on, first)
    assert on_first >= 1, "nginx sent no subscriber to the first node"

    acked = []
    publishing = asyncio.Event()
    publishing.set()

    async def publisher():
        n = 0
        while publishing.is_set():
            result = await asyncio.to_thread(publish_ok, second, CHANNEL, {"n": n})
            acked.append(result["offset"])
            n += 1
            await asyncio.sleep(0.02)

    task = asyncio.create_task(publisher())
    try:
        # Publications through nginx's API location too.
        for n in range(3):
            status, body = await asyncio.to_thread(api_via, nginx, second, CHANNEL, {"via": "nginx", "n": n})
            assert status == 200, body
            acked.append(body["result"]["offset"])
        await asyncio.sleep(0.5)

        # Reload with clients connected: the new worker takes new connections at once; the old
        # one keeps its WebSockets until worker_shutdown_timeout, then closes them and they
        # reconnect (through the new worker) and recover.
        nginx.reload()
        late = Subscriber([via], "after-reload", CHANNEL)
        await late.start()
        subscribers.append(late)
        await asyncio.sleep(6)  # past worker_shutdown_timeout (5 s)

        # SIGTERM to the first node: its clients are told to go (3001 / 1001), come back
        # through nginx (which skips the draining node's 503), land on the second node and
        # recover from Redis.
        first.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.proc.wait, 15)
        cluster.nodes.remove(first)
        cluster.stopped.append(first)
        await asyncio.sleep(1)
    finally:
        publishing.clear()
        await task

    last = max(acked)
    for s in subscribers:
        await async_wait_until(lambda s=s: s.failed or (s.offsets() and s.offsets()[-1] >= last), 20,
                               what=f"{s.user} reaching {last}")
        assert s.failed is None, s.describe()
    for s in subscribers:
        await s.stop()
    return subscribers, acked


def clients_on(node) -> int:
    status, body = node.api("info", {})
    assert status == 200
    return sum(n["num_clients"] for n in body["result"]["nodes"] if n["name"] == "node1")


def api_via(nginx: Nginx, node, channel, data):
    """An API publish through nginx's /api/ location."""
    request = urllib.request.Request(
        f"http://{nginx.base}/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
