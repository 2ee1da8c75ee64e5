"""Traces (docs/operations.md, Traces): two `switchboard serve` nodes joined by a private Redis or
NATS export their spans over OTLP/HTTP (JSON bodies) to a small receiver this test runs on a free
loopback port. A publish shows up as one trace: the API call's span, its broker-publish span
under it, and one fan-out span under that on each node; a client's publish hangs under its
connection's handshake span. Span trace ids are the ids the logs and `X-Trace-ID` show. With
traces off, nothing reaches the receiver and the node serves as before.

The nodes are stopped with SIGTERM before the spans are read: shutdown sends the last batch, so
the test waits on that, not on the exporter's schedule."""

import asyncio
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cluster import BROKERS, CONFIG, Broker, Client, Cluster, HookBackend, async_wait_until, loopback_port, run, wait_until
from conftest import API_KEY, Server

GIVEN_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
GIVEN_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP traces endpoint: keeps every span of every JSON export it is sent."""

    def __init__(self):
        self.requests = []
        self.spans = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append((self.path, self.headers.get("Content-Type"), body))
                    if self.path == "/v1/traces":
                        receiver.spans.extend(spans_of(json.loads(body)))
                reply = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.port = loopback_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def value_of(any_value: dict):
    for key in ("stringValue", "intValue", "boolValue", "doubleValue"):
        if key in any_value:
            return int(any_value[key]) if key == "intValue" else any_value[key]
    return None


def attributes(items) -> dict:
    return {a["key"]: value_of(a.get("value", {})) for a in items or []}


def spans_of(export: dict) -> list[dict]:
    """The spans of one OTLP JSON export, each with its resource's attributes."""
    out = []
    for resource_spans in export.get("resourceSpans", []):
        resource = attributes(resource_spans.get("resource", {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                out.append({
                    "name": span["name"],
                    "trace": span["traceId"].lower(),
                    "id": span["spanId"].lower(),
                    "parent": (span.get("parentSpanId") or "").lower(),
                    "kind": span.get("kind"),
                    "attrs": attributes(span.get("attributes")),
                    "node": resource.get("service.instance.id"),
                    "service": resource.get("service.name"),
                })
    return out


def post_publish(node: Server, channel: str, data, headers=None):
    """API publish; returns (status, body, X-Trace-ID of the response)."""
    request = urllib.request.Request(
        f"http://{node.base}/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.status, json.loads(r.read()), r.headers["X-Trace-ID"]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def traced_env(receiver: Receiver) -> dict:
    return {
        "SWITCHBOARD_TRACES_ENABLED": "true",
        "SWITCHBOARD_TRACES_ENDPOINT": receiver.endpoint,
        "SWITCHBOARD_TRACES_PROTOCOL": "http/json",
    }


def one(spans, what, **match):
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (what, match, found)
    return found[0]


@pytest.mark.parametrize("kind", BROKERS)
def test_a_publish_is_one_trace_from_the_api_through_the_broker_to_each_nodes_fan_out(tmp_path, receiver, kind):
    broker = Broker(kind, tmp_path)
    cluster = None
    try:
        cluster = Cluster(broker, tmp_path, nodes=2, env=traced_env(receiver))
        node1, node2 = cluster.nodes
        channel = "c:traced"

        async def scenario():
            a = await Client.open(node1, "alice")
            b = await Client.open(node2, "bob")
            try:
                await a.subscribe(channel)
                await b.subscribe(channel)
                # 1. An API call with no trace headers: its trace id is the one it is told.
                status, body, generated = await asyncio.to_thread(post_publish, node1, channel, {"n": 1})
                assert status == 200 and body["result"]["offset"] == 1, body
                # 2. An API call that continues a caller's trace.
                parent = f"00-{GIVEN_TRACE}-{GIVEN_SPAN}-01"
                status, body, given = await asyncio.to_thread(post_publish, node2, channel, {"n": 2}, {"traceparent": parent})
                assert status == 200 and given == GIVEN_TRACE, (body, given)
                # 3. Bad input: a malformed traceparent is ignored, the call still served.
                status, body, bad = await asyncio.to_thread(post_publish, node1, channel, {"n": 3}, {"traceparent": "00-zz-yy-01"})
                assert status == 200 and len(bad) == 32, (body, bad)
                # 4. A client's own publish.
                await b.publish(channel, {"n": 4})
                for c in (a, b):
                    await async_wait_until(lambda: len(c.data(channel)) == 4, 10, what=f"{c.name} gets all four")
                    assert [d["n"] for d in c.data(channel)] == [1, 2, 3, 4]
                return generated, bad
            finally:
                await a.close()
                await b.close()

        generated, bad = run(scenario())
        # SIGTERM: each node sends its last batch before it exits.
        for node in cluster.nodes:
            assert node.stop(timeout=15) == 0, node.read_log()[-3000:]
        spans = receiver.spans
        assert spans, f"no span received; requests: {receiver.requests!r}"
        assert all(s["service"] == "switchboard" for s in spans)
        assert all(ctype == "application/json" for _, ctype, _ in receiver.requests)

        def path_of(trace, api_node, api_parent):
            api = one(spans, "the API span", trace=trace, name="api publish")
            assert api["parent"] == api_parent and api["node"] == api_node, api
            assert api["attrs"]["http.response.status_code"] == 200, api
            pub = one(spans, "the broker-publish span", trace=trace, name="broker publish")
            assert pub["parent"] == api["id"] and pub["node"] == api_node, pub
            assert pub["attrs"]["messaging.system"] == kind, pub
            fan = [s for s in spans if s["trace"] == trace and s["name"] == "fan-out"]
            assert sorted(s["node"] for s in fan) == ["node1", "node2"], fan
            for s in fan:
                assert s["parent"] == pub["id"], (s, pub)
                assert s["attrs"]["switchboard.subscribers"] == 1, s
                assert s["attrs"]["messaging.destination.name"] == channel, s
            # Nothing else in the trace: no span per delivery.
            assert len([s for s in spans if s["trace"] == trace]) == 4

        path_of(generated, "node1", "")
        path_of(GIVEN_TRACE, "node2", GIVEN_SPAN)
        path_of(bad, "node1", "")

        # The connections' handshakes: server spans whose trace ids are the logs' trace_id.
        for node, name, user in ((node1, "node1", "alice"), (node2, "node2", "bob")):
            connected = [e for e in node.log_events() if e.get("event") == "connected"]
            assert len(connected) == 1, connected
            trace = connected[0]["trace_id"]
            handshake = one(spans, f"{user}'s handshake", trace=trace, name="handshake")
            assert handshake["node"] == name and handshake["parent"] == "", handshake
            assert handshake["attrs"]["http.response.status_code"] == 101, handshake
        # Bob's publish: under his connection's handshake, fanned out on both nodes.
        bob_trace = [e for e in node2.log_events() if e.get("event") == "connected"][0]["trace_id"]
        handshake = one(spans, "bob's handshake", trace=bob_trace, name="handshake")
        pub = one(spans, "bob's broker publish", trace=bob_trace, name="broker publish")
        assert pub["parent"] == handshake["id"] and pub["node"] == "node2"
        fan = [s for s in spans if s["trace"] == bob_trace and s["name"] == "fan-out"]
        assert sorted(s["node"] for s in fan) == ["node1", "node2"] and all(s["parent"] == pub["id"] for s in fan)
    finally:
        if cluster is not None:
            cluster.stop()
        broker.stop()


def single_node(tmp_path, env) -> Server:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG)
    return Server(tmp_path, ["--config", str(config)], env)


def test_on_the_memory_broker_the_fan_out_hangs_under_the_publish_in_one_process(tmp_path, receiver):
    node = single_node(tmp_path, {**traced_env(receiver), "SWITCHBOARD_NODE_NAME": "solo"})
    try:
        async def scenario():
            a = await Client.open(node, "alice")
            try:
                await a.subscribe("c:solo")
                status, body, trace = await asyncio.to_thread(post_publish, node, "c:solo", {"n": 1})
                assert status == 200, body
                await async_wait_until(lambda: a.data("c:solo") == [{"n": 1}], 5, what="the publication arrives")
                return trace
            finally:
                await a.close()

        trace = run(scenario())
        assert node.stop(timeout=15) == 0
        spans = [s for s in receiver.spans if s["trace"] == trace]
        api = one(spans, "the API span", name="api publish")
        pub = one(spans, "the broker publish", name="broker publish", parent=api["id"])
        assert pub["attrs"]["messaging.system"] == "memory"
        fan = one(spans, "the fan-out", name="fan-out", parent=pub["id"], node="solo")
        assert fan["attrs"]["switchboard.subscribers"] == 1 and len(spans) == 3
    finally:
        node.stop()


def test_with_traces_off_nothing_is_exported_and_the_node_serves(tmp_path, receiver):
    # The endpoint is set, only `enabled` is not: the node must not send a thing.
    node = single_node(tmp_path, {"SWITCHBOARD_TRACES_ENDPOINT": receiver.endpoint})
    try:

        async def scenario():
            a = await Client.open(node, "alice")
            try:
                await a.subscribe("c:solo")
                status, body, trace = await asyncio.to_thread(
                    post_publish, node, "c:solo", {"n": 1}, {"traceparent": f"00-{GIVEN_TRACE}-{GIVEN_SPAN}-01"})
                assert status == 200, body
                # The log id still follows the caller's traceparent, as before traces existed.
                assert trace == GIVEN_TRACE
                await async_wait_until(lambda: a.data("c:solo") == [{"n": 1}], 5, what="the publication arrives")
            finally:
                await a.close()

        run(scenario())
        assert node.stop(timeout=15) == 0
        assert not any(e.get("event") == "traces" for e in node.log_events())
        assert receiver.requests == [], receiver.requests
    finally:
        node.stop()


def test_an_unreachable_collector_costs_the_clients_nothing(tmp_path):
    port = loopback_port()  # nothing listens there
    node = single_node(tmp_path, {"SWITCHBOARD_TRACES_ENABLED": "true",
                                  "SWITCHBOARD_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces"})
    try:
        async def scenario():
            a = await Client.open(node, "alice")
            try:
                await a.subscribe("c:solo")
                for n in range(3):
                    status, body, _ = await asyncio.to_thread(post_publish, node, "c:solo", {"n": n})
                    assert status == 200, body
                await async_wait_until(lambda: len(a.data("c:solo")) == 3, 5, what="the publications arrive")
            finally:
                await a.close()

        run(scenario())
        assert any(e.get("event") == "traces" for e in node.log_events())
        wait_until(lambda: node.get("/readyz")[0] == 200, 5, what="still ready")
        assert node.stop(timeout=20) == 0
    finally:
        node.stop()


def test_a_hook_call_is_a_client_span_under_the_handshake_and_sends_its_traceparent(tmp_path, receiver):
    import websockets

    backend = HookBackend()
    config = tmp_path / "hooked.toml"
    config.write_text(f'[hooks.connect]\nurl = "{backend.url}"\n')
    node = Server(tmp_path, ["--config", str(config)], {**traced_env(receiver), "SWITCHBOARD_NODE_NAME": "hooked"})
    try:
        async def scenario():
            async with websockets.connect(f"ws://{node.base}/connection/websocket", open_timeout=5) as ws:
                trace = ws.response.headers["X-Trace-ID"]
                await ws.send(json.dumps({"id": 1, "connect": {}}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert reply["connect"]["client"], reply
                return trace

        trace = run(scenario())
        assert node.stop(timeout=15) == 0
        spans = [s for s in receiver.spans if s["trace"] == trace]
        handshake = one(spans, "the handshake span", name="handshake")
        hook = one(spans, "the hook's span", name="hook connect", parent=handshake["id"])
        assert hook["attrs"]["switchboard.hook.result"] == "ok", hook
        assert hook["attrs"]["url.full"] == backend.url, hook
        # The backend was told the hook span's context, so its own spans join the trace.
        assert backend.traceparents == [f"00-{trace}-{hook['id']}-01"], backend.traceparents
    finally:
        node.stop()
        backend.stop()
