"""The server HTTP API driven by `cent`, Centrifugo's Python server SDK, against the release
binary: every API method through the SDK's own request and result models, its error types, and
the effects a connected client-protocol client (Python `websockets`) sees."""

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
import websockets
from cent import (
    BatchRequest,
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    ChannelsRequest,
    Client,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)

from conftest import API_KEY, SECRET

# Bound on every wait for a frame or a close; never asserted on.
WAIT = 5.0

CONFIG = f"""
[token]
hmac_secret = "{SECRET}"

[api]
key = "{API_KEY}"

[channels.namespaces.feed]
subscribe = "authenticated"
history_size = 10
history_ttl = "60s"
recover = true

[channels.namespaces.room]
subscribe = "authenticated"
publish = "subscribers"
presence = true
join_leave = true
"""


@pytest.fixture
def gateway(make_server, tmp_path):
    config = tmp_path / "switchboard.toml"
    config.write_text(CONFIG)
    return make_server(args=["--config", str(config)])


@pytest.fixture
def api(gateway):
    with Client(f"http://{gateway.base}/api", API_KEY, timeout=WAIT) as client:
        yield client


def call(method, request):
    """Runs one blocking `cent` call off the event loop."""
    return asyncio.to_thread(method, request)


def jwt(user, ttl=3600):
    """An HS256 connection token for `user`, signed with the gateway's secret."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": user, "exp": int(time.time()) + ttl}).encode())
    signing_input = header + b"." + claims
    signature = b64(hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


class ProtocolClient:
    """One connection to `/connection/websocket`: answers server pings, hands replies to the
    command that waits for them and queues pushes."""

    def __init__(self, ws):
        self.ws = ws
        self.client_id = None
        self._next_id = 0
        self._replies = {}
        self.pushes = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, gateway, user):
        ws = await websockets.connect(f"ws://{gateway.base}/connection/websocket", open_timeout=WAIT)
        client = cls(ws)
        reply = await client.command("connect", {"token": jwt(user)})
        assert "error" not in reply, reply
        client.client_id = reply["connect"]["client"]
        return client

    async def _read(self):
        try:
            async for message in self.ws:
                for line in message.splitlines():
                    if not line.strip():
                        continue
                    frame = json.loads(line)
                    if frame == {}:
                        await self.ws.send("{}")
                    elif "id" in frame:
                        self._replies.pop(frame["id"]).set_result(frame)
                    elif "push" in frame:
                        self.pushes.put_nowait(frame["push"])
        except websockets.ConnectionClosed:
            pass

    async def command(self, method, params):
        self._next_id += 1
        reply = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = reply
        await self.ws.send(json.dumps({"id": self._next_id, method: params}))
        return await asyncio.wait_for(reply, WAIT)

    async def subscribe(self, channel):
        reply = await self.command("subscribe", {"channel": channel})
        assert "error" not in reply, reply
        return reply["subscribe"]

    async def next_push(self, kind):
        """The next push that carries `kind` (`pub`, `subscribe`, ...); join/leave pushes
        of other clients in between are skipped."""
        while True:
            push = await asyncio.wait_for(self.pushes.get(), WAIT)
            if kind in push:
                return push

    async def close_code(self):
        """Waits for the server to close the connection and returns the close code."""
        await asyncio.wait_for(self._reader, WAIT)
        await asyncio.wait_for(self.ws.wait_closed(), WAIT)
        return self.ws.close_code

    async def close(self):
        await self.ws.close()
        await asyncio.wait_for(self._reader, WAIT)


async def connected(gateway, *users):
    return [await ProtocolClient.connect(gateway, user) for user in users]


async def close_all(clients):
    for client in clients:
        await client.close()


# publish and broadcast


def test_publish_into_a_namespace_with_history_returns_increasing_offsets_in_one_epoch(api):
    first = api.publish(PublishRequest(channel="feed:news", data={"n": 1}))
    second = api.publish(PublishRequest(channel="feed:news", data={"n": 2}))
    assert (first.offset, second.offset) == (1, 2)
    assert first.epoch and second.epoch == first.epoch


def test_publish_into_a_namespace_without_history_returns_no_position(api):
    result = api.publish(PublishRequest(channel="room:quiet", data="hello"))
    assert (result.offset, result.epoch) == (0, "")


def test_publish_reaches_a_subscribed_client_with_its_data_and_offset(gateway, api):
    async def scenario():
        [alice] = await connected(gateway, "alice")
        await alice.subscribe("feed:live")
        result = await call(api.publish, PublishRequest(channel="feed:live", data={"text": "hi"}))
        push = await alice.next_push("pub")
        assert push["channel"] == "feed:live"
        assert push["pub"]["data"] == {"text": "hi"}
        assert push["pub"]["offset"] == result.offset
        await alice.close()

    asyncio.run(scenario())


def test_broadcast_answers_one_publish_result_per_channel_in_order(api):
    result = api.broadcast(BroadcastRequest(channels=["feed:b1", "room:b2", "feed:b1"], data={"x": 1}))
    assert [r.error for r in result.responses] == [None, None, None]
    assert [r.result.offset for r in result.responses] == [1, 0, 2]
    assert result.responses[0].result.epoch == result.responses[2].result.epoch != ""


def test_broadcast_delivers_to_the_subscribers_of_every_channel(gateway, api):
    async def scenario():
        one, two = await connected(gateway, "u1", "u2")
        await one.subscribe("room:cast1")
        await two.subscribe("room:cast2")
        await call(api.broadcast, BroadcastRequest(channels=["room:cast1", "room:cast2"], data="to all"))
        for client, channel in ((one, "room:cast1"), (two, "room:cast2")):
            push = await client.next_push("pub")
            assert (push["channel"], push["pub"]["data"]) == (channel, "to all")
        await close_all([one, two])

    asyncio.run(scenario())


def test_broadcast_reports_an_unknown_namespace_per_channel_and_publishes_to_the_others(api):
    result = api.broadcast(BroadcastRequest(channels=["nowhere:x", "feed:ok"], data=1))
    assert result.responses[0].error.code == 102
    assert result.responses[0].result is None
    assert result.responses[1].error is None and result.responses[1].result.offset == 1


# subscribe, unsubscribe, disconnect, refresh (effects seen by the user's connections)


def test_server_side_subscribe_pushes_subscribe_to_each_connection_of_the_user(gateway, api):
    async def scenario():
        first, second, other = await connected(gateway, "sam", "sam", "tess")
        await call(api.subscribe, SubscribeRequest(user="sam", channel="room:picked"))
        for client in (first, second):
            push = await client.next_push("subscribe")
            assert push["channel"] == "room:picked"
        assert other.pushes.empty()
        await close_all([first, second, other])

    asyncio.run(scenario())


def test_server_side_subscribe_delivers_later_publications_to_the_user(gateway, api):
    async def scenario():
        [sam] = await connected(gateway, "sam")
        await call(api.subscribe, SubscribeRequest(user="sam", channel="feed:picked"))
        await sam.next_push("subscribe")
        await call(api.publish, PublishRequest(channel="feed:picked", data={"after": "subscribe"}))
        push = await sam.next_push("pub")
        assert (push["channel"], push["pub"]["data"]) == ("feed:picked", {"after": "subscribe"})
        await sam.close()

    asyncio.run(scenario())


def test_server_side_unsubscribe_pushes_unsubscribe_with_code_2000(gateway, api):
    async def scenario():
        [uma] = await connected(gateway, "uma")
        await uma.subscribe("room:leaving")
        await call(api.unsubscribe, UnsubscribeRequest(user="uma", channel="room:leaving"))
        push = await uma.next_push("unsubscribe")
        assert push["channel"] == "room:leaving"
        assert push["unsubscribe"]["code"] == 2000
        await uma.close()

    asyncio.run(scenario())


def test_server_side_unsubscribe_removes_the_user_from_the_channel(gateway, api):
    async def scenario():
        [uma] = await connected(gateway, "uma")
        await uma.subscribe("room:leaving")
        await call(api.unsubscribe, UnsubscribeRequest(user="uma", channel="room:leaving"))
        await uma.next_push("unsubscribe")
        stats = await call(api.presence_stats, PresenceStatsRequest(channel="room:leaving"))
        assert (stats.num_clients, stats.num_users) == (0, 0)
        await uma.close()

    asyncio.run(scenario())


def test_disconnect_closes_every_connection_of_the_user_with_3503(gateway, api):
    async def scenario():
        first, second = await connected(gateway, "dan", "dan")
        await call(api.disconnect, DisconnectRequest(user="dan"))
        assert await first.close_code() == 3503
        assert await second.close_code() == 3503

    asyncio.run(scenario())


def test_disconnect_leaves_other_users_connected(gateway, api):
    async def scenario():
        dan, eve = await connected(gateway, "dan", "eve")
        await call(api.disconnect, DisconnectRequest(user="dan"))
        assert await dan.close_code() == 3503
        assert "error" not in await eve.command("presence_stats", {"channel": "room:any"})
        await eve.close()

    asyncio.run(scenario())


def test_refresh_with_expire_at_pushes_the_new_expiry_to_the_users_connection(gateway, api):
    async def scenario():
        [rita] = await connected(gateway, "rita")
        expire_at = int(time.time()) + 600
        await call(api.refresh, RefreshRequest(user="rita", expire_at=expire_at))
        push = await rita.next_push("refresh")
        assert push["refresh"]["expires"] is True
        assert 0 < push["refresh"]["ttl"] <= 600
        await rita.close()

    asyncio.run(scenario())


def test_refresh_marked_expired_closes_the_users_connection_with_3005(gateway, api):
    async def scenario():
        [rita] = await connected(gateway, "rita")
        await call(api.refresh, RefreshRequest(user="rita", expired=True))
        assert await rita.close_code() == 3005

    asyncio.run(scenario())


# presence


def test_presence_lists_each_subscribed_client_with_its_user(gateway, api):
    async def scenario():
        pia, quinn = await connected(gateway, "pia", "quinn")
        await pia.subscribe("room:here")
        await quinn.subscribe("room:here")
        result = await call(api.presence, PresenceRequest(channel="room:here"))
        assert {client: info.user for client, info in result.presence.items()} == {
            pia.client_id: "pia",
            quinn.client_id: "quinn",
        }
        assert all(info.client == client for client, info in result.presence.items())
        await close_all([pia, quinn])

    asyncio.run(scenario())


def test_presence_stats_counts_clients_and_unique_users(gateway, api):
    async def scenario():
        clients = await connected(gateway, "pia", "pia", "quinn")
        for client in clients:
            await client.subscribe("room:count")
        result = await call(api.presence_stats, PresenceStatsRequest(channel="room:count"))
        assert (result.num_clients, result.num_users) == (3, 2)
        await close_all(clients)

    asyncio.run(scenario())


def test_presence_in_a_namespace_without_presence_raises_not_available_108(api):
    with pytest.raises(CentApiResponseError) as error:
        api.presence(PresenceRequest(channel="feed:nopresence"))
    assert error.value.code == 108


# history


@pytest.fixture
def five_publications(api):
    """Publishes n=1..5 into feed:log; returns the epoch."""
    results = [api.publish(PublishRequest(channel="feed:log", data={"n": n})) for n in range(1, 6)]
    return results[0].epoch


def test_history_with_a_limit_returns_the_oldest_publications_first(api, five_publications):
    result = api.history(HistoryRequest(channel="feed:log", limit=2))
    assert [(p.offset, p.data) for p in result.publications] == [(1, {"n": 1}), (2, {"n": 2})]
    assert (result.offset, result.epoch) == (5, five_publications)


def test_history_reversed_returns_the_newest_publications_first(api, five_publications):
    result = api.history(HistoryRequest(channel="feed:log", limit=2, reverse=True))
    assert [p.offset for p in result.publications] == [5, 4]


def test_history_since_a_position_returns_only_the_later_publications(api, five_publications):
    since = StreamPosition(offset=3, epoch=five_publications)
    result = api.history(HistoryRequest(channel="feed:log", limit=10, since=since))
    assert [p.data for p in result.publications] == [{"n": 4}, {"n": 5}]


def test_history_without_a_limit_returns_only_the_stream_position(api, five_publications):
    result = api.history(HistoryRequest(channel="feed:log"))
    assert result.publications == []
    assert (result.offset, result.epoch) == (5, five_publications)


def test_history_since_another_epoch_raises_unrecoverable_112(api, five_publications):
    since = StreamPosition(offset=3, epoch="another-epoch")
    with pytest.raises(CentApiResponseError) as error:
        api.history(HistoryRequest(channel="feed:log", limit=10, since=since))
    assert error.value.code == 112


def test_history_remove_drops_the_publications_and_keeps_the_stream_position(api, five_publications):
    api.history_remove(HistoryRemoveRequest(channel="feed:log"))
    result = api.history(HistoryRequest(channel="feed:log", limit=10))
    assert result.publications == []
    assert (result.offset, result.epoch) == (5, five_publications)
    assert api.publish(PublishRequest(channel="feed:log", data={"n": 6})).offset == 6


def test_history_in_a_namespace_without_history_raises_not_available_108(api):
    with pytest.raises(CentApiResponseError) as error:
        api.history(HistoryRequest(channel="room:nohistory", limit=1))
    assert error.value.code == 108


# info, channels, batch


def test_info_describes_this_node_and_counts_its_clients_and_users(gateway, api):
    async def scenario():
        clients = await connected(gateway, "ivy", "ivy", "jon")
        await clients[0].subscribe("room:info")
        result = await call(api.info, InfoRequest())
        [node] = result.nodes
        assert node.uid and node.name and node.version
        assert (node.num_clients, node.num_users) == (3, 2)
        assert node.num_channels >= 1 and node.num_subs >= 1
        await close_all(clients)

    asyncio.run(scenario())


def test_channels_lists_active_channels_with_their_client_counts(gateway, api):
    async def scenario():
        clients = await connected(gateway, "kim", "lee")
        for client in clients:
            await client.subscribe("room:busy")
        await clients[0].subscribe("feed:quiet")
        result = await call(api.channels, ChannelsRequest())
        assert result.channels["room:busy"].num_clients == 2
        assert result.channels["feed:quiet"].num_clients == 1
        await close_all(clients)

    asyncio.run(scenario())


def test_batch_runs_its_commands_in_order_and_answers_each_with_its_result(api):
    result = api.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel="feed:batch", data={"n": 1}),
                PublishRequest(channel="feed:batch", data={"n": 2}),
                HistoryRequest(channel="feed:batch", limit=10),
                PresenceStatsRequest(channel="room:batch"),
            ]
        )
    )
    first, second, history, stats = result.replies
    assert (first.offset, second.offset) == (1, 2)
    assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]
    assert (stats.num_clients, stats.num_users) == (0, 0)


# errors: each raises cent's error, and the API keeps serving


def test_an_unknown_namespace_raises_api_error_102(api):
    with pytest.raises(CentApiResponseError) as error:
        api.publish(PublishRequest(channel="nowhere:x", data={}))
    assert error.value.code == 102
    assert error.value.message


def test_the_api_still_serves_after_an_unknown_namespace(api):
    with pytest.raises(CentApiResponseError):
        api.publish(PublishRequest(channel="nowhere:x", data={}))
    assert api.publish(PublishRequest(channel="feed:after", data={})).offset == 1


def test_a_wrong_api_key_raises_unauthorized(gateway):
    with Client(f"http://{gateway.base}/api", "not-the-key", timeout=WAIT) as wrong:
        with pytest.raises(CentUnauthorizedError):
            wrong.publish(PublishRequest(channel="feed:x", data={}))


def test_the_api_still_serves_after_a_wrong_api_key(gateway, api):
    with Client(f"http://{gateway.base}/api", "not-the-key", timeout=WAIT) as wrong:
        with pytest.raises(CentUnauthorizedError):
            wrong.info(InfoRequest())
    assert api.publish(PublishRequest(channel="feed:after", data={})).offset == 1
