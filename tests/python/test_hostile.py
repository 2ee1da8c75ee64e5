"""Hostile clients against the release binary: each one is held to a bound, and the node
keeps serving everyone else.

Memory bounds are computed from the configured limits with the per-connection formula of
docs/operations.md ("Worst-case memory per connection"), never picked by hand."""

import asyncio
import base64
import json
import os
import select
import socket
import struct
import time
import zlib

import websockets

from conftest import API_KEY

# docs/operations.md, "Worst-case memory per connection": the defaults, and the fixed parts.
MAX_MESSAGE = 65536
MAX_QUEUED = 1048576
MAX_SUBSCRIPTIONS = 128
READ_CHUNK = 16 * 1024
INFLATER = 48 * 1024          # zlib-rs inflate state and its 32 KiB window
PER_SUBSCRIPTION = 3 * 1024   # measured 2.0 KiB: session, hub, channel, presence, 255-byte name
FIXED = 4 * 1024              # task, handle, session, registry entry
# What a node's RSS may grow by under a first burst of hostile traffic that no connection
# holds: tokio worker stacks and malloc arenas touched for the first time, the API's buffers.
BASELINE = 8 * 1024 * 1024


def worst_case_bytes(max_message=MAX_MESSAGE, max_queued=MAX_QUEUED,
                     max_subscriptions=MAX_SUBSCRIPTIONS, deflate=False):
    """The most one connection can hold, as docs/operations.md derives it."""
    inbound = 2 * (max_message + READ_CHUNK) + 2 * max_message
    if deflate:
        inbound += INFLATER + max_message + 1
    outbound = 5 * max_queued
    return inbound + outbound + max_subscriptions * PER_SUBSCRIPTION + FIXED


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def peak_kib(pid):
    """The process's peak RSS so far (VmHWM): catches memory held only until a close."""
    return rss_kib(pid, "VmHWM")


def metric(server, name, label=""):
    """The sum of the series of a metric in /metrics (those holding `label`, if given)."""
    total = 0.0
    for line in server.get("/metrics")[1].splitlines():
        if line.startswith(name) and line[len(name)] in " {" and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def split_frame(data):
    """(opcode, payload, rest) of the server frame at the start of `data`, or None if partial."""
    if len(data) < 2:
        return None
    length, at = data[1] & 0x7F, 2
    if length == 126:
        if len(data) < 4:
            return None
        length, at = struct.unpack(">H", data[2:4])[0], 4
    elif length == 127:
        if len(data) < 10:
            return None
        length, at = struct.unpack(">Q", data[2:10])[0], 10
    if len(data) < at + length:
        return None
    return data[0] & 0x0F, data[at:at + length], data[at + length:]


def read_frames(sock, timeout=5):
    """Reads server frames until a close frame or EOF; returns (close code or None, pings seen).
    Answers nothing: the caller decides whether the client looks alive."""
    sock.settimeout(timeout)
    data = getattr(sock, "pending", b"")
    pings = 0
    while True:
        while (parsed := split_frame(data)) is not None:
            opcode, payload, data = parsed
            if opcode == 0x8:
                return (struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None), pings
            if opcode == 0x9:
                pings += 1
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return None, pings
        if not chunk:
            return None, pings
        data += chunk


def poll_close(sock):
    """Reads what the server has sent so far without waiting; the close code once a close
    frame (or EOF: -1) is among it, else None."""
    data = getattr(sock, "pending", b"")
    ended = False
    while not ended and select.select([sock], [], [], 0)[0]:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        ended = not chunk
        data += chunk
    while (parsed := split_frame(data)) is not None:
        opcode, payload, data = parsed
        if opcode == 0x8:
            return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else -1
    sock.pending = data
    return -1 if ended else None


def frame_header(opcode, length, fin=True, rsv1=False):
    """A masked client frame's header (with an all-zero mask, so the payload goes as is)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        head = bytes([first, 0x80 | length])
    elif length < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", length)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", length)
    return head + b"\0\0\0\0"


def frame(opcode, payload, fin=True, rsv1=False):
    return frame_header(opcode, len(payload), fin, rsv1) + payload


class RawSocket(socket.socket):
    """A socket that keeps the bytes read past the last message (`pending`, see recv_text)."""


def raw_upgrade(server, path, extra="", rcvbuf=None):
    """A raw socket past the WebSocket handshake, for sending frames by hand. With `rcvbuf`,
    the receive buffer is set small before connecting (a client that reads nothing)."""
    sock = RawSocket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def masked(opcode, payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def still_serves(server):
    async def check():
        url = f"ws://{server.base}/ws/chat/ok?token={server.token('other')}"
        async with websockets.connect(url) as ws:
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    asyncio.run(check())


def test_a_ping_flood_from_a_client_that_never_reads_is_held_to_the_queue_bound(make_server):
    # No message rate, to show the queue bound alone: pongs count against max_queued_bytes
    # (1 MiB by default), past which the client is closed as a slow consumer.
    server = make_server(env={"SWITCHBOARD_CLIENT_MESSAGE_RATE": "0"})
    sock = raw_upgrade(server, f"/ws/chat/flood?token={server.token('mallory')}")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = rss_kib(server.proc.pid)
    ping = masked(0x9, b"p" * 125)
    burst = ping * 1000
    deadline = time.monotonic() + 20
    sent = 0
    sock.settimeout(2)
    try:
        while sent < 200_000 and time.monotonic() < deadline:
            sock.sendall(burst)
            sent += 1000
    except (socket.timeout, OSError):
        pass  # the node stopped reading a client that does not read: the bound holds
    time.sleep(0.5)
    grown = rss_kib(server.proc.pid) - before
    # 200k queued pongs would be over 25 MiB; the bound is 1 MiB of queue plus bookkeeping.
    assert grown < 8 * 1024, f"RSS grew {grown} KiB after {sent} pings"
    still_serves(server)
    sock.close()


def test_a_ping_flood_is_closed_by_the_message_rate(make_server):
    server = make_server(env={"SWITCHBOARD_CLIENT_MESSAGE_RATE": "50"})
    sock = raw_upgrade(server, f"/ws/chat/flood?token={server.token('mallory')}")
    sock.sendall(masked(0x9, b"x") * 500)
    sock.settimeout(5)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        at = data.find(b"\x88")
        if at >= 0 and len(data) >= at + 4:
            break
    at = data.find(b"\x88")
    assert at >= 0, "no close frame"
    assert struct.unpack(">H", data[at + 2:at + 4])[0] == 4004
    sock.close()
    still_serves(server)


def test_slowloris_headers_from_one_address_are_held_to_the_per_ip_pending_bound(make_server):
    # Each socket sends part of a request and then nothing. From one address at most
    # server.max_pending_handshakes_per_ip (256 by default) are kept; the rest are closed at
    # once, before the node reads or answers anything; other addresses are served meanwhile.
    server = make_server(env={"SWITCHBOARD_HANDSHAKE_TIMEOUT": "60s"})
    before = rss_kib(server.proc.pid)
    opened = []
    for _ in range(1000):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            sock.sendall(b"GET /ws/chat/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        except OSError:
            pass  # closed already
        opened.append(sock)
    closed = set()
    deadline = time.monotonic() + 20
    while len(closed) < 1000 - 256 and time.monotonic() < deadline:
        for i, sock in enumerate(opened):
            if i in closed:
                continue
            sock.setblocking(False)
            try:
                if sock.recv(4096) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(0.05)
    held = rss_kib(server.proc.pid) - before
    assert len(closed) == 1000 - 256, f"{len(closed)} of 1000 closed"
    assert min(closed) >= 256, "the first 256 are the ones kept"

    async def other_address():
        url = f"ws://{server.base}/ws/chat/ok?token={server.token('other')}"
        async with websockets.connect(url, local_addr=("127.0.0.2", 0)) as ws:
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    asyncio.run(other_address())
    print(f"RSS grew {held} KiB with 256 slow sockets held, 744 closed")
    for sock in opened:
        sock.close()
    # The node frees the places as it sees the sockets end; until then 127.0.0.1 is refused.
    deadline = time.monotonic() + 10
    while True:
        try:
            _, body = server.get("/metrics")
            break
        except OSError:
            assert time.monotonic() < deadline, "127.0.0.1 is served again once its sockets end"
            time.sleep(0.05)
    assert 'switchboard_pending_closed_total{reason="per_ip"} 744' in body, body


PROTOCOL_CONFIG = """
[token]
allow_anonymous = true

[channels.namespaces.open]
subscribe = "anonymous"
presence = true
join_leave = true
"""


def protocol_server(make_server, tmp_path, env=None):
    """A node whose `open:` namespace any client-protocol connection may subscribe to."""
    config = tmp_path / "hostile.toml"
    config.write_text(PROTOCOL_CONFIG)
    return make_server(args=["--config", str(config)], env=env)


def recv_text(sock, timeout=5, want=0x1):
    """The next text message (or frame of opcode `want`) from the server, others skipped;
    None on a close or EOF."""
    sock.settimeout(timeout)
    data = getattr(sock, "pending", b"")
    while True:
        while (parsed := split_frame(data)) is not None:
            opcode, payload, data = parsed
            if opcode == want:
                sock.pending = data
                return payload.decode(errors="replace")
            if opcode == 0x8:
                sock.pending = b""
                return None
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            sock.pending = data
            raise
        if not chunk:
            return None
        data += chunk


def protocol_client(server, rcvbuf=None, subscribe=()):
    """A raw client-protocol connection, connected and subscribed; returns the socket."""
    sock = raw_upgrade(server, "/connection/websocket", rcvbuf=rcvbuf)
    commands = [{"id": 1, "connect": {}}]
    commands += [{"id": 2 + i, "subscribe": {"channel": c}} for i, c in enumerate(subscribe)]
    sock.sendall(frame(0x1, "\n".join(json.dumps(c) for c in commands).encode()))
    replies = []
    while len(replies) < len(commands):
        text = recv_text(sock)
        assert text is not None, f"closed during setup after {replies}"
        replies += [json.loads(line) for line in text.split("\n") if '"id"' in line]
    assert not [r for r in replies if "error" in r], replies
    return sock


def api_batch_publish(server, channel, count, data="a"):
    """Publishes `count` publications through the API, a thousand per request."""
    while count > 0:
        n = min(count, 1000)
        status, body = server.api("batch", {"commands": [{"publish": {"channel": channel, "data": data}}] * n})
        assert status == 200, body
        count -= n


def test_a_request_trickled_byte_by_byte_is_closed_by_the_handshake_timeout(make_server):
    server = make_server(env={"SWITCHBOARD_HANDSHAKE_TIMEOUT": "1s"})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET /ws/chat/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    # Ten seconds of header bytes, one every 50 ms: each byte arrives well within any idle
    # timeout, so only a deadline on the whole request ends it.
    trickle = b"X-Slow: " + b"a" * 200
    closed = False
    for byte in trickle:
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            closed = True  # EOF (or an error response): the node gave up on the request
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
    assert closed, "a request trickled for 10 s was still open (handshake_timeout is 1 s)"
    sock.close()
    still_serves(server)


def test_a_frame_header_followed_by_silence_is_closed_by_the_heartbeat(make_server):
    server = make_server(env={"SWITCHBOARD_HEARTBEAT_INTERVAL": "200ms"})
    sock = raw_upgrade(server, f"/ws/chat/slow?token={server.token('mallory')}")
    sock.sendall(frame_header(0x1, 1000))
    code, _ = read_frames(sock, timeout=5)
    assert code == 4001
    sock.close()
    still_serves(server)


def test_a_frame_trickled_byte_by_byte_is_closed_by_the_heartbeat(make_server):
    # Bytes of an unfinished frame are not a sign of life: only a whole frame is.
    server = make_server(env={"SWITCHBOARD_HEARTBEAT_INTERVAL": "200ms"})
    sock = raw_upgrade(server, f"/ws/chat/slow?token={server.token('mallory')}")
    sock.sendall(frame_header(0x1, 1000))
    code = None
    for _ in range(200):  # 10 s of one byte per 50 ms, far longer than two intervals
        time.sleep(0.05)
        code = poll_close(sock)
        if code is not None:
            break
        try:
            sock.sendall(b"a")
        except OSError:
            code = poll_close(sock)
            break
    assert code == 4001, "a client trickling one frame kept its connection past the heartbeat"
    sock.close()
    still_serves(server)


def test_a_message_trickled_one_fragment_at_a_time_ends_at_the_fragment_bound(make_server):
    # Every fragment is a whole frame (a sign of life), so the heartbeat alone would keep this
    # open for as long as the client trickles; the fragment bound (max_message / 64, at least
    # 64 frames) ends it. With the smallest message limit that is 64 frames.
    server = make_server(env={"SWITCHBOARD_HEARTBEAT_INTERVAL": "200ms",
                              "SWITCHBOARD_MAX_MESSAGE_BYTES": "125"})
    sock = raw_upgrade(server, f"/ws/chat/slow?token={server.token('mallory')}")
    sock.sendall(frame(0x1, b"", fin=False))
    code = None
    for _ in range(500):  # 10 s of one fragment per 20 ms, each well within the heartbeat
        time.sleep(0.02)
        code = poll_close(sock)
        if code is not None:
            break
        try:
            sock.sendall(frame(0x0, b"", fin=False))
        except OSError:
            code = poll_close(sock)
            break
    assert code == 1009
    sock.close()
    still_serves(server)


def test_a_message_in_thousands_of_one_byte_fragments_is_refused_past_the_fragment_bound(make_server):
    server = make_server(env={"SWITCHBOARD_ECHO": "true", "SWITCHBOARD_ALLOW_ANONYMOUS": "true"})
    bound = MAX_MESSAGE // 64  # 1024 frames for the default 64 KiB
    sock = raw_upgrade(server, "/ws")
    # At the bound, the message is whole and echoed.
    fragments = [frame(0x1, b"a", fin=False)] + [frame(0x0, b"a", fin=False)] * (bound - 2) + [frame(0x0, b"a")]
    sock.sendall(b"".join(fragments))
    assert recv_text(sock) == "a" * bound
    # Thousands of fragments: refused at the bound's first excess frame, not after all of them.
    flood = [frame(0x1, b"a", fin=False)] + [frame(0x0, b"a", fin=False)] * 5000 + [frame(0x0, b"a")]
    try:
        sock.sendall(b"".join(flood))
    except OSError:
        pass
    code, _ = read_frames(sock)
    assert code == 1009
    sock.close()
    still_serves(server)


def test_a_deflate_bomb_is_closed_1009_and_costs_no_more_than_the_inflate_bound(make_server):
    server = make_server(env={"SWITCHBOARD_ECHO": "true", "SWITCHBOARD_ALLOW_ANONYMOUS": "true",
                              "SWITCHBOARD_PERMESSAGE_DEFLATE": "true"})
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\0" * (32 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert bomb.endswith(b"\0\0\xff\xff")
    bomb = bomb[:-4]
    assert len(bomb) < MAX_MESSAGE, "the bomb fits in one message: 32 MiB from ~32 KiB"
    clients = 8
    socks = [raw_upgrade(server, "/ws", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")
             for _ in range(clients)]
    before = rss_kib(server.proc.pid)
    for sock in socks:
        sock.sendall(frame(0x1, bomb, rsv1=True))
    codes = [read_frames(sock)[0] for sock in socks]
    assert codes == [1009] * clients
    grown = (peak_kib(server.proc.pid) - before) * 1024
    bound = clients * worst_case_bytes(deflate=True, max_subscriptions=0) + BASELINE
    assert grown < bound, f"peak RSS grew {grown} bytes for {clients} bombs (bound {bound})"
    for sock in socks:
        sock.close()
    still_serves(server)


def test_subscribe_unsubscribe_churn_is_held_to_the_subscribe_rate(make_server, tmp_path):
    server = protocol_server(make_server, tmp_path)
    watcher = protocol_client(server, subscribe=["open:churn"])
    sock = protocol_client(server)
    # One message of 120 subscribe/unsubscribe pairs (each would push a join and a leave to
    # the watcher): the subscribe rate's burst is max_subscriptions (128), then error 111.
    commands = []
    for i in range(120):
        commands.append({"id": 10 + 2 * i, "subscribe": {"channel": "open:churn"}})
        commands.append({"id": 11 + 2 * i, "unsubscribe": {"channel": "open:churn"}})
    sock.sendall(frame(0x1, "\n".join(json.dumps(c) for c in commands).encode()))
    replies = []
    while len(replies) < len(commands):
        text = recv_text(sock)
        assert text is not None
        replies += [json.loads(line) for line in text.split("\n") if '"id"' in line]
    done = [r for r in replies if "error" not in r]
    limited = [r for r in replies if r.get("error", {}).get("code") == 111]
    assert len(done) + len(limited) == len(commands), replies
    assert MAX_SUBSCRIPTIONS <= len(done) < MAX_SUBSCRIPTIONS + 32, len(done)
    # The watcher was pushed no more joins and leaves than the subscribes that were done.
    pushes = 0
    while True:
        try:
            text = recv_text(watcher, timeout=1)
        except socket.timeout:
            break
        if text is None:
            break
        pushes += text.count('"join"') + text.count('"leave"')
    assert pushes <= len(done)
    sock.close()
    watcher.close()
    still_serves(server)


def test_an_oversized_client_protocol_message_is_closed_1009(make_server, tmp_path):
    server = protocol_server(make_server, tmp_path)
    sock = protocol_client(server)
    command = json.dumps({"id": 2, "publish": {"channel": "open:x", "data": "a" * MAX_MESSAGE}})
    sock.sendall(frame(0x1, command.encode()))
    code, _ = read_frames(sock)
    assert code == 1009
    sock.close()
    still_serves(server)


def test_a_client_protocol_subscriber_that_never_reads_is_closed_as_slow_within_the_queue_bound(make_server, tmp_path):
    server = protocol_server(make_server, tmp_path)
    sock = protocol_client(server, rcvbuf=4096, subscribe=["open:firehose"])
    before = rss_kib(server.proc.pid)
    payload = "x" * 4000
    published = 0
    while metric(server, "switchboard_slow_consumer_drops_total") < 1 and published < 1000:
        api_batch_publish(server, "open:firehose", 100, payload)
        published += 100
    # Counted once the connection has ended: after its close linger (2 s), as it reads nothing.
    assert wait_for(lambda: metric(server, "switchboard_slow_consumer_drops_total") == 1)
    assert wait_for(lambda: metric(server, "switchboard_disconnects_total", 'code="3008"') == 1)
    grown = (peak_kib(server.proc.pid) - before) * 1024
    bound = worst_case_bytes() + BASELINE
    assert grown < bound, f"peak RSS grew {grown} bytes (bound {bound})"
    sock.close()
    still_serves(server)


def test_tiny_publications_to_clients_that_never_read_cost_no_more_than_their_queue_bound(make_server):
    # A 1-byte room message is a 3-byte frame shared by every member; what each member's
    # queue holds per frame is its slot, so each frame is charged its slot too.
    max_queued = 256 * 1024
    server = make_server(env={"SWITCHBOARD_MAX_QUEUED_BYTES": str(max_queued)})
    clients = 16
    token = server.token("mallory")
    socks = [raw_upgrade(server, f"/ws/chat/tiny?token={token}", rcvbuf=4096) for _ in range(clients)]
    before = rss_kib(server.proc.pid)
    published = 0
    # Without the slot charge a member holds max_queued / 3 frames: 87,000, then the kernel's.
    while metric(server, "switchboard_slow_consumer_drops_total") < clients and published < 150_000:
        api_batch_publish(server, "chat:tiny", 10_000)
        published += 10_000
    grown = (peak_kib(server.proc.pid) - before) * 1024
    bound = clients * worst_case_bytes(max_queued=max_queued, max_subscriptions=0) + BASELINE
    assert grown < bound, f"peak RSS grew {grown} bytes for {clients} stalled members (bound {bound})"
    assert wait_for(lambda: metric(server, "switchboard_slow_consumer_drops_total") == clients)
    for sock in socks:
        sock.close()
    still_serves(server)


def test_clients_driven_to_their_worst_case_stay_within_the_documented_bound_each(make_server, tmp_path):
    """Each client: max subscriptions (long names, each a new channel with presence), a
    fragmented message one byte short of the limit held, a frame one byte short of the limit
    in flight, then reads nothing while publications fill its queue until it is dropped."""
    server = protocol_server(make_server, tmp_path)
    pid = server.proc.pid
    clients = 12
    start = rss_kib(pid)
    socks = []
    for n in range(clients):
        channels = ["open:shared"] + [f"open:{n:03}-{i:03}-" + "c" * 240 for i in range(MAX_SUBSCRIPTIONS - 1)]
        socks.append(protocol_client(server, rcvbuf=4096, subscribe=channels))
    subscribed = rss_kib(pid)
    for sock in socks:
        sock.sendall(frame(0x1, b"a" * (MAX_MESSAGE - 1), fin=False))
        sock.sendall(frame(0x9, b"sync"))
    for sock in socks:
        # The pong proves the first fragment was read; it precedes the frame left in flight.
        assert recv_text(sock, want=0xA) == "sync"
    for sock in socks:
        sock.sendall(frame_header(0x0, MAX_MESSAGE) + b"a" * (MAX_MESSAGE - 1))
    time.sleep(0.5)  # ordering only: let the node read what is in flight before it stops reading
    inbound = rss_kib(pid)
    published = 0
    while metric(server, "switchboard_slow_consumer_drops_total") < clients and published < 40_000:
        api_batch_publish(server, "open:shared", 2000, 1)
        published += 2000
    assert wait_for(lambda: metric(server, "switchboard_slow_consumer_drops_total") == clients)
    peak = peak_kib(pid)
    per_client = (peak - start) * 1024 / clients
    bound = worst_case_bytes()
    print(f"\nworst case x{clients}: rss {start} KiB at start, {subscribed} subscribed "
          f"({(subscribed - start) * 1024 / clients / MAX_SUBSCRIPTIONS:.0f} B/subscription), "
          f"{inbound} with inbound held, peak {peak} KiB: {per_client / 1024:.0f} KiB per client "
          f"(bound {bound / 1024:.0f} KiB), {published} publications")
    assert (peak - start) * 1024 < clients * bound + BASELINE
    for sock in socks:
        sock.close()
    still_serves(server)
