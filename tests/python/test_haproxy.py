"""Real HAProxy (Debian package) with the shipped deploy/haproxy/haproxy.cfg: `haproxy -c`
accepts it as shipped, and run with only its bind port and server addresses changed it
carries WebSocket traffic (a plain room, the client protocol) and API calls to a node, passes
the client's address in X-Forwarded-For, and keeps /metrics to the nodes. The nginx test
(test_nginx.py) is the one that stops a node under load; this one is lighter.

HAProxy runs in the foreground (`-db`) and is stopped by its pid."""

import asyncio
import json
import re
import signal
import subprocess
import urllib.request

import websockets

from cluster import CONFIG, Client, loopback_port, require, run, wait_until
from conftest import API_KEY, ROOT, Server

SHIPPED = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def templated(text: str, port: int, upstreams) -> str:
    """The shipped file with only the bind port and the server lines replaced."""
    text, binds = re.subn(r"^    bind :80$", f"    bind 127.0.0.1:{port}", text, flags=re.M)
    assert binds == 1
    lines = "\n".join(f"    server node{i + 1} {address}" for i, address in enumerate(upstreams))
    text, blocks = re.subn(r"(^    server node\d 10\.0\.0\.\d+:8000\n)+", lines + "\n", text, flags=re.M)
    assert blocks == 2, "the shipped backends changed shape; update the template"
    return text


def test_haproxy_checks_the_shipped_config():
    haproxy = require("haproxy")
    out = subprocess.run([haproxy, "-c", "-f", str(SHIPPED)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Configuration file is valid" in out.stdout + out.stderr


def test_websockets_and_the_api_through_haproxy(tmp_path):
    haproxy = require("haproxy")
    config_file = tmp_path / "node.toml"
    config_file.write_text(CONFIG)
    node = Server(tmp_path, ["--config", str(config_file)], {"SWITCHBOARD_TRUSTED_PROXIES": "127.0.0.1"})
    proc = None
    log = open(tmp_path / "haproxy.log", "wb")
    try:
        port = loopback_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(templated(SHIPPED.read_text(), port, [node.base]))
        proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=log)
        base = f"127.0.0.1:{port}"

        def get(path):
            if proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {(tmp_path / 'haproxy.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{base}{path}", timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        wait_until(lambda: get("/readyz") == 200, 10, what="haproxy answering")
        assert get("/metrics") == 404
        assert get("/anything-else") == 404

        class Via:
            def __init__(self):
                self.base = base

            def token(self, user):
                return node.token(user)

        async def scenario():
            room = f"ws://{base}/ws/chat/lobby?token={node.token('plain')}"
            async with websockets.connect(room, local_addr=("127.0.0.3", 0)) as a, websockets.connect(room) as b:
                await a.send("through haproxy")
                assert await asyncio.wait_for(b.recv(), 5) == "through haproxy"
            client = await Client.open(Via(), "proto")
            try:
                await client.subscribe("c:haproxy")
                await client.publish("c:haproxy", {"n": 1})
                status = await asyncio.to_thread(api_publish, base, "c:haproxy", {"n": 2})
                assert status == 200
                await asyncio.wait_for(_until(lambda: client.data("c:haproxy") == [{"n": 1}, {"n": 2}]), 5)
            finally:
                await client.close()

        run(scenario(), 30)
        # The client's own address reached the node through X-Forwarded-For (info lines are
        # written in batches: poll the log).
        wait_until(lambda: any(e.get("event") == "connected" and e.get("ip") == "127.0.0.3" for e in node.log_events()),
                   5, what="the node logging the client's address")
        assert node.get("/readyz")[0] == 200
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        node.stop()


def api_publish(base, channel, data) -> int:
    """An API publish through HAProxy."""
    request = urllib.request.Request(
        f"http://{base}/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.status


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.02)
