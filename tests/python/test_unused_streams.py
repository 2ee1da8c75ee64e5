"""Streams a subscribe starts on Redis and NATS (issue 11, item 2): a subscribe to a channel
nobody published to starts a stream (its subscriber needs an epoch), which must not outlive the
channel's subscribers by more than `client.history_unused_ttl`, while a subscriber of a quiet
channel keeps its epoch however long it stays. One node on a private broker; each test ends by
checking that the node still serves."""

import asyncio

import pytest

import cluster as cluster_module
from cluster import BROKERS, Client, Cluster, Broker, publish_ok, run, serves, wait_until

# The shortest the node allows on a remote broker with a 1 s position check is three checks.
UNUSED_TTL = "2s"


@pytest.fixture
def one_node(tmp_path, monkeypatch):
    made = []

    def make(kind):
        monkeypatch.setattr(cluster_module, "CONFIG",
                            cluster_module.CONFIG + f'\n[client]\nhistory_unused_ttl = "{UNUSED_TTL}"\n')
        broker = Broker(kind, tmp_path)
        made.append(broker)
        node_cluster = Cluster(broker, tmp_path, nodes=1)
        made.append(node_cluster)
        return node_cluster

    yield make
    for thing in reversed(made):
        thing.stop()


def history_epoch(node, channel) -> str:
    status, body = node.api("history", {"channel": channel, "limit": 0})
    assert status == 200, (status, body)
    return body["result"].get("epoch", "")


@pytest.mark.parametrize("kind", BROKERS)
def test_a_stream_a_subscribe_started_is_gone_after_the_unused_ttl(one_node, kind):
    made_up = one_node(kind)
    node = made_up.nodes[0]
    channels = [f"c:made-up-{n}" for n in range(5)]

    async def subscribe_and_leave():
        client = await Client.open(node, "prober")
        for channel in channels:
            result = await client.subscribe(channel, recover=True)
            assert result.get("epoch"), result
            await client.command("unsubscribe", {"channel": channel})
        await client.close()

    run(subscribe_and_leave())
    for channel in channels:
        wait_until(lambda: history_epoch(node, channel) == "", 30,
                   what=f"the stream {channel} a subscribe started is gone once unused")
    assert serves(made_up)


@pytest.mark.parametrize("kind", BROKERS)
def test_a_subscriber_of_a_quiet_channel_keeps_its_epoch_past_the_unused_ttl(one_node, kind):
    quiet = one_node(kind)
    node = quiet.nodes[0]
    channel = "c:quiet"

    async def scenario():
        client = await Client.open(node, "patient")
        result = await client.subscribe(channel, recover=True)
        epoch = result["epoch"]
        # Well past the TTL the stream was started with (3 s here): only the node's
        # extensions at each position check can have kept it.
        await asyncio.sleep(8)
        assert history_epoch(node, channel) == epoch
        published = await asyncio.to_thread(publish_ok, node, channel, {"n": 1})
        assert (published["epoch"], published["offset"]) == (epoch, 1), published
        await asyncio.sleep(0)
        assert client.close_code is None, client.close_code
        await client.close()

    run(scenario())
    assert serves(quiet)
