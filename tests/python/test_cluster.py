"""Three `switchboard serve` processes joined by a private Redis or NATS: what a client sees of
the cluster (fan-out, ordering, presence, per-user API calls, recovery on another node) and what
it sees when the broker fails (killed, frozen, its pub/sub connections killed, its data flushed,
its primary failed over). Each test is bounded in time; a fault test ends by checking that the
cluster still serves."""

import asyncio
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster import (BROKERS, Broker, Client, Cluster, ReplyError, Subscriber, async_wait_until,
                     node_names, publish, publish_ok, run, serves, wait_until)


@pytest.fixture
def make_cluster(tmp_path):
    made = []

    def make(kind, nodes=3, env=None, broker_args=(), url=None, broker=None):
        if broker is None:
            broker = Broker(kind, tmp_path, broker_args)
            made.append(broker)
        cluster = Cluster(broker, tmp_path, nodes, env, url)
        made.append(cluster)
        return cluster

    yield make
    for thing in reversed(made):
        thing.stop()


def contiguous(offsets, first=1):
    return offsets == list(range(first, first + len(offsets)))


# ---- 1. fan-out across nodes ----


@pytest.mark.parametrize("kind", BROKERS)
def test_publications_from_every_node_reach_every_subscriber_once_in_offset_order(make_cluster, kind):
    cluster = make_cluster(kind)
    channel = "c:fanout"

    async def scenario():
        subscribers = []
        for i, node in enumerate(cluster.nodes):
            for j in range(2):
                client = await Client.open(node, f"u{i}{j}")
                await client.subscribe(channel)
                subscribers.append(client)
        sent = []
        for round_ in range(5):
            for i, node in enumerate(cluster.nodes):
                data = {"api": i, "n": round_}
                await asyncio.to_thread(publish_ok, node, channel, data)
                sent.append(data)
                data = {"client": i, "n": round_}
                await subscribers[2 * i].publish(channel, data)
                sent.append(data)
        for client in subscribers:
            await async_wait_until(lambda: len(client.pubs.get(channel, [])) >= len(sent), 10,
                                   what=f"{client.name} gets {len(sent)} publications")
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive by now
        for client in subscribers:
            assert contiguous(client.offsets(channel)), client.offsets(channel)
            assert sorted(map(repr, client.data(channel))) == sorted(map(repr, sent))
        # Publications through one node are in the order that node sent them.
        assert [d for d in subscribers[0].data(channel) if d.get("api") == 0] == [d for d in sent if d.get("api") == 0]
        for client in subscribers:
            await client.close()

    run(scenario())


# ---- 2. two nodes publishing at once ----


@pytest.mark.parametrize("kind", BROKERS)
def test_two_nodes_publishing_at_once_give_one_contiguous_order(make_cluster, kind):
    cluster = make_cluster(kind)
    channel = "c:race"
    per_node = 100

    async def scenario():
        subscribers = [await Client.open(node, f"r{i}") for i, node in enumerate(cluster.nodes)]
        for client in subscribers:
            await client.subscribe(channel)

        def burst(node, tag):
            return [(publish_ok(node, channel, {"from": tag, "n": n})["offset"], tag, n) for n in range(per_node)]

        with ThreadPoolExecutor(2) as pool:
            results = await asyncio.gather(
                asyncio.wrap_future(pool.submit(burst, cluster.nodes[0], "a")),
                asyncio.wrap_future(pool.submit(burst, cluster.nodes[1], "b")))
        acked = sorted(results[0] + results[1])
        assert [offset for offset, _, _ in acked] == list(range(1, 2 * per_node + 1))
        expected = [{"from": tag, "n": n} for _, tag, n in acked]
        for client in subscribers:
            await async_wait_until(lambda: len(client.pubs.get(channel, [])) >= 2 * per_node, 15,
                                   what=f"{client.name} gets every publication")
        await asyncio.sleep(0.3)
        for client in subscribers:
            assert client.offsets(channel) == list(range(1, 2 * per_node + 1))
            assert client.data(channel) == expected
        for client in subscribers:
            await client.close()

    run(scenario())


# ---- 3. presence across nodes ----


@pytest.mark.parametrize("kind", BROKERS)
def test_presence_spans_nodes_and_a_killed_nodes_clients_expire(make_cluster, kind):
    cluster = make_cluster(kind)
    node1, node2, node3 = cluster.nodes
    channel = "c:room"

    async def scenario():
        carol = await Client.open(node3, "carol")
        await carol.subscribe(channel)
        alice = await Client.open(node1, "alice")
        await alice.subscribe(channel)
        bob = await Client.open(node2, "bob")
        await bob.subscribe(channel)

        def joined():
            return {p["join"]["info"]["user"] for p in carol.pushes if "join" in p}

        await async_wait_until(lambda: {"alice", "bob"} <= joined(), 5, what="carol sees alice and bob join")

        def present():
            status, body = node3.api("presence", {"channel": channel})
            assert status == 200, body
            return {c["user"]: cid for cid, c in body["result"]["presence"].items()}

        users = await asyncio.to_thread(wait_until, lambda: len(present()) == 3 and present(), 5, what="presence of 3")
        assert users == {"alice": alice.client_id, "bob": bob.client_id, "carol": carol.client_id}
        assert await asyncio.to_thread(node1.api, "presence_stats", {"channel": channel}) == \
            (200, {"result": {"num_clients": 3, "num_users": 3}})

        await alice.command("unsubscribe", {"channel": channel})
        await async_wait_until(lambda: any(p.get("leave", {}).get("info", {}).get("user") == "alice" for p in carol.pushes),
                               5, what="carol sees alice leave")

        killed = time.monotonic()
        cluster.kill_node(node2)
        await asyncio.to_thread(wait_until, lambda: set(present()) == {"carol"}, 3 + 3, 0.1,
                                what="bob's presence expiring after his node was killed")
        assert time.monotonic() - killed < 6
        for client in (alice, bob, carol):
            await client.close()

    run(scenario())
    assert serves(cluster)


# ---- 4. info and channels ----


@pytest.mark.parametrize("kind", BROKERS)
def test_info_lists_every_node_and_channels_covers_them(make_cluster, kind):
    cluster = make_cluster(kind)
    nodes = list(cluster.nodes)
    for node in nodes:
        assert node_names(node) == ["node1", "node2", "node3"]

    async def scenario():
        clients = []
        for i, node in enumerate(nodes):
            client = await Client.open(node, f"i{i}")
            await client.subscribe(f"c:only{i + 1}")
            await client.subscribe("c:all")
            clients.append(client)
        status, body = await asyncio.to_thread(nodes[0].api, "channels", {"pattern": "c:*"})
        assert status == 200, body
        assert body["result"]["channels"] == {
            "c:all": {"num_clients": 3}, "c:only1": {"num_clients": 1},
            "c:only2": {"num_clients": 1}, "c:only3": {"num_clients": 1}}
        for client in clients:
            await client.close()

    run(scenario())
    killed = time.monotonic()
    cluster.kill_node(nodes[2])
    for node in nodes[:2]:
        wait_until(lambda: node_names(node) == ["node1", "node2"], 3 * 0.5 + 2, 0.1, what="node3 leaving info")
    assert time.monotonic() - killed < 3 * 0.5 + 2
    assert serves(cluster)


# ---- 5. per-user API calls reach other nodes ----


@pytest.mark.parametrize("kind", BROKERS)
def test_user_api_calls_reach_the_users_connections_on_other_nodes(make_cluster, kind):
    cluster = make_cluster(kind)
    node1, node2, node3 = cluster.nodes

    async def scenario():
        dave = await Client.open(node2, "dave")
        dave3 = await Client.open(node3, "dave")
        other = await Client.open(node2, "erin")

        assert await asyncio.to_thread(node1.api, "subscribe", {"user": "dave", "channel": "c:srv"}) == (200, {"result": {}})
        for client in (dave, dave3):
            await async_wait_until(lambda: any(p.get("channel") == "c:srv" and "subscribe" in p for p in client.pushes),
                                   5, what=f"{client.name} gets the subscribe push")
        await asyncio.to_thread(wait_until, lambda: publish_ok(node1, "c:srv", {"x": 1}) and dave.pubs.get("c:srv"), 5,
                                what="a publication through the server-side subscription")

        assert await asyncio.to_thread(node1.api, "unsubscribe", {"user": "dave", "channel": "c:srv"}) == (200, {"result": {}})
        await async_wait_until(lambda: any(p.get("unsubscribe", {}).get("code") == 2000 for p in dave.pushes), 5,
                               what="the unsubscribe push (2000)")

        expire_at = int(time.time()) + 3600
        assert await asyncio.to_thread(node1.api, "refresh", {"user": "dave", "expire_at": expire_at}) == (200, {"result": {}})
        await async_wait_until(lambda: any("refresh" in p for p in dave.pushes), 5, what="the refresh push")
        refresh = next(p["refresh"] for p in dave.pushes if "refresh" in p)
        assert refresh.get("expires") is True and 3500 < refresh["ttl"] <= 3600

        assert await asyncio.to_thread(node1.api, "disconnect", {"user": "dave"}) == (200, {"result": {}})
        assert await dave.wait_closed(5) == 3503
        assert await dave3.wait_closed(5) == 3503
        assert not other.closed.is_set(), "another user's connection was closed"
        assert other.pushes == []
        await other.close()

    run(scenario())
    assert serves(cluster)


# ---- 6. recovery on another node ----


@pytest.mark.parametrize("kind", BROKERS)
def test_a_client_recovers_on_another_node_what_it_missed(make_cluster, kind):
    cluster = make_cluster(kind)
    node1, node2, node3 = cluster.nodes
    channel = "c:recover"

    async def scenario():
        first = await Client.open(node1, "frank")
        sub = await first.subscribe(channel)
        epoch = sub["epoch"]
        for n in range(1, 6):
            await asyncio.to_thread(publish_ok, node2, channel, {"n": n})
        await async_wait_until(lambda: len(first.offsets(channel)) == 5, 5, what="the first five")
        assert first.offsets(channel) == [1, 2, 3, 4, 5]
        await first.close()

        for n in range(6, 11):
            await asyncio.to_thread(publish_ok, node2, channel, {"n": n})
        again = await Client.open(node3, "frank")
        result = await again.subscribe(channel, recover=True, offset=5, epoch=epoch)
        assert result.get("recovered") is True and result["epoch"] == epoch
        assert [p["offset"] for p in result["publications"]] == [6, 7, 8, 9, 10]
        for n in range(11, 16):
            await asyncio.to_thread(publish_ok, node1, channel, {"n": n})
        await async_wait_until(lambda: len(again.offsets(channel)) >= 10, 5, what="the live ones after")
        await asyncio.sleep(0.3)
        assert again.offsets(channel) == list(range(6, 16))
        assert [d["n"] for d in again.data(channel)] == list(range(6, 16))
        await again.close()

    run(scenario())
