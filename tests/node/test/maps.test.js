'use strict';
// Map subscriptions (a namespace with `map = true`): the real `centrifuge` SDK's
// `newMapSubscription` syncs the state in phases (pages of keys, then the stream catch-up,
// then live), keys are set and removed through the server API (`map_publish`, `map_remove`)
// and from the SDK (under the publisher's client id with `map_client_key = "client_id"`),
// a key TTL removes keys, a recoverable map recovers after a reconnect and
// a map whose stream no longer holds the gap starts over from the state. Map commands to a
// stream channel, and stream commands to a map channel, are refused with 108 and the
// connection goes on. JSON and Protobuf builds; one raw-protocol test checks that what
// changes between two state pages reaches the subscriber. On Redis and on NATS (a private
// redis-server or nats-server on a free port) two nodes share maps: a keyed publish on one
// reaches map subscribers on the other, a subscriber syncing on one sees the keys set through
// the other, removals and key TTL expiries reach both once, and a lost gap is 112 there too.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { BROKERS, startBroker } = require('../lib/brokers');
const { Server, cleanupsFor, connectionToken, firstEvent, nextEvent, rejectionOf, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { rawClient } = require('../lib/raw');
const { Clients, subscribed, withClients } = require('../lib/sdk');

/** The JSON value of an entry's data, whatever the build (protobuf gives bytes). */
const valueOf = (data) => (data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(data)) : data);
/** An entry list as `{key: value}`. */
const asObject = (entries) => Object.fromEntries(entries.map((e) => [e.key, valueOf(e.data)]));
/** What the SDK's protobuf build publishes: bytes. */
const payload = (protobuf, value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);

const MAP_NS = {
  subscribe: 'authenticated',
  publish: 'subscribers',
  map: true,
  history_size: 100,
  history_ttl: '5m',
  recover: true,
};

function mapConfig(extra = {}, options = {}) {
  return config({
    board: MAP_NS,
    // A map that does not recover: a reconnect syncs the whole state again.
    scratch: { ...MAP_NS, recover: false },
    // A stream short enough to lose a gap.
    short: { ...MAP_NS, history_size: 2 },
    // Keys live one second after their last publish.
    lease: { ...MAP_NS, map_key_ttl: '1s' },
    // A client's set or removal writes the key of its own client id, whatever key it sent.
    own: { ...MAP_NS, map_client_key: 'client_id' },
    news: { subscribe: 'authenticated', publish: 'subscribers', history_size: 10, history_ttl: '5m' },
    ...extra,
  }, options);
}

/** A map subscription recording `sync`, `update` and the usual events. */
function mapSubscription(client, channel, options = {}) {
  const sub = client.newMapSubscription(channel, options);
  sub.syncs = [];
  sub.updates = [];
  sub.events = [];
  for (const name of ['subscribed', 'unsubscribed', 'error', 'sync', 'update', 'state']) {
    sub.on(name, (ctx) => sub.events.push({ name, ctx }));
  }
  sub.on('sync', (ctx) => sub.syncs.push(ctx));
  sub.on('update', (ctx) => sub.updates.push(ctx));
  return sub;
}

/** Subscribes `sub` and resolves with its 'subscribed' context (fails on anything else). */
async function subscribe(sub) {
  const outcome = firstEvent(sub, ['subscribed', 'unsubscribed']);
  sub.subscribe();
  const { name, ctx } = await outcome;
  if (name !== 'subscribed') throw new Error(`map subscribe failed: ${name} ${JSON.stringify(ctx)}`);
  return ctx;
}

const mapPublish = (server, channel, key, data, extra = {}) => server.call('map_publish', { channel, key, data, ...extra });
const mapRemove = (server, channel, key) => server.call('map_remove', { channel, key });

for (const protobuf of [false, true]) {
  const label = protobuf ? 'protobuf' : 'json';

  test(`${label}: a map subscriber syncs a state of several pages, then gets live sets and removals from the API and from clients`, async () => {
    await withClients({ config: mapConfig() }, async (server, clients) => {
      for (let i = 1; i <= 7; i++) await mapPublish(server, 'board:one', `k${i}`, { v: i });
      await mapPublish(server, 'board:one', 'k3', { v: 33 }); // replaced
      await mapRemove(server, 'board:one', 'k5'); // gone

      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      // Two keys a page: four state pages before going live.
      const sub = mapSubscription(alice, 'board:one', { pageSize: 2 });
      const ctx = await subscribe(sub);
      await until(() => sub.syncs.length === 1, 'the sync');
      const expected = { k1: { v: 1 }, k2: { v: 2 }, k3: { v: 33 }, k4: { v: 4 }, k6: { v: 6 }, k7: { v: 7 } };
      assert.deepEqual(asObject(sub.syncs[0].entries), expected);
      assert.deepEqual(asObject(ctx.state), expected, 'the subscribed context holds the state too');
      assert.equal(ctx.recoverable, true);
      assert.equal(ctx.recovered, false, 'a first subscribe is no recovery');

      // Live: API set, API removal, a client's own publish and remove.
      await mapPublish(server, 'board:one', 'live', { hello: 'world' });
      await mapRemove(server, 'board:one', 'k1');
      await sub.publish('mine', payload(protobuf, { from: 'alice' }));
      await sub.remove('k2');
      // Removing a key that is not there changes nothing and tells nobody.
      await mapRemove(server, 'board:one', 'never-there');
      await mapPublish(server, 'board:one', 'last', { n: 1 });
      await until(() => sub.updates.some((u) => u.key === 'last'), 'the last update');
      const seen = sub.updates.map((u) => (u.removed ? `-${u.key}` : `${u.key}=${JSON.stringify(valueOf(u.data))}`));
      assert.deepEqual(seen, ['live={"hello":"world"}', '-k1', 'mine={"from":"alice"}', '-k2', 'last={"n":1}']);

      // A second client syncs what the first one built up.
      const bob = await clients.connected(server.wsUrl, connectionToken('bob'), { protobuf });
      const other = mapSubscription(bob, 'board:one');
      await subscribe(other);
      await until(() => other.syncs.length === 1, "bob's sync");
      assert.deepEqual(asObject(other.syncs[0].entries), {
        k3: { v: 33 }, k4: { v: 4 }, k6: { v: 6 }, k7: { v: 7 }, live: { hello: 'world' }, mine: { from: 'alice' }, last: { n: 1 },
      });
      // An empty map syncs as empty.
      const empty = mapSubscription(bob, 'board:empty');
      await subscribe(empty);
      await until(() => empty.syncs.length === 1, 'the empty sync');
      assert.deepEqual(empty.syncs[0].entries, []);
    });
  });

  test(`${label}: a recoverable map recovers what it missed while disconnected, with no second sync; a lost gap syncs again from scratch`, async () => {
    await withClients({ config: mapConfig() }, async (server, clients) => {
      await mapPublish(server, 'board:r', 'a', { v: 1 });
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const sub = mapSubscription(alice, 'board:r');
      await subscribe(sub);
      await until(() => sub.syncs.length === 1, 'the first sync');

      alice.disconnect();
      await mapPublish(server, 'board:r', 'b', { v: 2 });
      await mapRemove(server, 'board:r', 'a');
      const again = nextEvent(sub, 'subscribed');
      alice.connect();
      const ctx = await again;
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      await until(() => sub.updates.length >= 2, 'the two missed changes');
      assert.deepEqual(sub.updates.map((u) => [u.key, !!u.removed]), [['b', false], ['a', true]]);
      assert.equal(sub.syncs.length, 1, 'a recovery sends no new sync');

      // A stream of two publications cannot hold a gap of five: the SDK's resubscribe is
      // refused with 112 and it starts over from the state (its default strategy).
      const short = mapSubscription(alice, 'short:s');
      await subscribe(short);
      await mapPublish(server, 'short:s', 'first', { v: 0 });
      await until(() => short.updates.length === 1, 'the first update');
      short.unsubscribe();
      for (let i = 1; i <= 5; i++) await mapPublish(server, 'short:s', `over${i}`, { v: i });
      const resync = nextEvent(short, 'sync');
      const resubscribed = await subscribe(short);
      assert.equal(resubscribed.recovered, false);
      const { entries } = await resync;
      assert.deepEqual(Object.keys(asObject(entries)).sort(), ['first', 'over1', 'over2', 'over3', 'over4', 'over5']);

      // The same gap with the 'fatal' strategy: the subscription ends with 112.
      const fatal = mapSubscription(alice, 'short:f', { unrecoverableStrategy: 'fatal' });
      await subscribe(fatal);
      await mapPublish(server, 'short:f', 'first', { v: 0 });
      await until(() => fatal.updates.length === 1, 'the first update');
      fatal.unsubscribe();
      for (let i = 1; i <= 5; i++) await mapPublish(server, 'short:f', `over${i}`, { v: i });
      const ended = firstEvent(fatal, ['subscribed', 'unsubscribed']);
      fatal.subscribe();
      const { name, ctx: endCtx } = await ended;
      assert.equal(name, 'unsubscribed');
      assert.equal(endCtx.code, 112, JSON.stringify(endCtx));
    });
  });

  test(`${label}: a map that does not recover syncs its whole state again after a reconnect`, async () => {
    await withClients({ config: mapConfig() }, async (server, clients) => {
      await mapPublish(server, 'scratch:x', 'keep', { v: 1 });
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const sub = mapSubscription(alice, 'scratch:x');
      const ctx = await subscribe(sub);
      assert.equal(ctx.recoverable, false);
      await until(() => sub.syncs.length === 1, 'the first sync');
      alice.disconnect();
      await mapPublish(server, 'scratch:x', 'added', { v: 2 });
      alice.connect();
      await until(() => sub.syncs.length === 2, 'the second sync');
      assert.deepEqual(asObject(sub.syncs[1].entries), { keep: { v: 1 }, added: { v: 2 } });
    });
  });

  test(`${label}: a key TTL removes a key its publisher stopped renewing, and subscribers are told`, async () => {
    await withClients({ config: mapConfig() }, async (server, clients) => {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const sub = mapSubscription(alice, 'lease:l');
      await subscribe(sub);
      await mapPublish(server, 'lease:l', 'held', { v: 1 });
      const expired = await nextEvent(sub, 'update', (u) => u.removed === true);
      assert.equal(expired.key, 'held');
      assert.deepEqual(sub.updates.map((u) => [u.key, !!u.removed]), [['held', false], ['held', true]]);
      // Gone from the state too.
      const bob = await clients.connected(server.wsUrl, connectionToken('bob'), { protobuf });
      const fresh = mapSubscription(bob, 'lease:l');
      await subscribe(fresh);
      await until(() => fresh.syncs.length === 1, 'the sync');
      assert.deepEqual(fresh.syncs[0].entries, []);
    });
  });

  test(`${label}: with map_client_key = "client_id" a client sets and removes only the entry under its client id, whatever key it sends; elsewhere its key stands`, async () => {
    await withClients({ config: mapConfig() }, async (server, clients) => {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const bob = await clients.connected(server.wsUrl, connectionToken('bob'), { protobuf });
      const aliceId = alice.connectedCtx.client;
      const bobId = bob.connectedCtx.client;
      assert.ok(aliceId && bobId && aliceId !== bobId, 'two client ids');
      const mine = mapSubscription(alice, 'own:x');
      const watcher = mapSubscription(bob, 'own:x');
      await subscribe(mine);
      await subscribe(watcher);

      await mine.publish('arbitrary_key', payload(protobuf, { from: 'alice' }));
      // Bob names Alice's entry: he still writes his own.
      await watcher.publish(aliceId, payload(protobuf, { from: 'bob' }));
      // The server API keeps the key it names.
      await mapPublish(server, 'own:x', 'by-api', { from: 'api' });
      await until(() => watcher.updates.length === 3, "bob's three updates");
      const keyed = (u) => `${u.key}=${JSON.stringify(valueOf(u.data))}`;
      assert.deepEqual(watcher.updates.map(keyed), [
        `${aliceId}={"from":"alice"}`, `${bobId}={"from":"bob"}`, 'by-api={"from":"api"}',
      ]);
      // Alice removes "Bob's" key: her own entry goes, his stays.
      await mine.remove(bobId);
      await until(() => watcher.updates.length === 4, 'the removal');
      assert.deepEqual([watcher.updates[3].key, !!watcher.updates[3].removed], [aliceId, true]);
      const late = await clients.connected(server.wsUrl, connectionToken('carol'), { protobuf });
      const fresh = mapSubscription(late, 'own:x');
      await subscribe(fresh);
      await until(() => fresh.syncs.length === 1, "carol's sync");
      assert.deepEqual(asObject(fresh.syncs[0].entries), { [bobId]: { from: 'bob' }, 'by-api': { from: 'api' } });

      // A namespace without the option keeps the key the client sent.
      const board = mapSubscription(alice, 'board:plain');
      await subscribe(board);
      await board.publish('arbitrary_key', payload(protobuf, { from: 'alice' }));
      await until(() => board.updates.length === 1, 'the plain update');
      assert.equal(board.updates[0].key, 'arbitrary_key');
    });
  });

  test(`${label}: a tags filter selects the state entries and the live updates`, async () => {
    await withClients({ config: mapConfig() }, async (server, clients) => {
      await mapPublish(server, 'board:t', 'e1', { v: 1 }, { tags: { team: 'eng' } });
      await mapPublish(server, 'board:t', 's1', { v: 2 }, { tags: { team: 'sales' } });
      await mapPublish(server, 'board:t', 'e2', { v: 3 }, { tags: { team: 'eng' } });
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const sub = mapSubscription(alice, 'board:t', { tagsFilter: { key: 'team', cmp: 'eq', val: 'eng' }, pageSize: 1 });
      await subscribe(sub);
      await until(() => sub.syncs.length === 1, 'the sync');
      assert.deepEqual(Object.keys(asObject(sub.syncs[0].entries)).sort(), ['e1', 'e2']);
      await mapPublish(server, 'board:t', 's2', { v: 4 }, { tags: { team: 'sales' } });
      await mapPublish(server, 'board:t', 'e3', { v: 5 }, { tags: { team: 'eng' } });
      await until(() => sub.updates.length >= 1, 'the eng update');
      assert.deepEqual(sub.updates.map((u) => u.key), ['e3']);
    });
  });

  test(`${label}: map commands to a stream channel and stream commands to a map channel are refused with 108; the connection goes on`, async () => {
    await withClients({ config: mapConfig() }, async (server, clients) => {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });

      const wrongMap = mapSubscription(alice, 'news:plain');
      const refused = firstEvent(wrongMap, ['subscribed', 'unsubscribed']);
      wrongMap.subscribe();
      const { name, ctx } = await refused;
      assert.equal(name, 'unsubscribed');
      assert.equal(ctx.code, 108, JSON.stringify(ctx));
      assert.match(ctx.reason, /not a map channel/);

      const plainOnMap = alice.newSubscription('board:m');
      const refusedStream = firstEvent(plainOnMap, ['subscribed', 'unsubscribed']);
      plainOnMap.subscribe();
      const stream = await refusedStream;
      assert.equal(stream.name, 'unsubscribed');
      assert.equal(stream.ctx.code, 108, JSON.stringify(stream.ctx));
      assert.match(stream.ctx.reason, /map channel/);

      await subscribed(alice, 'news:plain-sub');
      const keyedToStream = await rejectionOf(alice.mapPublish('news:plain-sub', 'k', payload(protobuf, { v: 1 })));
      assert.equal(keyedToStream.code, 108, JSON.stringify(keyedToStream));
      const removeOnStream = await rejectionOf(alice.mapRemove('news:plain-sub', 'k'));
      assert.equal(removeOnStream.code, 108, JSON.stringify(removeOnStream));

      // A map publish with an empty key is a bad request.
      const sub = mapSubscription(alice, 'board:m2');
      await subscribe(sub);
      const noKey = await rejectionOf(alice.mapPublish('board:m2', '', payload(protobuf, { v: 1 })));
      assert.equal(noKey.code, 107, JSON.stringify(noKey));

      // The API: a plain publish to a map, a map_publish to a stream channel, a bad key.
      const plainPublish = await server.api('publish', { channel: 'board:m2', data: { v: 1 } });
      assert.equal(plainPublish.body.error?.code, 108, JSON.stringify(plainPublish));
      const mapToStream = await server.api('map_publish', { channel: 'news:plain', key: 'k', data: { v: 1 } });
      assert.equal(mapToStream.body.error?.code, 108, JSON.stringify(mapToStream));
      const emptyKey = await server.api('map_publish', { channel: 'board:m2', key: '', data: { v: 1 } });
      assert.equal(emptyKey.status, 400, JSON.stringify(emptyKey));
      const removeWithData = await server.api('map_remove', { channel: 'board:m2', key: 'k', data: 1 });
      assert.equal(removeWithData.status, 400, JSON.stringify(removeWithData));

      // Still served: the map subscription gets a live update, a stream subscription a publication.
      await mapPublish(server, 'board:m2', 'after', { ok: true });
      await until(() => sub.updates.some((u) => u.key === 'after'), 'a map update after the refusals');
      const after = await subscribed(alice, 'news:after');
      await server.publish('news:after', { still: 'here' });
      await until(() => after.pubs.length >= 1, 'a publication after the refusals');
      assert.equal(alice.state, 'connected');
    });
  });
}

test('what changes between two state pages reaches the subscriber in the catch-up, none lost and none twice', async () => {
  await withClients({ config: mapConfig() }, async (server) => {
    for (const key of ['a', 'b', 'c', 'd']) await mapPublish(server, 'board:p', key, { v: key });
    const raw = await rawClient(server.wsUrl, connectionToken('raw'));
    const first = await raw.send({ subscribe: { channel: 'board:p', type: 1, phase: 2, limit: 2 } });
    const page1 = first.subscribe;
    assert.equal(page1.phase, 2, JSON.stringify(first));
    assert.deepEqual(page1.state.map((p) => p.key), ['a', 'b']);
    assert.ok(page1.cursor && page1.epoch && page1.offset === 4, JSON.stringify(page1));

    // Between the pages: a key already read changes, one not yet read goes, one is added.
    await mapPublish(server, 'board:p', 'a', { v: 'a2' });
    await mapRemove(server, 'board:p', 'd');
    await mapPublish(server, 'board:p', 'e', { v: 'e' });

    const second = await raw.send({
      subscribe: { channel: 'board:p', type: 1, phase: 2, limit: 2, cursor: page1.cursor, offset: page1.offset, epoch: page1.epoch },
    });
    const live = second.subscribe;
    // The last page went live at once (no `phase`: 0), with the catch-up since page 1.
    assert.equal(live.phase, undefined, JSON.stringify(second));
    assert.deepEqual(live.state.map((p) => p.key), ['c', 'e']);
    assert.deepEqual(live.publications.map((p) => [p.key, p.removed === true, p.offset]), [['a', false, 5], ['d', true, 6], ['e', false, 7]]);
    assert.equal(live.offset, 7);
    assert.equal(live.recovered, undefined, 'a first subscribe is not a recovery');

    // Live from here, with offsets going on.
    await mapPublish(server, 'board:p', 'f', { v: 'f' });
    await until(() => raw.pushes.some((p) => p.pub?.key === 'f'), 'the live publication');
    assert.equal(raw.pushes.find((p) => p.pub?.key === 'f').pub.offset, 8);

    // A later page naming an epoch the stream no longer has is answered with the new one
    // (the SDK then starts over).
    const stale = await raw.send({ subscribe: { channel: 'board:q', type: 1, phase: 2, cursor: 'x', offset: 3, epoch: 'gone' } });
    assert.equal(stale.subscribe.phase, 2, JSON.stringify(stale));
    assert.notEqual(stale.subscribe.epoch, 'gone');
    // Shared poll and presence-as-map subscriptions are still refused with 108.
    const poll = await raw.send({ subscribe: { channel: 'board:z', type: 4 } });
    assert.equal(poll.error?.code, 108, JSON.stringify(poll));
    raw.ws.close();
  });
});

for (const kind of Object.keys(BROKERS)) {
  test(`${kind} broker, two nodes: keyed publishes, removals and key expiries on one node reach map subscribers on both; a subscriber syncing on one sees the keys set through the other`, { timeout: 60000 }, async (t) => {
    const cleanups = cleanupsFor(t);
    const broker = await startBroker(kind);
    cleanups.push(() => broker.stop());
    // A short position check: it is what turns a key's expiry into a removal on a broker.
    const clusterMaps = mapConfig({}, { node: { position_check_interval: '200ms' } });
    const nodes = ['a', 'b'].map((name) => new Server({ config: clusterMaps, env: { ...broker.env, SWITCHBOARD_NODE_NAME: `maps-${name}` } }));
    cleanups.push(() => Promise.all(nodes.map((node) => node.stop())));
    const [nodeA, nodeB] = nodes;
    await Promise.all(nodes.map((node) => node.start()));
    const clients = new Clients();
    cleanups.push(() => clients.closeAll());

    // Keys set and removed through node A before anyone subscribes.
    for (let i = 1; i <= 5; i++) await mapPublish(nodeA, 'board:c', `k${i}`, { v: i });
    await mapPublish(nodeA, 'board:c', 'k3', { v: 33 });
    await mapRemove(nodeA, 'board:c', 'k4');

    // Bob on node B syncs them, two keys a page.
    const bob = await clients.connected(nodeB.wsUrl, connectionToken('bob'));
    const onB = mapSubscription(bob, 'board:c', { pageSize: 2 });
    const ctx = await subscribe(onB);
    await until(() => onB.syncs.length === 1, "bob's sync on node B");
    const built = { k1: { v: 1 }, k2: { v: 2 }, k3: { v: 33 }, k5: { v: 5 } };
    assert.deepEqual(asObject(onB.syncs[0].entries), built);
    assert.equal(ctx.recovered, false, 'a first subscribe is no recovery');

    // Alice on node A; her own publish and removal, and the API's on A, reach Bob on B.
    const alice = await clients.connected(nodeA.wsUrl, connectionToken('alice'));
    const onA = mapSubscription(alice, 'board:c');
    await subscribe(onA);
    await until(() => onA.syncs.length === 1, "alice's sync on node A");
    assert.deepEqual(asObject(onA.syncs[0].entries), built);
    await mapPublish(nodeA, 'board:c', 'live', { from: 'api-a' });
    await onA.publish('mine', { from: 'alice' });
    await onA.remove('k1');
    await mapRemove(nodeB, 'board:c', 'k2');
    // Removing a key that is not there tells nobody, on either node.
    await mapRemove(nodeA, 'board:c', 'never-there');
    await mapPublish(nodeB, 'board:c', 'last', { n: 1 });
    const changes = (sub) => sub.updates.map((u) => (u.removed ? `-${u.key}` : `${u.key}=${JSON.stringify(valueOf(u.data))}`));
    const expected = ['live={"from":"api-a"}', 'mine={"from":"alice"}', '-k1', '-k2', 'last={"n":1}'];
    for (const [sub, where] of [[onA, 'A'], [onB, 'B']]) {
      await until(() => sub.updates.some((u) => u.key === 'last'), `the last update on node ${where}`);
      assert.deepEqual(changes(sub), expected, `node ${where}: every change once, in order`);
    }

    // A third client on node B syncs the state both nodes built.
    const carol = await clients.connected(nodeB.wsUrl, connectionToken('carol'));
    const late = mapSubscription(carol, 'board:c', { pageSize: 3 });
    await subscribe(late);
    await until(() => late.syncs.length === 1, "carol's sync");
    assert.deepEqual(asObject(late.syncs[0].entries), { k3: { v: 33 }, k5: { v: 5 }, live: { from: 'api-a' }, mine: { from: 'alice' }, last: { n: 1 } });

    // A key TTL: set through node A, it expires once, and both nodes' subscribers are told.
    const leaseA = mapSubscription(alice, 'lease:c');
    const leaseB = mapSubscription(bob, 'lease:c');
    await subscribe(leaseA);
    await subscribe(leaseB);
    await mapPublish(nodeA, 'lease:c', 'held', { v: 1 });
    // Both subscribers get the removal at about the same moment: look at what each recorded
    // (a listener attached to the second after the first had it would wait for nothing).
    for (const sub of [leaseA, leaseB]) await until(() => sub.updates.some((u) => u.removed === true), 'the expiry removal', 15000);
    // A later set, published after the removal, is the fence: once it is in, a second removal
    // would be too.
    await mapPublish(nodeB, 'lease:c', 'after', { v: 2 });
    for (const sub of [leaseA, leaseB]) {
      await until(() => sub.updates.some((u) => u.key === 'after'), 'the set after the expiry');
      assert.deepEqual(sub.updates.map((u) => [u.key, !!u.removed]), [['held', false], ['held', true], ['after', false]]);
    }

    // A gap the stream no longer holds is 112 on this broker too: the SDK starts over from the state.
    const short = mapSubscription(bob, 'short:c');
    await subscribe(short);
    await mapPublish(nodeA, 'short:c', 'first', { v: 0 });
    await until(() => short.updates.length === 1, 'the first update');
    short.unsubscribe();
    for (let i = 1; i <= 5; i++) await mapPublish(nodeA, 'short:c', `over${i}`, { v: i });
    const resync = nextEvent(short, 'sync');
    const resubscribed = await subscribe(short);
    assert.equal(resubscribed.recovered, false);
    const { entries } = await resync;
    assert.deepEqual(Object.keys(asObject(entries)).sort(), ['first', 'over1', 'over2', 'over3', 'over4', 'over5']);
    assert.equal(alice.state, 'connected');
    assert.equal(bob.state, 'connected');
  });
}
