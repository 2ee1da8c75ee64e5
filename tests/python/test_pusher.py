"""The Pusher door with the `pusher` PyPI server SDK against the release binary: trigger,
trigger_batch and the channel queries; the SDK's channel authorizations used by a real
WebSocket client (`websockets`) on private and presence channels; and the webhooks, received by
a small HTTP server in the test and checked with the SDK's own signature validation, on one
node and on two nodes of a private redis-server (occupancy decided once for the cluster)."""

import asyncio
import http.server
import json
import threading
import time

import pusher
import websockets

from cluster import Broker, Cluster
from conftest import Server

APP_ID = "4242"  # the Python SDK takes numeric app ids only
KEY = "py-app-key"
SECRET = "py-app-secret-0123456789"


class Receiver:
    """A webhook receiver on a free loopback port: keeps each request's headers and body."""

    def __init__(self):
        self.requests = []
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body.decode()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def events(self):
        return [e for _, body in list(self.requests) for e in json.loads(body)["events"]]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_config(tmp_path, webhook_url):
    config = tmp_path / "pusher.toml"
    config.write_text(
        "[pusher]\nwebhook_batch_window = \"200ms\"\n\n"
        f"[[pusher.apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n"
        "client_events = true\n\n"
        f"[[pusher.apps.webhooks]]\nurl = \"{webhook_url}\"\n"
    )
    return config


def start(make_server, tmp_path, webhook_url):
    config = write_config(tmp_path, webhook_url)
    server = make_server(args=["--config", str(config)])
    sdk = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1",
                        port=server.port, ssl=False)
    return server, sdk


def until(check, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Client:
    """A raw Pusher protocol 7 client over `websockets`."""

    def __init__(self, ws, socket_id):
        self.ws = ws
        self.socket_id = socket_id

    @classmethod
    async def open(cls, server):
        ws = await websockets.connect(f"ws://{server.base}/app/{KEY}?protocol=7&client=py&version=1")
        established = json.loads(await ws.recv())
        assert established["event"] == "pusher:connection_established"
        return cls(ws, json.loads(established["data"])["socket_id"])

    async def send(self, event, data, channel=None):
        message = {"event": event, "data": data}
        if channel:
            message["channel"] = channel
        await self.ws.send(json.dumps(message))

    async def next(self, event, channel=None):
        """The next message named `event` (on `channel`), skipping others."""
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if message["event"] == event and (channel is None or message.get("channel") == channel):
                return message

    async def subscribe(self, channel, auth=None):
        data = {"channel": channel, **(auth or {})}
        await self.send("pusher:subscribe", data)
        return await self.next("pusher_internal:subscription_succeeded", channel)


def test_sdk_publishes_queries_and_signs_subscriptions(make_server, tmp_path):
    hooks = Receiver()
    try:
        server, sdk = start(make_server, tmp_path, hooks.url)

        async def scenario():
            ann = await Client.open(server)
            ben = await Client.open(server)
            await ann.subscribe("news")
            # The SDK's authenticate() signs socket_id:channel; the server accepts it.
            await ann.subscribe("private-chat", sdk.authenticate("private-chat", ann.socket_id))
            await ben.subscribe("private-chat", sdk.authenticate("private-chat", ben.socket_id))
            joined = await ann.subscribe("presence-room", sdk.authenticate(
                "presence-room", ann.socket_id, {"user_id": "ann", "user_info": {"name": "Ann"}}))
            assert json.loads(joined["data"])["presence"]["ids"] == ["ann"]
            await ben.subscribe("presence-room", sdk.authenticate(
                "presence-room", ben.socket_id, {"user_id": "ben", "user_info": {"name": "Ben"}}))
            added = await ann.next("pusher_internal:member_added", "presence-room")
            assert json.loads(added["data"]) == {"user_id": "ben", "user_info": {"name": "Ben"}}

            # A forged signature is refused; the connection stays and keeps working.
            await ben.send("pusher:subscribe", {"channel": "private-secret", "auth": f"{KEY}:00"})
            refused = await ben.next("pusher:subscription_error", "private-secret")
            assert refused["data"]["status"] == 401

            sdk.trigger("news", "greet", {"text": "hello"})
            got = await ann.next("greet", "news")
            assert json.loads(got["data"]) == {"text": "hello"}
            sdk.trigger(["news", "private-chat"], "both", "plain text", socket_id=ben.socket_id)
            assert (await ann.next("both", "news"))["data"] == "plain text"
            assert (await ann.next("both", "private-chat"))["data"] == "plain text"
            answer = sdk.trigger_batch([
                {"channel": "news", "name": "batched", "data": {"n": 1}},
                {"channel": "private-chat", "name": "batched", "data": {"n": 2},
                 "info": "subscription_count"},
            ])
            # `info` on a batch's event: its channel's attributes, in the event's place.
            assert answer == {"batch": [{}, {"subscription_count": 2}]}
            assert json.loads((await ann.next("batched", "news"))["data"]) == {"n": 1}
            assert json.loads((await ben.next("batched", "private-chat"))["data"]) == {"n": 2}

            info = sdk.channels_info(prefix_filter="presence-", attributes=["user_count"])
            assert info == {"channels": {"presence-room": {"user_count": 2}}}
            assert set(sdk.channels_info()["channels"]) == {"news", "private-chat", "presence-room"}
            one = sdk.channel_info("private-chat", ["subscription_count"])
            assert one == {"occupied": True, "subscription_count": 2}
            assert sorted(u["id"] for u in sdk.users_info("presence-room")["users"]) == ["ann", "ben"]

            # A client event reaches the other subscriber and the client_event webhook.
            await ben.send("client-typing", {"who": "ben"}, channel="private-chat")
            typed = await ann.next("client-typing", "private-chat")
            # Sent as an object, passed on as the client sent it.
            assert typed["data"] == {"who": "ben"}
            await ben.ws.close()
            removed = await ann.next("pusher_internal:member_removed", "presence-room")
            assert json.loads(removed["data"]) == {"user_id": "ben"}
            await ann.ws.close()
            return ben.socket_id

        ben_socket = asyncio.run(scenario())
        until(lambda: sum(e["name"] == "channel_vacated" for e in hooks.events()) == 3,
              "the three channels vacated")
        for headers, body in hooks.requests:
            # The SDK checks the key, the HMAC-SHA256 signature and that time_ms is recent.
            assert sdk.validate_webhook(headers["x-pusher-key"], headers["x-pusher-signature"], body)
            assert sdk.validate_webhook(KEY, "0" * 64, body) is None
        events = hooks.events()
        names = lambda name: [e for e in events if e["name"] == name]
        assert sorted(e["channel"] for e in names("channel_occupied")) == ["news", "presence-room", "private-chat"]
        assert [(e["channel"], e["user_id"]) for e in names("member_added")] == [("presence-room", "ann"), ("presence-room", "ben")]
        assert [e["user_id"] for e in names("member_removed")] == ["ben", "ann"]
        [client_event] = names("client_event")
        assert client_event == {"name": "client_event", "channel": "private-chat", "event": "client-typing",
                                "data": json.dumps({"who": "ben"}),
                                "socket_id": ben_socket}
        # Still serving after all of it.
        assert server.get("/healthz")[0] == 200
    finally:
        hooks.close()


class PusherCluster(Cluster):
    """Cluster nodes serving the Pusher app of `config` (instead of the cluster tests' namespace)."""

    def __init__(self, broker, tmp_path, config, nodes=2):
        self.pusher_config = config
        super().__init__(broker, tmp_path, nodes)

    def start_node(self, index):
        env = dict(self.env, SWITCHBOARD_NODE_NAME=f"node{index + 1}")
        return Server(self.tmp_path, ["--config", str(self.pusher_config)], env)


def test_occupancy_webhooks_are_decided_once_for_a_two_node_cluster(tmp_path):
    # One public channel with a subscriber on each node of a private redis-server: one
    # channel_occupied when the first arrives (on any node) and one channel_vacated when the
    # last leaves, however the subscribers are spread. A node's webhooks go out in the order it
    # decided them, so an occupancy event on a marker channel, decided on the same node after
    # the step under test, proves that step sent nothing it should not have.
    hooks = Receiver()
    broker = Broker("redis", tmp_path)
    cluster = None
    try:
        cluster = PusherCluster(broker, tmp_path, write_config(tmp_path, hooks.url))
        node_a, node_b = cluster.nodes

        def count(name, channel):
            return sum(e["name"] == name and e["channel"] == channel for e in hooks.events())

        async def arrived(name, channel):
            deadline = time.monotonic() + 10
            while count(name, channel) == 0:
                assert time.monotonic() < deadline, f"no {name} for {channel}"
                await asyncio.sleep(0.05)

        async def scenario():
            ann = await Client.open(node_a)
            ben = await Client.open(node_b)
            await ann.subscribe("news")
            await arrived("channel_occupied", "news")
            # The second node's first subscriber: the channel is occupied already.
            await ben.subscribe("news")
            await ben.subscribe("marker-b")
            await arrived("channel_occupied", "marker-b")
            assert count("channel_occupied", "news") == 1
            # The first node's last subscriber leaves; the other node still has one.
            await ann.send("pusher:unsubscribe", {"channel": "news"})
            await ann.subscribe("marker-a")
            await arrived("channel_occupied", "marker-a")
            assert count("channel_vacated", "news") == 0
            # The last one in the cluster leaves.
            await ben.send("pusher:unsubscribe", {"channel": "news"})
            await arrived("channel_vacated", "news")
            await ann.ws.close()
            await ben.ws.close()

        asyncio.run(scenario())
        until(lambda: count("channel_vacated", "marker-a") == 1 and count("channel_vacated", "marker-b") == 1,
              "the markers vacated")
        assert count("channel_occupied", "news") == 1
        assert count("channel_vacated", "news") == 1
        sdk = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1", port=node_a.port, ssl=False)
        for headers, body in hooks.requests:
            assert sdk.validate_webhook(headers["x-pusher-key"], headers["x-pusher-signature"], body)
        # Both nodes still serve.
        assert node_a.get("/healthz")[0] == 200 and node_b.get("/healthz")[0] == 200
    finally:
        if cluster:
            cluster.stop()
        broker.stop()
        hooks.close()
