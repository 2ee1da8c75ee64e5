'use strict';
// The client protocol door (/connection/websocket) in its Protobuf encoding, driven by the
// real `centrifuge` SDK's protobuf build (`centrifuge/build/protobuf`) in Node: binary frames of
// length-delimited client.proto messages, `data` as bytes. The SDK is pointed at the same URL
// as the JSON build and asks for Protobuf its own way; nothing here encodes a frame by hand.
// One behaviour per test, each against its own server process.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { connectionToken, firstEvent, nextEvent, rejectionOf, sleep, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { recoversEveryPublicationThroughANetworkDrop } = require('../lib/outage');
const { WebSocket, errorsOf, subscribed, subscription, withClients } = require('../lib/sdk');

const PB = { protobuf: true };
const utf8 = (text) => new TextEncoder().encode(text);
const textOf = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');

/** `bytes` is a byte array (the protobuf build's `data`) holding exactly `expected`'s bytes. */
function assertBytes(bytes, expected, what) {
  assert.ok(bytes instanceof Uint8Array, `${what}: data is ${Object.prototype.toString.call(bytes)} ${JSON.stringify(bytes)}, not bytes`);
  const want = typeof expected === 'string' ? Buffer.from(expected, 'utf8') : Buffer.from(expected);
  const got = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  assert.ok(got.equals(want), `${what}: got bytes ${got.toString('hex')} (${JSON.stringify(got.toString('utf8'))}), want ${want.toString('hex')} (${JSON.stringify(want.toString('utf8'))})`);
}

/** The JSON value a protobuf publication's bytes hold. */
const jsonOf = (bytes) => JSON.parse(textOf(bytes));

/** A plain door member of /ws/chat/{room}, open; `got` lists `{binary, data}` per frame. */
async function doorMember(server, room, user) {
  const door = new WebSocket(`ws://${server.base}/ws/chat/${room}?token=${connectionToken(user)}`);
  door.got = [];
  door.on('message', (data, isBinary) => door.got.push({ binary: isBinary, data: Buffer.from(data) }));
  await new Promise((resolve, reject) => {
    door.once('open', resolve);
    door.once('error', reject);
    door.once('unexpected-response', (_req, res) => reject(new Error(`door refused: HTTP ${res.statusCode}`)));
  });
  return door;
}

test('protobuf: a client with a token connects, subscribes and receives API publications as the bytes of the JSON text the API was given', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'), PB);
    assert.equal(alice.state, 'connected');
    assert.equal(typeof alice.connectedCtx.client, 'string');
    assert.ok(alice.connectedCtx.client.length > 0, 'the connect reply names the client');
    assert.equal(alice.connectedCtx.transport, 'websocket');

    const sub = await subscribed(alice, 'news:pb');
    assert.equal(sub.subscribedCtx.channel, 'news:pb');

    // The harness sends each `data` as JSON.stringify writes it: that text, key order included,
    // is what the API was given, and what a protobuf subscriber must get as bytes.
    const sent = [{ n: 1 }, { n: 2, text: 'ünïcode ✓', list: [1, 'two', { three: 3 }] }, 'three', 4.5, true];
    for (const data of sent) await server.publish('news:pb', data);
    await until(() => sub.pubs.length >= sent.length, `${sent.length} publications`);
    sub.pubs.forEach((p, i) => assertBytes(p.data, JSON.stringify(sent[i]), `publication ${i + 1}`));
    assert.ok(sub.pubs.every((p) => p.channel === 'news:pb'));

    const channels = await server.call('channels', {});
    assert.equal(channels.channels['news:pb']?.num_clients, 1, JSON.stringify(channels));
    assert.deepEqual(errorsOf(alice), []);
    assert.deepEqual(errorsOf(sub), []);
  });
});

test('protobuf: an idle client answers the server pings (empty Reply / empty Command) and stays connected', async () => {
  // heartbeat_interval 500ms: a client silent for two intervals would be closed with 3012.
  const cfg = config({ news: { subscribe: 'authenticated' } }, { server: { heartbeat_interval: '500ms' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'), PB);
    const sub = await subscribed(alice, 'news:idle');
    await sleep(4000); // eight intervals with nothing but pings and pongs
    assert.equal(alice.state, 'connected');
    const names = alice.events.map((e) => e.name);
    assert.deepEqual(names.filter((n) => n === 'connecting' || n === 'disconnected'), ['connecting'], JSON.stringify(alice.events));
    await server.publish('news:idle', 'still connected');
    await until(() => sub.pubs.length >= 1, 'a publication');
    assertBytes(sub.pubs[0].data, '"still connected"', 'the publication');
    assert.deepEqual(errorsOf(alice), []);
  });
});

test('protobuf: a publication of JSON text from a protobuf client reaches a JSON SDK subscriber as JSON and a plain door member as a text frame', async () => {
  const cfg = config({ chat: { subscribe: 'authenticated', publish: 'subscribers' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const door = await doorMember(server, 'room', 'door-user');
    try {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice', { info: { name: 'Alice' } }), PB);
      const bob = await clients.connected(server.wsUrl, connectionToken('bob'));
      const aliceChat = await subscribed(alice, 'chat:room');
      const bobChat = await subscribed(bob, 'chat:room');

      const payload = '{"text":"from protobuf","n":1,"ok":true}';
      assert.deepEqual(await aliceChat.publish(utf8(payload)), {});

      // The JSON SDK subscriber: the bytes were JSON text, so `data` is that JSON value.
      await until(() => bobChat.pubs.length >= 1, "bob receives alice's publication");
      assert.deepEqual(bobChat.pubs[0].data, { text: 'from protobuf', n: 1, ok: true });
      assert.equal(bobChat.pubs[0].info?.user, 'alice', JSON.stringify(bobChat.pubs[0]));
      assert.equal(bobChat.pubs[0].info?.client, alice.connectedCtx.client);
      assert.deepEqual(bobChat.pubs[0].info?.connInfo, { name: 'Alice' });

      // The plain door member: one text frame, the text as published.
      await until(() => door.got.length >= 1, 'the door receives the publication');
      assert.deepEqual(door.got.map((m) => [m.binary, m.data.toString('utf8')]), [[false, payload]]);

      // The publisher, subscribed too, gets its own bytes back, with its info (conn_info bytes).
      await until(() => aliceChat.pubs.length >= 1, 'alice receives her own publication');
      assertBytes(aliceChat.pubs[0].data, payload, "alice's own publication");
      assert.equal(aliceChat.pubs[0].info?.user, 'alice');
      assert.equal(aliceChat.pubs[0].info?.client, alice.connectedCtx.client);
      assertBytes(aliceChat.pubs[0].info?.connInfo, '{"name":"Alice"}', 'conn_info');
      assert.equal(door.readyState, WebSocket.OPEN);
      assert.deepEqual([alice.state, bob.state], ['connected', 'connected']);
    } finally {
      door.terminate();
    }
  });
});

test('protobuf: a publication of bytes that are not JSON reaches JSON subscribers as a string (text) or base64 (binary) and the door as they are', async () => {
  const cfg = config({ chat: { subscribe: 'authenticated', publish: 'subscribers' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const door = await doorMember(server, 'bytes', 'door-user');
    try {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), PB);
      const bob = await clients.connected(server.wsUrl, connectionToken('bob'));
      const aliceChat = await subscribed(alice, 'chat:bytes');
      const bobChat = await subscribed(bob, 'chat:bytes');

      const binary = Uint8Array.from([0, 1, 2, 250, 255]);
      await aliceChat.publish(utf8('plain words, not JSON'));
      await aliceChat.publish(binary);

      await until(() => bobChat.pubs.length >= 2, 'bob receives both');
      assert.deepEqual(bobChat.pubs.map((p) => p.data), ['plain words, not JSON', Buffer.from(binary).toString('base64')]);
      await until(() => door.got.length >= 2, 'the door receives both');
      assert.deepEqual(door.got.map((m) => [m.binary, m.data.toString('hex')]), [
        [false, Buffer.from('plain words, not JSON').toString('hex')],
        [true, Buffer.from(binary).toString('hex')],
      ]);
      await until(() => aliceChat.pubs.length >= 2, 'alice receives both back');
      assertBytes(aliceChat.pubs[0].data, 'plain words, not JSON', 'text');
      assertBytes(aliceChat.pubs[1].data, binary, 'binary');
    } finally {
      door.terminate();
    }
  });
});

test('protobuf: presence and presence_stats list every subscriber, conn_info as the bytes of its JSON', async () => {
  const cfg = config({ room: { subscribe: 'authenticated', presence: true } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice', { info: { name: 'Alice' } }), PB);
    const bob = await clients.connected(server.wsUrl, connectionToken('bob', { info: { name: 'Bob' } }));
    const bob2 = await clients.connected(server.wsUrl, connectionToken('bob'), PB);
    const subs = [await subscribed(alice, 'room:1'), await subscribed(bob, 'room:1'), await subscribed(bob2, 'room:1')];

    const presence = await subs[0].presence();
    const infos = Object.entries(presence.clients);
    assert.equal(infos.length, 3, JSON.stringify(presence));
    const byClient = Object.fromEntries(infos);
    assert.equal(byClient[alice.connectedCtx.client]?.user, 'alice');
    assertBytes(byClient[alice.connectedCtx.client]?.connInfo, '{"name":"Alice"}', "alice's conn_info");
    assert.equal(byClient[bob.connectedCtx.client]?.user, 'bob');
    assertBytes(byClient[bob.connectedCtx.client]?.connInfo, '{"name":"Bob"}', "bob's conn_info");
    assert.equal(byClient[bob2.connectedCtx.client]?.user, 'bob');
    assert.equal(byClient[bob2.connectedCtx.client]?.conn_info?.length ?? 0, 0, 'no info, no conn_info');
    for (const [id, info] of infos) assert.equal(info.client, id);

    assert.deepEqual(await subs[2].presenceStats(), { numClients: 3, numUsers: 2 });
    // The JSON client's view of the same channel agrees.
    assert.equal(Object.keys((await subs[1].presence()).clients).length, 3);
  });
});

test('protobuf: history (limit, reverse, since, limit 0) gives the publications as bytes with plain-number offsets', async () => {
  const cfg = config({ room: { subscribe: 'authenticated', history_size: 5, history_ttl: '5m' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'), PB);
    const sub = await subscribed(alice, 'room:1');
    for (let n = 1; n <= 7; n++) await server.publish('room:1', { n });
    await until(() => sub.pubs.length >= 7, '7 publications');
    assert.deepEqual(sub.pubs.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7]);

    // Only the last history_size (5) are kept.
    const all = await sub.history({ limit: 100 });
    assert.equal(all.offset, 7);
    assert.equal(typeof all.epoch, 'string');
    assert.ok(all.epoch.length > 0);
    // A subscription that does not recover may carry no stream position (as over JSON).
    assert.equal(all.epoch, sub.subscribedCtx.streamPosition?.epoch ?? all.epoch);
    assert.deepEqual(all.publications.map((p) => p.offset), [3, 4, 5, 6, 7]);
    all.publications.forEach((p) => assertBytes(p.data, JSON.stringify({ n: p.offset }), `history offset ${p.offset}`));

    const first3 = await sub.history({ limit: 3 });
    assert.deepEqual(first3.publications.map((p) => p.offset), [3, 4, 5]);
    const last2 = await sub.history({ limit: 2, reverse: true });
    assert.deepEqual(last2.publications.map((p) => [p.offset, jsonOf(p.data).n]), [[7, 7], [6, 6]]);
    const since = await sub.history({ limit: 100, since: { offset: 5, epoch: all.epoch } });
    assert.deepEqual(since.publications.map((p) => p.offset), [6, 7]);
    const position = await sub.history({ limit: 0 });
    assert.deepEqual([position.publications.length, position.offset, position.epoch], [0, 7, all.epoch]);
    assert.equal(alice.state, 'connected');
  });
});

test('protobuf: error replies carry their codes (102, 103, 108) and the connection keeps working', async () => {
  const cfg = config({
    chat: { subscribe: 'authenticated', publish: 'subscribers' },
    ro: { subscribe: 'authenticated', publish: 'none' },
  });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'), PB);
    const bad = subscription(alice, 'nowhere:x');
    const refused = nextEvent(bad, 'unsubscribed');
    bad.subscribe();
    assert.equal((await refused).code, 102);

    await subscribed(alice, 'ro:news');
    const denied = await rejectionOf(alice.publish('ro:news', utf8('"not allowed"')));
    assert.equal(denied.code, 103, JSON.stringify(denied));
    const off = await rejectionOf(alice.presence('ro:news'));
    assert.equal(off.code, 108, JSON.stringify(off));

    const sub = await subscribed(alice, 'chat:after');
    await sub.publish(utf8('"after the refusals"'));
    await until(() => sub.pubs.length >= 1, 'a publication after the refusals');
    assertBytes(sub.pubs[0].data, '"after the refusals"', 'the publication');
    assert.equal(alice.state, 'connected');
  });
});

test('protobuf: join and leave pushes reach a protobuf subscriber with the client info', async () => {
  const cfg = config({ lobby: { subscribe: 'authenticated', presence: true, join_leave: true } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'), PB);
    const watcher = await subscribed(alice, 'lobby:main');
    const bob = await clients.connected(server.wsUrl, connectionToken('bob', { info: { name: 'Bob' } }));
    const isBob = (ctx) => ctx.info?.user === 'bob';

    const joined = nextEvent(watcher, 'join', isBob);
    const bobSub = await subscribed(bob, 'lobby:main');
    const join = await joined;
    assert.equal(join.channel, 'lobby:main');
    assert.equal(join.info.client, bob.connectedCtx.client);
    assertBytes(join.info.connInfo, '{"name":"Bob"}', "the join's conn_info");

    const left = nextEvent(watcher, 'leave', isBob);
    bobSub.unsubscribe();
    const leave = await left;
    assert.equal(leave.info.client, bob.connectedCtx.client);
    assert.equal(alice.state, 'connected');
  });
});

// The connect reply's `subs` is a map of SubscribeResult: every entry must carry its value, even
// an empty one, or the SDK (protobufjs) decodes it as null.
test('protobuf: server-side subscriptions from the token\'s channels claim deliver publications as bytes', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const client = clients.client(server.wsUrl, { ...PB, token: connectionToken('alice', { channels: ['news:pushed', '#alice'] }) });
    const serverSubs = [];
    client.on('subscribed', (ctx) => serverSubs.push(ctx.channel));
    const outcome = firstEvent(client, ['connected', 'disconnected']);
    client.connect();
    const { name, ctx } = await outcome;
    assert.equal(name, 'connected', JSON.stringify(ctx));
    await until(() => serverSubs.length >= 2, "'subscribed' for both server-side channels");
    assert.deepEqual([...serverSubs].sort(), ['#alice', 'news:pushed']);

    await server.publish('news:pushed', { n: 1 });
    await server.publish('#alice', { n: 2 });
    const pubs = () => client.events.filter((e) => e.name === 'publication').map((e) => e.ctx);
    await until(() => pubs().length >= 2, 'two server-side publications');
    assert.deepEqual(pubs().map((p) => p.channel), ['news:pushed', '#alice']);
    assertBytes(pubs()[0].data, '{"n":1}', 'news:pushed');
    assertBytes(pubs()[1].data, '{"n":2}', '#alice');
  });
});

test("protobuf: the client's network drops while publications flow: the SDK reconnects and recovers every one, once, in order", async () => {
  await recoversEveryPublicationThroughANetworkDrop({ connectOptions: PB, numberOf: (data) => jsonOf(data).n });
});

test('protobuf and JSON: a JSON SDK client and a protobuf SDK client of one channel both get every API publication, in order', async () => {
  const cfg = config({ mixed: { subscribe: 'authenticated', history_size: 100, history_ttl: '5m' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const jsonClient = await clients.connected(server.wsUrl, connectionToken('json-user'));
    const pbClient = await clients.connected(server.wsUrl, connectionToken('pb-user'), PB);
    const jsonSub = await subscribed(jsonClient, 'mixed:one');
    const pbSub = await subscribed(pbClient, 'mixed:one');

    const sent = [];
    for (let n = 1; n <= 40; n++) {
      const data = n % 4 === 0 ? `text ${n} ✓` : n % 4 === 1 ? { n, nested: { list: [n, String(n)] } } : n % 4 === 2 ? n : [n, { s: 'ü' }];
      sent.push(data);
      await server.publish('mixed:one', data);
    }
    await until(() => jsonSub.pubs.length >= sent.length && pbSub.pubs.length >= sent.length, `${sent.length} publications on both`);
    const offsets = sent.map((_, i) => i + 1);
    assert.deepEqual(jsonSub.pubs.map((p) => p.offset), offsets);
    assert.deepEqual(pbSub.pubs.map((p) => p.offset), offsets);
    assert.deepEqual(jsonSub.pubs.map((p) => p.data), sent);
    pbSub.pubs.forEach((p, i) => assertBytes(p.data, JSON.stringify(sent[i]), `protobuf publication ${i + 1}`));

    const channels = await server.call('channels', {});
    assert.equal(channels.channels['mixed:one']?.num_clients, 2, JSON.stringify(channels));
    assert.deepEqual([errorsOf(jsonClient), errorsOf(pbClient), errorsOf(jsonSub), errorsOf(pbSub)], [[], [], [], []]);
  });
});
