"""The shipped Prometheus rules and Grafana dashboard against a real Prometheus (Debian package)
scraping real nodes: `promtool check rules` / `check config` / `test rules` pass, and every
dashboard panel's query and every alert expression returns data from a single node on the
memory broker and a three-node cluster on Redis, so no panel or alert names a metric that
does not exist.

An alert expression is a condition (`up == 0`) that is empty while all is well; it is
evaluated with each comparison made a `bool` one (`up == bool 0`), which keeps every series
the condition looks at, so "returns data" means "the series it tests exist". Its firing is
what `promtool test rules` (deploy/prometheus/switchboard-alerts.test.yml) shows.

Prometheus runs on its own free loopback port with a configuration made from the shipped
deploy/prometheus/prometheus.yml (only targets, intervals and the rule file's path changed),
and every process is stopped by its pid."""

import asyncio
import json
import math
import re
import select
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import websockets
import yaml

from cluster import CONFIG, Broker, Client, Cluster, HookBackend, loopback_port, require, run, wait_until
from conftest import ROOT, Server

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "switchboard-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "switchboard-alerts.test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "switchboard.json"

# Exported only by a node with backend hooks configured: the main test's nodes have none, so
# their queries are checked there to be valid PromQL only; the hooks test below gives them data.
HOOK_METRICS = {
    "switchboard_hook_duration_seconds",
    "switchboard_hook_calls_total",
    "switchboard_hook_breaker_state",
    "switchboard_hook_breaker_transitions_total",
}

# A connection limit, so the "near the limit" alert and panel have a limit to compare with.
NODE_LIMITS = {"SWITCHBOARD_MAX_CONNECTIONS": "200"}
# The single node's pending bound is small, so the test can make it close sockets
# (switchboard_pending_closed_total).
PENDING_PER_IP = 4


def promtool() -> str:
    return require("promtool")


def run_promtool(*args) -> str:
    out = subprocess.run([promtool(), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def alert_rules():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_queries():
    """(panel title, expr) of every target of every panel, rows' nested panels included."""
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends: its interval and template variables replaced as in a live view with
    every node selected."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            .replace("$job", "switchboard").replace("$instance", ".*"))


COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)")


def with_bool_comparisons(expr: str) -> str:
    """`a > 0.5 and b == 0` → `a > bool 0.5 and b == bool 0`: outside label matchers (braces)
    and strings only, so `{code!="1000"}` is left as it is."""
    out, depth, quote, i = [], 0, None, 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(expr):
                out.append(expr[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
            out.append(ch)
        elif ch == "{":
            depth += 1
            out.append(ch)
        elif ch == "}":
            depth -= 1
            out.append(ch)
        elif depth == 0 and (m := COMPARISON.match(expr, i)):
            rest = expr[m.end():].lstrip()
            out.append(m.group(1) if rest.startswith("bool") else m.group(1) + " bool")
            i = m.end()
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def names_in(expr: str) -> set:
    return set(re.findall(r"\b(switchboard_[a-z_]+?)(?:_bucket|_count|_sum)?\b", expr))


class Prometheus:
    """A real `prometheus` on a free loopback port, with its own data directory."""

    def __init__(self, tmp_path: Path, config: dict):
        binary = require("prometheus")
        self.port = loopback_port()
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        config_path = self.dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log)
        try:
            wait_until(self.ready, 30, interval=0.2, what="prometheus ready")
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.read_log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
        return body

    def query(self, expr: str) -> list:
        body = self.api("query", query=expr)
        assert body.get("status") == "success", f"{expr!r} is refused by Prometheus: {body}"
        return body["data"]["result"]

    def read_log(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def test_promtool_checks_the_config_and_rules_and_the_alerts_fire_as_specified():
    out = run_promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out, out
    out = run_promtool("check", "config", str(SCRAPE_CONFIG))
    assert "SUCCESS" in out, out
    # Each alert fires on its series after its `for`, quiet on a healthy neighbour.
    out = run_promtool("test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out, out
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert has a unit test"


def test_the_bool_rewrite_keeps_label_matchers():
    assert with_bool_comparisons('a{code!="1000"} > 0.5 and b == 0') == 'a{code!="1000"} > bool 0.5 and b == bool 0'
    assert with_bool_comparisons("x >= bool 1") == "x >= bool 1"


async def traffic(single, cluster_nodes):
    """Publications (API and client), deliveries, a plain room, refused upgrades and
    disconnects, on every node."""
    nodes = [single, *cluster_nodes]
    clients = []
    rounds = 5
    try:
        for i, node in enumerate(nodes):
            client = await Client.open(node, f"watcher-{i}")
            await client.subscribe("c:metrics")
            clients.append(client)
        for round_ in range(rounds):
            for i, node in enumerate(nodes):
                status, _ = await asyncio.to_thread(node.api, "publish", {"channel": "c:metrics", "data": {"n": round_}})
                assert status == 200
                await clients[i].publish("c:metrics", {"from": i, "n": round_})
        room = await websockets.connect(f"ws://{single.base}/ws/chat/room?token={single.token('plain')}")
        await room.send("hello")
        assert await asyncio.wait_for(room.recv(), 5) == "hello"
        await room.close()
        # Refused: no token (switchboard_handshake_rejections_total, switchboard_auth_failures_total).
        for node in nodes:
            try:
                await websockets.connect(f"ws://{node.base}/ws/chat/room")
                raise AssertionError("an upgrade without a token was accepted")
            except websockets.InvalidStatus as refused:
                assert refused.response.status_code == 401
        # The single node's subscriber gets its own node's publications (API and client), the
        # cluster's get every cluster node's.
        await asyncio.wait_for(_until(lambda: len(clients[0].pubs.get("c:metrics", [])) >= rounds * 2), 10)
        for client in clients[1:]:
            want = rounds * 2 * len(cluster_nodes)
            await asyncio.wait_for(_until(lambda c=client: len(c.pubs.get("c:metrics", [])) >= want), 10)
    finally:
        for client in clients:
            await client.close()


def over_the_pending_bound(single):
    """Opens more silent sockets than the single node's per-IP pending bound: those past it
    are closed by the node long before its 10 s handshake timeout could close any, and the
    node counts them. Done before Prometheus starts, so no scrape meets the full bound."""
    sockets = [socket.create_connection(("127.0.0.1", single.port), timeout=5) for _ in range(PENDING_PER_IP * 2)]
    try:
        # Which ones are closed is the accept order's business; how many is the bound's. A
        # loaded machine may take a moment to accept them all, so wait (well inside the
        # handshake timeout) rather than look once.
        # The node may not yet have seen the close of the harness' own /healthz probe, which
        # then still holds one of the address's places: one more socket is closed.
        excess = len(sockets) - PENDING_PER_IP
        closed = _closed_within(sockets, excess=excess, seconds=5)
        assert excess <= closed <= excess + 1, (
            f"{closed} of {len(sockets)} silent sockets closed by the node, "
            f"want the {excess} past the bound of {PENDING_PER_IP} (one more if the probe's "
            f"place was not yet free); log: {single.read_log()[-2000:]}"
        )
    finally:
        for s in sockets:
            s.close()
    status, text = single.get("/metrics")
    assert status == 200
    assert re.search(r'switchboard_pending_closed_total\{reason="per_ip"\} [1-9]', text), \
        "the node counts the sockets it closed past the per-IP bound"


def _closed_within(sockets, excess, seconds) -> int:
    """How many of `sockets` the peer has closed, waiting up to `seconds` for `excess` of them."""
    closed = set()
    deadline = time.monotonic() + seconds
    while len(closed) < excess and time.monotonic() < deadline:
        waiting = [s for s in sockets if s not in closed]
        readable, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            try:
                if sock.recv(1) == b"":
                    closed.add(sock)
            except ConnectionResetError:
                closed.add(sock)
    # Anything else closed meanwhile (there should be none) is counted too, so a node that
    # closes too many fails as clearly as one that closes too few.
    for sock in sockets:
        if sock not in closed:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                closed.add(sock)
    return len(closed)


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.02)


def test_every_dashboard_query_and_alert_expression_returns_data_from_real_nodes(tmp_path):
    config_file = tmp_path / "nodes.toml"
    config_file.write_text(CONFIG)
    started = []
    prometheus = None
    try:
        single = Server(tmp_path, ["--config", str(config_file)],
                        dict(NODE_LIMITS, SWITCHBOARD_NODE_NAME="single",
                             SWITCHBOARD_MAX_PENDING_HANDSHAKES_PER_IP=str(PENDING_PER_IP)))
        started.append(single)
        over_the_pending_bound(single)
        # The flood's sockets are closed; once the node has seen them go, their places are
        # given back and it serves the same address again (a probe before that may be refused).
        def serving():
            try:
                return single.get("/readyz")[0] == 200
            except OSError:
                return False

        wait_until(serving, 10, interval=0.1, what="the node serves after the socket flood")
        redis = Broker("redis", tmp_path)
        started.append(redis)
        cluster = Cluster(redis, tmp_path, nodes=3, env=NODE_LIMITS)
        started.append(cluster)
        nodes = [single, *cluster.nodes]

        config = yaml.safe_load(SCRAPE_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(RULES)]
        job = config["scrape_configs"][0]
        assert job["job_name"] == "switchboard"
        job["scrape_timeout"] = "1s"
        job["static_configs"] = [{"targets": [node.base for node in nodes]}]
        prometheus = Prometheus(tmp_path, config)

        instances = {node.base for node in nodes}
        # Every node scraped once before the traffic, so the counters' increases fall between
        # two samples and rates see them.
        wait_until(lambda: {s["metric"]["instance"] for s in prometheus.query("up")} == instances, 20,
                   interval=0.2, what="every node scraped once")
        run(traffic(single, cluster.nodes), 60)

        def scraped_after_traffic():
            # Two scrapes of every node after the traffic, so rates have their samples.
            series = prometheus.query('count_over_time(switchboard_publications_total[3s]) >= 2 and switchboard_publications_total > 0')
            return {s["metric"]["instance"] for s in series} == instances

        wait_until(scraped_after_traffic, 30, interval=0.5, what="every node scraped after the traffic")

        targets = prometheus.api("targets")["data"]["activeTargets"]
        assert sorted(t["health"] for t in targets) == ["up"] * len(nodes), targets

        def data(promql):
            # A series that appeared with the last of the traffic (a disconnect, say) needs two
            # scrapes before a rate over it has a value: poll, bounded.
            try:
                return wait_until(lambda: prometheus.query(promql), 10, interval=0.5, what=promql)
            except AssertionError:
                return []

        queries = dashboard_queries()
        assert len(queries) >= 30
        empty, unchecked = [], []
        for title, expr in queries:
            promql = grafana_to_promql(expr)
            if names_in(expr) & HOOK_METRICS:
                prometheus.query(promql)  # valid PromQL all the same
                unchecked.append(title)
            elif not data(promql):
                empty.append(f"{title}: {promql}")
        assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)

        for rule in alert_rules():
            expr = with_bool_comparisons(rule["expr"])
            if names_in(rule["expr"]) & HOOK_METRICS:
                prometheus.query(expr)
                unchecked.append(rule["alert"])
                continue
            result = data(expr)
            assert result, f"{rule['alert']}: no series for {expr!r}"
            # Every node exports what every alert looks at.
            assert {s["metric"].get("instance") for s in result} == instances, (rule["alert"], result)
            # Healthy nodes: no alert condition holds.
            assert all(float(s["value"][1]) == 0 or math.isnan(float(s["value"][1])) for s in result), (rule["alert"], result)

        # The queries left unchecked here are exactly those of the hooks' metrics (checked in
        # the hooks test below).
        assert unchecked and all("Hook" in name for name in unchecked), unchecked

        # The latency quantiles have values, not just series: publications were timed.
        for metric in ("switchboard_delivery_seconds", "switchboard_publish_seconds"):
            p99 = prometheus.query(f"histogram_quantile(0.99, sum by (instance, le) (rate({metric}_bucket[1m])))")
            assert {s["metric"]["instance"] for s in p99} == instances
            assert all(math.isfinite(float(s["value"][1])) for s in p99), p99
        # The cluster sees itself; the limit is exported.
        nodes_seen = prometheus.query('switchboard_cluster_nodes')
        assert sorted(float(s["value"][1]) for s in nodes_seen) == [1.0, 3.0, 3.0, 3.0]
        limits = prometheus.query('switchboard_connections_limit')
        assert {float(s["value"][1]) for s in limits} == {200.0}

        # Every rule was evaluated by Prometheus without error.
        def evaluated():
            groups = prometheus.api("rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            done = all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules)
            return len(rules) == len(alert_rules()) and done and rules

        rules = wait_until(evaluated, 10, interval=0.5, what="every rule evaluated")
        assert all(r["health"] == "ok" for r in rules), rules
        assert all(r["state"] == "inactive" for r in rules), [r for r in rules if r["state"] != "inactive"]

        # The nodes still serve after being scraped under load.
        assert single.get("/readyz")[0] == 200
    finally:
        if prometheus:
            prometheus.stop()
        for thing in reversed(started):
            thing.stop()


async def connect_without_token(node) -> dict:
    """A client-protocol `connect` with no token (so through the connect hook); its reply."""
    async with websockets.connect(f"ws://{node.base}/connection/websocket", open_timeout=5) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {}}))
        while True:
            for line in (await asyncio.wait_for(ws.recv(), 5)).splitlines():
                message = json.loads(line)
                if message.get("id") == 1:
                    return message


def test_the_hook_panels_and_the_breaker_alert_return_data_from_a_node_with_hooks(tmp_path):
    backend = HookBackend()
    config_file = tmp_path / "hooks.toml"
    config_file.write_text(f"""
[hooks]
timeout = "500ms"
retries = 0

[hooks.breaker]
window = "10s"
min_calls = 2
failure_ratio = 0.5
cooldown = "1s"
half_open_calls = 1
recovery_rate = 0

[hooks.connect]
url = "{backend.url}"
""")
    node = prometheus = None
    try:
        node = Server(tmp_path, ["--config", str(config_file)], {"SWITCHBOARD_NODE_NAME": "hooked"})
        config = yaml.safe_load(SCRAPE_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(RULES)]
        job = config["scrape_configs"][0]
        job["scrape_timeout"] = "1s"
        job["static_configs"] = [{"targets": [node.base]}]
        prometheus = Prometheus(tmp_path, config)
        wait_until(lambda: prometheus.query("up"), 20, interval=0.2, what="the node scraped once")

        # Healthy, then down (the breaker opens), then back (a trial call closes it).
        for _ in range(3):
            assert "connect" in run(connect_without_token(node), 10)
        backend.healthy = False
        refusals = [run(connect_without_token(node), 10) for _ in range(4)]
        assert all(r.get("error", {}).get("code") == 100 for r in refusals), refusals
        backend.healthy = True
        time.sleep(1.2)  # the breaker's cooldown
        wait_until(lambda: "connect" in run(connect_without_token(node), 10), 10, interval=0.3,
                   what="a connect through the hook after the cooldown")
        wait_until(lambda: prometheus.query('switchboard_hook_breaker_transitions_total{to="closed"}'),
                   10, interval=0.5, what="the breaker's close scraped")

        hook_queries = [(t, e) for t, e in dashboard_queries() if names_in(e) & HOOK_METRICS]
        assert len(hook_queries) >= 4, hook_queries
        for title, expr in hook_queries:
            promql = grafana_to_promql(expr)
            assert wait_until(lambda: prometheus.query(promql), 10, interval=0.5, what=promql), title
        # Every result the breaker went through was counted, and each transition.
        results = {s["metric"]["result"] for s in prometheus.query("switchboard_hook_calls_total")}
        assert {"ok", "error", "breaker_open"} <= results, results
        transitions = {s["metric"]["to"] for s in prometheus.query("switchboard_hook_breaker_transitions_total")}
        assert transitions == {"open", "half_open", "closed"}, transitions

        hook_alerts = [r for r in alert_rules() if names_in(r["expr"]) & HOOK_METRICS]
        assert hook_alerts, "an alert watches the hooks' breakers"
        for rule in hook_alerts:
            result = prometheus.query(with_bool_comparisons(rule["expr"]))
            assert result, f"{rule['alert']}: no series"
            # Closed again: the alert's condition no longer holds.
            assert all(float(s["value"][1]) == 0 for s in result), (rule["alert"], result)
        # Clients that need no hook were served all along.
        assert node.get("/readyz")[0] == 200
    finally:
        if prometheus:
            prometheus.stop()
        if node:
            node.stop()
        backend.stop()
