'use strict';
// The Pusher door (/app/{key}) and the Pusher HTTP API (/apps/{id}/…) driven by the real
// `pusher-js` client in Node and the real `pusher` server SDK, against the release binary; one
// test shares a channel with the `centrifuge` SDK, one runs two nodes on a private redis-server.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { Server, connectionToken, until, withServer } = require('../lib/harness');
const { startBroker } = require('../lib/brokers');
const { connected, pusherClient, pusherServer, record, subscribed } = require('../lib/pusher');
const { Clients, subscribed: centrifugeSubscribed } = require('../lib/sdk');
const { config } = require('../lib/config');

const APP = { id: 'app1', key: 'app1-key', secret: 'app1-secret-0123456789', client_events: true };
const QUIET = { id: 'app2', key: 'app2-key', secret: 'app2-secret-0123456789', client_events: false };

/** A server with two apps; the app id `app1` is also a client-protocol namespace. */
function pusherConfig() {
  return config(
    { app1: { subscribe: 'anonymous', publish: 'none' } },
    { pusher: { apps: [APP, QUIET] } },
  );
}

/** The `pusher` server SDK for `app` on `server`. */
const sdk = (server, app = APP, secret = app.secret) => pusherServer(server, app, secret);

/**
 * Runs `fn(server, open)` where `open(options)` makes a pusher-js client whose channel
 * authorizations and sign-ins are signed by the SDK (as a backend's auth endpoint would);
 * every client is disconnected at the end, pass or fail.
 */
async function withPusher(fn) {
  await withServer({ config: pusherConfig() }, async (server) => {
    const clients = [];
    try {
      await fn(server, opener(server, clients));
    } finally {
      for (const client of clients) client.disconnect();
    }
  });
}

/** `open(options)` for clients of `server`, each remembered in `clients`. */
function opener(server, clients) {
  return ({ app = APP, user, authSecret, key } = {}) => {
    const client = pusherClient(server, app, { user, authSecret, key });
    clients.push(client);
    return client;
  };
}

test('public channels: connection_established, SDK triggers and batches, socket_id exclusion, channel queries', async () => {
  await withPusher(async (server, open) => {
    const alice = open();
    const bob = open();
    await connected(alice);
    await connected(bob);
    assert.match(alice.connection.socket_id, /^\d+\.\d+$/);
    assert.notEqual(alice.connection.socket_id, bob.connection.socket_id);

    const a = await subscribed(alice, 'news');
    const b = await subscribed(bob, 'news');
    const seenA = record(a, ['greet', 'batch']);
    const seenB = record(b, ['greet', 'batch']);
    const api = sdk(server);

    await api.trigger('news', 'greet', { text: 'hello ✓' });
    await api.trigger(['news'], 'greet', 'only bob', { socket_id: alice.connection.socket_id });
    await api.triggerBatch([
      { channel: 'news', name: 'batch', data: { n: 1 } },
      { channel: 'news', name: 'batch', data: { n: 2 } },
    ]);
    await until(() => seenA.length >= 3 && seenB.length >= 4, 'every event');
    assert.deepEqual(seenA.map((e) => e.data), [{ text: 'hello ✓' }, { n: 1 }, { n: 2 }]);
    assert.deepEqual(seenB.map((e) => e.data), [{ text: 'hello ✓' }, 'only bob', { n: 1 }, { n: 2 }]);

    const list = await (await api.get({ path: '/channels' })).json();
    assert.deepEqual(list, { channels: { news: {} } });
    const one = await (await api.get({ path: '/channels/news', params: { info: 'subscription_count' } })).json();
    assert.deepEqual(one, { occupied: true, subscription_count: 2 });
    const empty = await (await api.get({ path: '/channels/nobody-here' })).json();
    assert.deepEqual(empty, { occupied: false });
    // `info` on a trigger: the attributes of every channel it went to, read after publishing.
    const counted = await api.trigger(['news', 'nobody-here'], 'greet', 'counted', { info: 'subscription_count' });
    assert.deepEqual(await counted.json(), {
      channels: { news: { subscription_count: 2 }, 'nobody-here': { subscription_count: 0 } },
    });
    const plain = await api.trigger('news', 'greet', 'no info');
    assert.deepEqual(await plain.json(), {});
    assert.deepEqual(alice.errors, []);
  });
});

test('private channels: signed subscriptions pass, a bad signature is refused, client events reach the others', async () => {
  await withPusher(async (server, open) => {
    const alice = open();
    const bob = open();
    const mallory = open({ authSecret: 'not-the-secret-at-all' });
    const a = await subscribed(alice, 'private-room');
    const b = await subscribed(bob, 'private-room');
    await connected(mallory);
    const refused = await subscribed(mallory, 'private-room').then(
      () => null,
      (err) => err.error,
    );
    assert.ok(refused, 'a wrongly signed subscription is refused');
    assert.equal(refused.status, 401);

    const seenA = record(a, ['client-typing', 'server']);
    const seenB = record(b, ['client-typing', 'server']);
    assert.equal(a.trigger('client-typing', { who: 'alice' }), true);
    await until(() => seenB.length === 1, 'bob gets the client event');
    assert.deepEqual(seenB[0].data, { who: 'alice' });
    // The sender never gets its own client event; the SDK's event after it shows it is past.
    await sdk(server).trigger('private-room', 'server', 1);
    await until(() => seenA.length === 1 && seenB.length === 2, 'the server event');
    assert.deepEqual(seenA.map((e) => e.name), ['server']);

    // Mallory was refused and still holds a working connection.
    const pub = await subscribed(mallory, 'news');
    const seenM = record(pub, ['still']);
    await sdk(server).trigger('news', 'still', 'serving');
    await until(() => seenM.length === 1, 'mallory still served');
  });
});

test('client events: refused on public channels and on an app that does not allow them', async () => {
  await withPusher(async (server, open) => {
    const alice = open();
    const pub = await subscribed(alice, 'news');
    pub.trigger('client-nope', {});
    await until(() => alice.errors.length === 1, 'pusher:error for a public client event');
    assert.match(alice.errors[0].data.message, /private and presence/);

    const quiet = open({ app: QUIET });
    const other = open({ app: QUIET });
    const q = await subscribed(quiet, 'private-room');
    const o = await subscribed(other, 'private-room');
    const seen = record(o, ['client-x']);
    q.trigger('client-x', { n: 1 });
    await until(() => quiet.errors.length === 1, 'pusher:error when client events are off');
    assert.match(quiet.errors[0].data.message, /not enabled/);
    assert.equal(seen.length, 0);
    assert.equal(quiet.connection.state, 'connected');
  });
});

test('presence channels: members, member_added and member_removed, users and user_count over the API', async () => {
  await withPusher(async (server, open) => {
    const alice = open({ user: 'alice' });
    const p1 = await subscribed(alice, 'presence-lobby');
    assert.equal(p1.members.count, 1);
    assert.equal(p1.members.me.id, 'alice');
    const added = [];
    const removed = [];
    p1.bind('pusher:member_added', (m) => added.push(m));
    p1.bind('pusher:member_removed', (m) => removed.push(m));

    const bob = open({ user: 'bob' });
    const p2 = await subscribed(bob, 'presence-lobby');
    assert.equal(p2.members.count, 2);
    assert.deepEqual(p2.members.get('alice').info, { name: 'name of alice' });
    await until(() => added.length === 1, 'member_added');
    assert.equal(added[0].id, 'bob');
    assert.deepEqual(added[0].info, { name: 'name of bob' });

    // A presence client event carries its sender's user id.
    const seen = record(p1, ['client-hi']);
    p2.trigger('client-hi', { x: 1 });
    await until(() => seen.length === 1, 'presence client event');
    assert.equal(seen[0].meta.user_id, 'bob');

    const api = sdk(server);
    const users = await (await api.get({ path: '/channels/presence-lobby/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);
    const counts = await (
      await api.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })
    ).json();
    assert.deepEqual(counts, { channels: { 'presence-lobby': { user_count: 2 } } });
    const one = await (await api.get({ path: '/channels/presence-lobby', params: { info: 'user_count' } })).json();
    assert.deepEqual(one, { occupied: true, user_count: 2 });
    // `info` on a trigger and per event of a batch; user_count only for presence channels.
    const triggered = await api.trigger('presence-lobby', 'count', 1, { info: 'user_count,subscription_count' });
    assert.deepEqual(await triggered.json(), {
      channels: { 'presence-lobby': { user_count: 2, subscription_count: 2 } },
    });
    const batch = await api.triggerBatch([
      { channel: 'presence-lobby', name: 'count', data: 2, info: 'user_count' },
      { channel: 'news', name: 'count', data: 3, info: 'subscription_count,user_count' },
      { channel: 'presence-lobby', name: 'count', data: 4 },
    ]);
    assert.deepEqual(await batch.json(), { batch: [{ user_count: 2 }, { subscription_count: 0 }, {}] });

    bob.disconnect();
    await until(() => removed.length === 1, 'member_removed');
    assert.equal(removed[0].id, 'bob');
    await until(() => p1.members.count === 1, 'alice alone');
  });
});

test('signature failures are refused with 401 and the API keeps serving good requests', async () => {
  await withPusher(async (server, open) => {
    const alice = open();
    const channel = await subscribed(alice, 'news');
    const seen = record(channel, ['ok', 'forged']);

    const forged = sdk(server, APP, 'wrong-secret-0123456789');
    const refusal = await forged.trigger('news', 'forged', 1).then(() => null, (err) => err);
    assert.equal(refusal && refusal.status, 401);

    // Replayed or stale: a correctly signed request from an hour ago.
    const api = sdk(server);
    const realNow = Date.now;
    Date.now = () => realNow() - 3600 * 1000;
    let stale;
    try {
      stale = api.trigger('news', 'forged', 2).then(() => null, (err) => err);
    } finally {
      Date.now = realNow;
    }
    assert.equal((await stale)?.status, 401);

    // A body that does not match its body_md5, and no signature at all.
    const base = `http://${server.base}/apps/${APP.id}/events`;
    const unsigned = await fetch(base, { method: 'POST', body: '{"name":"forged","channels":["news"],"data":"3"}' });
    assert.equal(unsigned.status, 401);
    const wrongApp = await sdk(server, { ...APP, id: 'no-such-app' }).trigger('news', 'forged', 4).then(() => null, (e) => e);
    assert.equal(wrongApp && wrongApp.status, 404);
    const badBody = await sdk(server).post({ path: '/events', body: { name: 'x', channels: ['bad:name'], data: '1' } }).then(() => null, (e) => e);
    assert.equal(badBody && badBody.status, 400);

    await api.trigger('news', 'ok', 'still serving');
    await until(() => seen.length === 1, 'the good event');
    assert.deepEqual(seen.map((e) => e.name), ['ok']);
  });
});

test('apps are isolated; an unknown key is refused with 4001; bad frames do not stop the server', async () => {
  await withPusher(async (server, open) => {
    const one = open();
    const two = open({ app: QUIET });
    const c1 = await subscribed(one, 'news');
    const c2 = await subscribed(two, 'news');
    const seen1 = record(c1, ['e']);
    const seen2 = record(c2, ['e']);
    await sdk(server, QUIET).trigger('news', 'e', 'for app2');
    await sdk(server, APP).trigger('news', 'e', 'for app1');
    await until(() => seen1.length === 1 && seen2.length === 1, 'one event each');
    assert.deepEqual([seen1[0].data, seen2[0].data], ['for app1', 'for app2']);

    const stranger = open({ key: 'no-such-key' });
    await until(() => stranger.errors.some((e) => JSON.stringify(e).includes('4001')), 'pusher:error 4001');
    await until(() => ['failed', 'unavailable', 'disconnected'].includes(stranger.connection.state), 'refused');
    stranger.disconnect();

    // Raw sockets: a wrong protocol version gets 4007; garbage gets an error and stays open.
    const { WebSocket } = require('ws');
    const old = new WebSocket(`ws://${server.base}/app/${APP.key}?protocol=5`);
    const closed = await new Promise((resolve) => old.on('close', (code) => resolve(code)));
    assert.equal(closed, 4007);
    const raw = new WebSocket(`ws://${server.base}/app/${APP.key}?protocol=7&client=raw&version=1`);
    const events = [];
    raw.on('message', (m) => events.push(JSON.parse(m.toString())));
    await until(() => events.length === 1, 'connection_established');
    raw.send('not json');
    raw.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'bad:name' } }));
    raw.send(JSON.stringify({ event: 'pusher:ping', data: {} }));
    await until(() => events.some((e) => e.event === 'pusher:pong'), 'pong');
    assert.equal(events.filter((e) => e.event === 'pusher:error').length, 1);
    assert.equal(events.filter((e) => e.event === 'pusher:subscription_error').length, 1);
    raw.close();

    await sdk(server).trigger('news', 'e', 'after');
    await until(() => seen1.length === 2, 'app1 still served');
  });
});

test('signin: sendToUser reaches the user; terminate_connections ends its connections with 4009', async () => {
  await withPusher(async (server, open) => {
    const carol = open({ user: 'carol' });
    const dave = open({ user: 'dave' });
    await connected(carol);
    await connected(dave);
    carol.signin();
    dave.signin();
    await until(() => carol.user.user_data && dave.user.user_data, 'both signed in');

    // A signed-in user joins its own channel, which sendToUser reaches.
    await until(() => dave.user.serverToUserChannel && dave.user.serverToUserChannel.subscribed, 'dave\'s channel');
    const notes = [];
    dave.user.bind('note', (data) => notes.push(data));
    await sdk(server).sendToUser('dave', 'note', { for: 'dave' });
    await until(() => notes.length === 1, 'sendToUser');
    assert.deepEqual(notes, [{ for: 'dave' }]);

    await sdk(server).terminateUserConnections('carol');
    await until(() => carol.errors.some((e) => JSON.stringify(e).includes('4009')), 'pusher:error 4009');
    await until(() => carol.connection.state !== 'connected', 'carol disconnected');
    assert.equal(dave.connection.state, 'connected');
  });
});

test('one hub: Pusher news of app1 and client-protocol app1:news are one channel, each side in its format', async () => {
  await withPusher(async (server, open) => {
    const alice = open();
    const channel = await subscribed(alice, 'news');
    const seen = record(channel, ['greet', 'switchboard:publication', 'from-pusher']);
    const centrifuge = new Clients();
    try {
      const carl = await centrifuge.connected(server.wsUrl, connectionToken('carl'));
      const sub = await centrifugeSubscribed(carl, 'app1:news');
      await server.publish('app1:news', { event: 'greet', data: 'from the switchboard API' });
      await server.publish('app1:news', { n: 1 });
      await sdk(server).trigger('news', 'from-pusher', { m: 2 });
      await until(() => seen.length === 3 && sub.pubs.length === 3, 'every publication on both sides');
      assert.deepEqual(
        seen.map((e) => [e.name, e.data]),
        [
          ['greet', 'from the switchboard API'],
          ['switchboard:publication', { n: 1 }],
          ['from-pusher', { m: 2 }],
        ],
      );
      assert.deepEqual(
        sub.pubs.map((p) => p.data),
        [{ event: 'greet', data: 'from the switchboard API' }, { n: 1 }, { event: 'from-pusher', data: '{"m":2}' }],
      );
    } finally {
      centrifuge.closeAll();
    }
  });
});

test('across two nodes on Redis: events, presence members and client events reach the other node', async () => {
  const broker = await startBroker('redis');
  const nodes = [1, 2].map((i) => new Server({ config: pusherConfig(), env: { ...broker.env, SWITCHBOARD_NODE_NAME: `pusher-${i}` } }));
  const clients = [];
  try {
    await Promise.all(nodes.map((node) => node.start()));
    const [one, two] = nodes;
    const alice = opener(one, clients)({ user: 'alice' });
    const bob = opener(two, clients)({ user: 'bob' });
    const news = await subscribed(bob, 'news');
    const seen = record(news, ['greet']);
    await sdk(one).trigger('news', 'greet', 'from node 1');
    await until(() => seen.length === 1, 'the event on node 2');
    assert.equal(seen[0].data, 'from node 1');

    const pa = await subscribed(alice, 'presence-hall');
    const added = [];
    pa.bind('pusher:member_added', (m) => added.push(m.id));
    const pb = await subscribed(bob, 'presence-hall');
    assert.deepEqual(Object.keys(pb.members.members).sort(), ['alice', 'bob']);
    await until(() => added.includes('bob'), 'member_added from node 2');

    const typed = record(pa, ['client-typing']);
    pb.trigger('client-typing', { from: 'bob' });
    await until(() => typed.length === 1, 'the client event on node 1');
    assert.equal(typed[0].meta.user_id, 'bob');

    // Presence entries are written to the broker after the join: polled, not raced.
    const ids = async () => (await (await sdk(one).get({ path: '/channels/presence-hall/users' })).json()).users.map((u) => u.id).sort();
    await until(async () => (await ids()).join() === 'alice,bob', 'both users listed by node 1');
  } finally {
    for (const client of clients) client.disconnect();
    await Promise.all(nodes.map((node) => node.stop()));
    await broker.stop();
  }
});
