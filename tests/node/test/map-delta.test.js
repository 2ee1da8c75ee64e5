'use strict';
// Per-key fossil delta on map subscriptions, map-clients presence and `map_client_key =
// "user_id"`, with the real `centrifuge` SDK (JSON and Protobuf builds).
//
// A map subscriber that asks for `delta: 'fossil'` gets each key's new value as a delta against
// that key's previous one (its state entries and a key's first value whole), ending with the
// same values as a subscriber without delta in fewer bytes on its socket; a removal resets the
// key; a recovery after a reconnect and live updates after it decode right. A map namespace with
// `map_clients_presence_channel_prefix` lists its subscribers' client ids in a `map_clients`
// map, which `newMapClientsSubscription` reads: a key appears on subscribe and goes on
// unsubscribe and on disconnect. Bad input (an unknown delta type, a map-clients subscription
// to a plain map, a client writing into a map-clients map) is refused with a clear code and the
// connection goes on being served.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { BROKERS, startBroker } = require('../lib/brokers');
const { Server, cleanupsFor, connectionToken, firstEvent, rejectionOf, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { rawClient } = require('../lib/raw');
const { Clients, WebSocket, subscribed, withClients } = require('../lib/sdk');

const valueOf = (data) => (data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(data)) : data);
const payload = (protobuf, value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);

/** A `ws` WebSocket class that adds every received message's bytes to `counter.bytes`. */
function countingWebSocket(counter) {
  return class CountingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on('message', (data) => {
        const size = (b) => (b.byteLength !== undefined ? b.byteLength : b.length);
        counter.bytes += Array.isArray(data) ? data.reduce((n, b) => n + size(b), 0) : size(data);
      });
    }
  };
}

/** A ~3 KB player record whose score (and one of its items) changes with `version`. */
function playerAt(key, version) {
  const items = [];
  for (let i = 0; i < 30; i++) items.push({ id: i, name: `item ${i} of ${key}`, level: i === version % 30 ? version : i });
  return { key, version, score: version * 10, items };
}

const MAP = { subscribe: 'authenticated', publish: 'subscribers', map: true, history_size: 100, history_ttl: '5m', recover: true };
const cfg = () =>
  config({
    board: MAP,
    room: { ...MAP, recover: false, map_clients_presence_channel_prefix: 'clients:' },
    clients: { ...MAP, recover: false, map_clients: true },
    mine: { ...MAP, map_client_key: 'user_id' },
    news: { subscribe: 'authenticated', history_size: 10, history_ttl: '5m' },
  });

/** A map subscription recording its `sync` and `update` events. */
function mapSubscription(client, channel, options = {}, clients = false) {
  const sub = clients ? client.newMapClientsSubscription(channel, options) : client.newMapSubscription(channel, options);
  sub.syncs = [];
  sub.updates = [];
  sub.on('sync', (ctx) => sub.syncs.push(ctx));
  sub.on('update', (ctx) => sub.updates.push(ctx));
  sub.on('error', () => {});
  return sub;
}

/** Subscribes `sub` and resolves with the first of 'subscribed' and 'unsubscribed'. */
async function outcomeOf(sub) {
  const outcome = firstEvent(sub, ['subscribed', 'unsubscribed']);
  sub.subscribe();
  return outcome;
}

async function subscribe(sub) {
  const { name, ctx } = await outcomeOf(sub);
  if (name !== 'subscribed') throw new Error(`map subscribe failed: ${name} ${JSON.stringify(ctx)}`);
  return ctx;
}

const mapPublish = (server, channel, key, data) => server.call('map_publish', { channel, key, data });
const mapRemove = (server, channel, key) => server.call('map_remove', { channel, key });
const keyed = (updates) => updates.map((u) => (u.removed ? `-${u.key}` : `${u.key}=${valueOf(u.data)?.version}`));

for (const protobuf of [false, true]) {
  const label = protobuf ? 'protobuf' : 'json';

  test(`${label}: a map delta subscriber gets each key as a delta against its own previous value, the same values as a plain one in far fewer bytes`, async () => {
    await withClients({ config: cfg() }, async (server, clients) => {
      // Pre-seeded: the state entries go whole and are each key's first base.
      await mapPublish(server, 'board:d', 'a', playerAt('a', 0));
      await mapPublish(server, 'board:d', 'b', playerAt('b', 0));
      const plainBytes = { bytes: 0 };
      const deltaBytes = { bytes: 0 };
      const plainClient = await clients.connected(server.wsUrl, connectionToken('p'), { protobuf, websocket: countingWebSocket(plainBytes) });
      const deltaClient = await clients.connected(server.wsUrl, connectionToken('d'), { protobuf, websocket: countingWebSocket(deltaBytes) });
      const plain = mapSubscription(plainClient, 'board:d');
      const viaDelta = mapSubscription(deltaClient, 'board:d', { delta: 'fossil' });
      await subscribe(plain);
      const subscribedCtx = await subscribe(viaDelta);
      assert.equal(viaDelta.syncs[0].entries.length, 2, JSON.stringify(subscribedCtx));
      assert.deepEqual(viaDelta.syncs[0].entries.map((e) => valueOf(e.data)), plain.syncs[0].entries.map((e) => valueOf(e.data)));
      plainBytes.bytes = 0;
      deltaBytes.bytes = 0;

      // Interleaved versions of a and b, and a new key c twice.
      const N = 12;
      for (let v = 1; v <= N; v++) await mapPublish(server, 'board:d', v % 2 ? 'a' : 'b', playerAt(v % 2 ? 'a' : 'b', v));
      await mapPublish(server, 'board:d', 'c', playerAt('c', 1));
      await mapPublish(server, 'board:d', 'c', playerAt('c', 2));
      const total = N + 2;
      await until(() => plain.updates.length >= total && viaDelta.updates.length >= total, 'every update at both');
      assert.deepEqual(viaDelta.updates.map((u) => [u.key, valueOf(u.data)]), plain.updates.map((u) => [u.key, valueOf(u.data)]));
      assert.deepEqual(valueOf(viaDelta.updates[N - 1].data), playerAt(N % 2 ? 'a' : 'b', N));
      const stats = viaDelta.deltaStats();
      // 2 state entries and c's first value whole; every other update a delta.
      assert.equal(stats.numPublications, 2 + total, JSON.stringify(stats));
      assert.equal(stats.numFullPayloads, 3, JSON.stringify(stats));
      assert.equal(stats.numDeltaPayloads, total - 1, JSON.stringify(stats));
      console.log(`${label}: ${total} map updates of ~${JSON.stringify(playerAt('a', 1)).length} B over 3 keys: plain ${plainBytes.bytes} B on the wire, per-key delta ${deltaBytes.bytes} B`);
      assert.ok(deltaBytes.bytes * 4 < plainBytes.bytes, `delta ${deltaBytes.bytes} B vs plain ${plainBytes.bytes} B`);

      // A removal resets the key: its next value goes whole, the one after is a delta again.
      await mapRemove(server, 'board:d', 'a');
      await mapPublish(server, 'board:d', 'a', playerAt('a', 100));
      await mapPublish(server, 'board:d', 'a', playerAt('a', 101));
      await until(() => viaDelta.updates.length >= total + 3 && plain.updates.length >= total + 3, 'the removal and two sets');
      assert.deepEqual(keyed(viaDelta.updates.slice(total)), ['-a', 'a=100', 'a=101']);
      assert.deepEqual(keyed(plain.updates.slice(total)), ['-a', 'a=100', 'a=101']);
      const after = viaDelta.deltaStats();
      // (This SDK counts no payload for a removal.)
      assert.equal(after.numFullPayloads, 3 + 1, `the set after the removal whole: ${JSON.stringify(after)}`);
      assert.equal(after.numDeltaPayloads, total - 1 + 1, JSON.stringify(after));
    });
  });

  test(`${label}: a map delta subscriber recovers after a reconnect and its live deltas decode right after it`, async () => {
    await withClients({ config: cfg() }, async (server, clients) => {
      await mapPublish(server, 'board:r', 'a', playerAt('a', 1));
      const client = await clients.connected(server.wsUrl, connectionToken('r'), { protobuf });
      const sub = mapSubscription(client, 'board:r', { delta: 'fossil' });
      await subscribe(sub);
      await mapPublish(server, 'board:r', 'a', playerAt('a', 2));
      await until(() => sub.updates.length >= 1, 'a live delta');

      const down = firstEvent(client, ['disconnected']);
      client.disconnect();
      await down;
      // Missed: two versions of a, one of b.
      await mapPublish(server, 'board:r', 'a', playerAt('a', 3));
      await mapPublish(server, 'board:r', 'b', playerAt('b', 1));
      await mapPublish(server, 'board:r', 'a', playerAt('a', 4));
      const back = firstEvent(sub, ['subscribed']);
      client.connect();
      const { ctx } = await back;
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      await until(() => sub.updates.length >= 4, 'the recovered updates');
      assert.deepEqual(keyed(sub.updates), ['a=2', 'a=3', 'b=1', 'a=4']);

      const before = sub.deltaStats().numDeltaPayloads;
      await mapPublish(server, 'board:r', 'a', playerAt('a', 5));
      await mapPublish(server, 'board:r', 'b', playerAt('b', 2));
      await until(() => sub.updates.length >= 6, 'live updates after the recovery');
      assert.deepEqual(valueOf(sub.updates[4].data), playerAt('a', 5));
      assert.deepEqual(valueOf(sub.updates[5].data), playerAt('b', 2));
      assert.equal(sub.deltaStats().numDeltaPayloads, before + 2, JSON.stringify(sub.deltaStats()));
    });
  });

  test(`${label}: map-clients presence lists a map's subscribers while subscribed: added on subscribe, removed on unsubscribe and on disconnect`, async () => {
    await withClients({ config: cfg() }, async (server, clients) => {
      const watcher = await clients.connected(server.wsUrl, connectionToken('watcher'), { protobuf });
      const listing = mapSubscription(watcher, 'clients:room:x', {}, true);
      await subscribe(listing);
      assert.deepEqual(listing.syncs[0].entries, []);

      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const bob = await clients.connected(server.wsUrl, connectionToken('bob'), { protobuf });
      const aliceId = alice.connectedCtx.client;
      const bobId = bob.connectedCtx.client;
      const aliceSub = mapSubscription(alice, 'room:x');
      await subscribe(aliceSub);
      await until(() => listing.updates.length >= 1, "alice's entry");
      const bobSub = mapSubscription(bob, 'room:x');
      await subscribe(bobSub);
      await until(() => listing.updates.length >= 2, "bob's entry");
      assert.deepEqual(listing.updates.map((u) => [u.key, !!u.removed]), [[aliceId, false], [bobId, false]]);
      assert.deepEqual(valueOf(listing.updates[0].data), { client: aliceId, user: 'alice' });
      assert.equal(listing.updates[1].info?.user, 'bob', JSON.stringify(listing.updates[1]));

      // A late reader syncs both.
      const reader = await clients.connected(server.wsUrl, connectionToken('reader'), { protobuf });
      const snapshot = mapSubscription(reader, 'clients:room:x', {}, true);
      await subscribe(snapshot);
      assert.deepEqual(snapshot.syncs[0].entries.map((e) => e.key).sort(), [aliceId, bobId].sort());

      bobSub.unsubscribe();
      await until(() => listing.updates.length >= 3, "bob's removal on unsubscribe");
      alice.disconnect();
      await until(() => listing.updates.length >= 4, "alice's removal on disconnect");
      assert.deepEqual(listing.updates.slice(2).map((u) => [u.key, !!u.removed]), [[bobId, true], [aliceId, true]]);
      const final = await clients.connected(server.wsUrl, connectionToken('final'), { protobuf });
      const empty = mapSubscription(final, 'clients:room:x', {}, true);
      await subscribe(empty);
      assert.deepEqual(empty.syncs[0].entries, [], 'nobody listed once everyone left');
    });
  });

  test(`${label}: map_client_key = "user_id" writes and removes the publisher's own user id, whatever key it sent`, async () => {
    await withClients({ config: cfg() }, async (server, clients) => {
      const reader = await clients.connected(server.wsUrl, connectionToken('reader'), { protobuf });
      const sub = mapSubscription(reader, 'mine:x');
      await subscribe(sub);
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const aliceSub = mapSubscription(alice, 'mine:x');
      await subscribe(aliceSub);
      await alice.mapPublish('mine:x', 'someone-else', payload(protobuf, { version: 1 }));
      await until(() => sub.updates.length >= 1, "alice's set");
      await alice.mapRemove('mine:x', 'bob');
      await until(() => sub.updates.length >= 2, "alice's removal");
      assert.deepEqual(keyed(sub.updates), ['alice=1', '-alice']);
    });
  });

  test(`${label}: bad map input is refused with a clear code and the connection goes on being served`, async () => {
    await withClients({ config: cfg() }, async (server, clients) => {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      // A map subscription to a map-clients channel, a map-clients one to a plain map: 108.
      const wrongKind = await outcomeOf(mapSubscription(alice, 'clients:room:q'));
      assert.equal(wrongKind.name, 'unsubscribed', JSON.stringify(wrongKind.ctx));
      assert.equal(wrongKind.ctx.code, 108);
      assert.match(wrongKind.ctx.reason, /map clients channel \(use a map clients subscription\)/);
      const notClients = await outcomeOf(mapSubscription(alice, 'board:q', {}, true));
      assert.equal(notClients.ctx.code, 108, JSON.stringify(notClients.ctx));
      assert.match(notClients.ctx.reason, /not a map clients channel/);
      // Clients do not write the server's record of who is subscribed: 103.
      const written = await rejectionOf(alice.mapPublish('clients:room:q', 'k', payload(protobuf, { v: 1 })));
      assert.equal(written.code, 103, JSON.stringify(written));

      // Still served: a map delta subscription and a stream subscription.
      const sub = mapSubscription(alice, 'board:after', { delta: 'fossil' });
      await subscribe(sub);
      await mapPublish(server, 'board:after', 'k', playerAt('k', 1));
      await mapPublish(server, 'board:after', 'k', playerAt('k', 2));
      await until(() => sub.updates.length >= 2, 'map updates after the refusals');
      assert.deepEqual(valueOf(sub.updates[1].data), playerAt('k', 2));
      assert.equal(sub.deltaStats().numDeltaPayloads, 1);
      const stream = await subscribed(alice, 'news:after');
      await server.publish('news:after', { still: 'here' });
      await until(() => stream.pubs.length >= 1, 'a publication after the refusals');
      assert.equal(alice.state, 'connected');
    });
  });
}

test('raw protocol: an unknown delta type is 107; a filtered map subscription gets whole values; a delta one gets JSON-string state and deltas', async () => {
  await withClients({ config: cfg() }, async (server) => {
    await mapPublish(server, 'board:w', 'a', playerAt('a', 1));
    const raw = await rawClient(server.wsUrl, connectionToken('raw'));
    const bad = await raw.send({ subscribe: { channel: 'board:w', type: 1, phase: 2, delta: 'xdelta' } });
    assert.equal(bad.error?.code, 107, JSON.stringify(bad));

    // With a tags filter a map subscriber may not hold a key's previous value: no delta.
    const filtered = await raw.send({
      subscribe: { channel: 'board:w', type: 1, phase: 2, delta: 'fossil', tf: { key: 'k', cmp: 'eq', val: 'v' } },
    });
    assert.equal(filtered.subscribe?.delta, undefined, JSON.stringify(filtered));

    const live = await raw.send({ subscribe: { channel: 'board:v', type: 1, phase: 2, delta: 'fossil' } });
    assert.equal(live.subscribe?.delta, true, JSON.stringify(live));
    // State entries of a delta subscription carry their JSON as a string (the SDK's base).
    await mapPublish(server, 'board:s', 'k', { v: 1 });
    const state = await raw.send({ subscribe: { channel: 'board:s', type: 1, phase: 2, delta: 'fossil' } });
    assert.equal(state.subscribe.state[0].data, '{"v":1}', JSON.stringify(state));
    await mapPublish(server, 'board:s', 'k', playerAt('k', 1));
    await mapPublish(server, 'board:s', 'k', playerAt('k', 2));
    await until(() => raw.pushes.filter((p) => p.channel === 'board:s').length >= 2, 'two live pushes');
    const pushes = raw.pushes.filter((p) => p.channel === 'board:s').map((p) => p.pub);
    assert.equal(typeof pushes[0].data, 'string');
    assert.equal(pushes[0].delta, undefined, 'its first big value whole (the delta would not be smaller)');
    assert.equal(pushes[1].delta, true, JSON.stringify(pushes[1]));
    raw.ws.close();
  });
});

for (const kind of Object.keys(BROKERS)) {
  test(`${kind} broker, two nodes: a map delta subscriber on one node gets per-key deltas of the sets made through the other`, { timeout: 60000 }, async (t) => {
    const cleanups = cleanupsFor(t);
    const broker = await startBroker(kind);
    cleanups.push(() => broker.stop());
    const nodes = ['a', 'b'].map((name) => new Server({ config: cfg(), env: { ...broker.env, SWITCHBOARD_NODE_NAME: `delta-${name}` } }));
    cleanups.push(() => Promise.all(nodes.map((node) => node.stop())));
    const [nodeA, nodeB] = nodes;
    await Promise.all(nodes.map((node) => node.start()));
    const clients = new Clients();
    cleanups.push(() => clients.closeAll());

    await mapPublish(nodeA, 'board:x', 'a', playerAt('a', 0));
    for (const protobuf of [false, true]) {
      const client = await clients.connected(nodeB.wsUrl, connectionToken(`d-${protobuf}`), { protobuf });
      const plain = mapSubscription(await clients.connected(nodeB.wsUrl, connectionToken(`p-${protobuf}`), { protobuf }), 'board:x');
      const viaDelta = mapSubscription(client, 'board:x', { delta: 'fossil' });
      await subscribe(plain);
      await subscribe(viaDelta);
      const from = viaDelta.updates.length;
      // Sets through node A (the API there), each carrying its key's previous value: deltas at B.
      for (let v = 1; v <= 4; v++) await mapPublish(nodeA, 'board:x', 'a', playerAt('a', v + (protobuf ? 10 : 0)));
      await mapPublish(nodeA, 'board:x', 'fresh', playerAt('fresh', 1));
      await until(() => viaDelta.updates.length >= from + 5 && plain.updates.length >= 5, 'the five sets at node B');
      assert.deepEqual(viaDelta.updates.map((u) => [u.key, valueOf(u.data)]), plain.updates.map((u) => [u.key, valueOf(u.data)]));
      const stats = viaDelta.deltaStats();
      // The state entry and the new key whole; each set of `a` a delta against the one before.
      assert.equal(stats.numFullPayloads, 2, `${protobuf ? 'protobuf' : 'json'}: ${JSON.stringify(stats)}`);
      assert.equal(stats.numDeltaPayloads, 4, `${protobuf ? 'protobuf' : 'json'}: ${JSON.stringify(stats)}`);
      await mapRemove(nodeA, 'board:x', 'fresh');
    }
  });
}
