'use strict';
// Shared-poll subscriptions (a namespace with `shared_poll = true`): the real `centrifuge`
// SDK's `newSharedPollSubscription` tracks keys under HMAC signatures made as an application
// backend makes them; the server polls this file's own mock backend (an HTTP server on a free
// port) for the tracked keys, in batches, and forwards each changed item to exactly the
// connections that track its key: versioned (the backend's versions) and versionless (the
// server compares data and numbers changes within an epoch). A bad signature is 103, an
// expired one 109, too many keys 106; a backend that errors or is down delivers nothing until
// it is back, and the server keeps serving everyone meanwhile. JSON and Protobuf builds. On the
// Redis and NATS brokers (a private redis-server / nats-server on a free port) each of two
// nodes polls for its own connections, and versionless epochs differ between nodes.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const { test } = require('node:test');

const { BROKERS, startBroker } = require('../lib/brokers');
const { Server, cleanupsFor, connectionToken, nextEvent, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { Clients, subscribed, withClients } = require('../lib/sdk');

const POLL_SECRET = 'node-test-poll-secret';

/** The value of gauge `name` on `server`'s /metrics. */
async function gauge(server, name) {
  const text = await (await fetch(`http://${server.base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

/** A signature as the application's backend makes it (docs/protocol.md, "Shared polls"). */
function trackSignature(user, channel, keys, { ttl = 3600, secret = POLL_SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const expiry = now + ttl;
  const keysHash = crypto.createHash('sha256').update(keys.join('\0')).digest('hex');
  const payload = [now, expiry, user, channel, keysHash].join('\0');
  const mac = crypto.createHmac('sha256', secret).update(payload).digest('hex');
  return `${now}:${expiry}:${mac}`;
}

/**
 * The application's refresh backend: answers `{channel, items:[{key, version}]}` with the
 * items it holds for those keys; `mode` 'ok' | 'error' (an error answer) | 'status' (HTTP
 * 500). Records every request.
 */
class Backend {
  constructor() {
    this.items = new Map();
    this.requests = [];
    this.mode = 'ok';
    this.server = null;
    this.port = 0;
  }

  async start(port = 0) {
    this.server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (chunk) => (body += chunk));
      req.on('end', () => {
        let parsed;
        try {
          parsed = JSON.parse(body);
        } catch {
          res.writeHead(400).end();
          return;
        }
        this.requests.push(parsed);
        if (this.mode === 'status') {
          res.writeHead(500).end('down for maintenance');
          return;
        }
        if (this.mode === 'error') {
          res.writeHead(200, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify({ error: { code: 1000, message: 'backend trouble' } }));
          return;
        }
        const items = [];
        for (const { key } of parsed.items || []) {
          const item = this.items.get(key);
          if (item) items.push({ key, ...item });
        }
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ result: { items } }));
      });
    });
    await new Promise((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    this.port = this.server.address().port;
    return this;
  }

  async stop() {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
    this.server = null;
  }

  url() {
    return `http://127.0.0.1:${this.port}/poll`;
  }

  /** Requests naming `channel`. */
  requestsFor(channel) {
    return this.requests.filter((r) => r.channel === channel);
  }
}

/** Runs `fn(backend)` with a started backend, stopped afterwards. */
async function withBackend(fn) {
  const backend = await new Backend().start();
  try {
    return await fn(backend);
  } finally {
    await backend.stop();
  }
}

function pollConfig(backend, { maxKeys = 10 } = {}) {
  const common = {
    subscribe: 'authenticated',
    shared_poll: true,
    shared_poll_url: backend.url(),
    shared_poll_refresh_interval: '50ms',
    shared_poll_refresh_batch_size: 2,
    shared_poll_max_keys_per_connection: maxKeys,
  };
  return config(
    {
      poll: { ...common, shared_poll_mode: 'versioned' },
      vl: { ...common },
      news: { subscribe: 'authenticated', publish: 'subscribers' },
    },
    { shared_poll: { hmac_secret: POLL_SECRET }, hooks: { breaker: { min_calls: 1000000 } } },
  );
}

/** The JSON value of an update's data, whatever the build (protobuf gives bytes). */
const valueOf = (data) => (data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(data)) : data);

/** A subscribed shared-poll subscription recording its updates and errors. */
async function pollSubscription(client, channel, user, options = {}) {
  const sub = client.newSharedPollSubscription(channel, {
    getSignature: async (ctx) => ({ keys: ctx.keys, signature: trackSignature(user, channel, ctx.keys) }),
    ...options,
  });
  sub.updates = [];
  sub.errors = [];
  sub.on('update', (ctx) => sub.updates.push(ctx));
  sub.on('error', (ctx) => sub.errors.push(ctx));
  const subscribedCtx = nextEvent(sub, 'subscribed');
  sub.subscribe();
  sub.subscribedCtx = await subscribedCtx;
  return sub;
}

const seen = (sub) => sub.updates.map((u) => `${u.key}@${u.version}${u.removed ? '-' : ''}`);

for (const protobuf of [false, true]) {
  const label = protobuf ? 'protobuf' : 'json';

  test(`${label}: tracked keys get their items and each change, only on the connections tracking them, polled in batches; untrack and unsubscribe stop them`, async () => {
    await withBackend(async (backend) => {
      await withClients({ config: pollConfig(backend) }, async (server, clients) => {
        const ch = 'poll:board';
        backend.items.set('a', { data: { v: 'a1' }, version: 1 });
        backend.items.set('b', { data: { v: 'b1' }, version: 1 });
        backend.items.set('c', { data: { v: 'c1' }, version: 1 });
        const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
        const bob = await clients.connected(server.wsUrl, connectionToken('bob'), { protobuf });
        const sa = await pollSubscription(alice, ch, 'alice');
        const sb = await pollSubscription(bob, ch, 'bob');

        sa.track([{ key: 'a', version: 0 }, { key: 'b', version: 0 }, { key: 'c', version: 0 }], trackSignature('alice', ch, ['a', 'b', 'c']));
        await until(() => sa.updates.length === 3, "alice's first items");
        assert.deepEqual(seen(sa).sort(), ['a@1', 'b@1', 'c@1']);
        assert.deepEqual(valueOf(sa.updates.find((u) => u.key === 'b').data), { v: 'b1' });
        assert.equal(await gauge(server, 'switchboard_shared_poll_channels'), 1);
        assert.equal(await gauge(server, 'switchboard_shared_poll_keys'), 3);
        // Three keys in batches of two: no request names more than two.
        assert.ok(backend.requestsFor(ch).every((r) => r.items.length <= 2), JSON.stringify(backend.requests));
        assert.ok(backend.requestsFor(ch).some((r) => r.items.length === 2));

        // Bob tracks b only, after alice: he gets its current item at once.
        sb.track(['b']);
        await until(() => sb.updates.length === 1, "bob's item");
        assert.deepEqual(seen(sb), ['b@1']);

        backend.items.set('b', { data: { v: 'b2' }, version: 2 });
        await until(() => sa.updates.length === 4 && sb.updates.length === 2, 'the change of b on both');
        assert.deepEqual(seen(sb), ['b@1', 'b@2']);

        // An older version from the backend is no change; a removal is an update.
        backend.items.set('c', { data: { v: 'c0' }, version: 0 });
        backend.items.set('a', { data: null, version: 3, removed: true });
        await until(() => sa.updates.some((u) => u.removed), "alice's removal of a");
        const rounds = backend.requestsFor(ch).length;
        await until(() => backend.requestsFor(ch).length >= rounds + 4, 'two more rounds');
        assert.ok(!seen(sa).some((s) => s.startsWith('c@0')), seen(sa).join(' '));
        assert.ok(seen(sa).includes('a@3-'), seen(sa).join(' '));
        assert.deepEqual(seen(sb), ['b@1', 'b@2'], 'bob tracks b only');

        // Everyone unsubscribes: the channel is no longer polled (at most a request already
        // under way arrives), while another channel's loop goes on polling.
        sa.unsubscribe();
        sb.unsubscribe();
        // A subscribe on each connection: its reply comes after the unsubscribe was handled.
        const other = await pollSubscription(alice, 'poll:other', 'alice');
        await pollSubscription(bob, 'poll:bob-other', 'bob');
        const before = backend.requestsFor(ch).length;
        backend.items.set('d', { data: { v: 'd1' }, version: 1 });
        other.track(['d']);
        await until(() => other.updates.length === 1, 'the other channel polled');
        const mark = backend.requestsFor('poll:other').length;
        await until(() => backend.requestsFor('poll:other').length >= mark + 3, 'three more rounds of the other channel');
        assert.ok(backend.requestsFor(ch).length <= before + 1, `${backend.requestsFor(ch).length} requests after ${before}`);
        // Polled now: the other channel alone, its one key.
        assert.equal(await gauge(server, 'switchboard_shared_poll_channels'), 1);
        assert.equal(await gauge(server, 'switchboard_shared_poll_keys'), 1);
      });
    });
  });

  test(`${label}: versionless mode numbers changes of the data itself within an epoch`, async () => {
    await withBackend(async (backend) => {
      await withClients({ config: pollConfig(backend) }, async (server, clients) => {
        const ch = 'vl:scores';
        backend.items.set('x', { data: { score: 1 } });
        backend.items.set('y', { data: { score: 10 } });
        const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
        const sub = await pollSubscription(alice, ch, 'alice');
        assert.equal(sub._sharedPollEpoch.length, 8, 'a versionless subscribe names an epoch');
        sub.track(['x', 'y']);
        await until(() => sub.updates.length === 2, 'the first items');
        const first = sub.updates.find((u) => u.key === 'x');
        assert.ok(Number(first.version) > 0);
        // Same data again and again: nothing. y changes: only y comes, with a newer version.
        backend.items.set('y', { data: { score: 11 } });
        await until(() => sub.updates.length === 3, 'the change of y');
        assert.equal(sub.updates[2].key, 'y');
        assert.deepEqual(valueOf(sub.updates[2].data), { score: 11 });
        assert.ok(Number(sub.updates[2].version) > Number(sub.updates[1].version));
        backend.items.set('x', { data: { score: 2 } });
        await until(() => sub.updates.length === 4, 'the change of x');
        assert.deepEqual(sub.updates.map((u) => u.key), [...sub.updates.slice(0, 2).map((u) => u.key), 'y', 'x']);

        // A versioned namespace names no epoch.
        const versioned = await pollSubscription(alice, 'poll:v', 'alice');
        assert.equal(versioned._sharedPollEpoch, '');
      });
    });
  });

  test(`${label}: a bad signature is 103, an expired one 109, too many keys 106; the server goes on serving`, async () => {
    await withBackend(async (backend) => {
      await withClients({ config: pollConfig(backend, { maxKeys: 3 }) }, async (server, clients) => {
        const ch = 'poll:guarded';
        for (const k of ['k1', 'k2', 'k3', 'k4']) backend.items.set(k, { data: { k }, version: 1 });
        const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
        // No getSignature: the SDK reports the server's refusals and does not refresh.
        const sub = await pollSubscription(alice, ch, 'alice', { getSignature: undefined });

        sub.track([{ key: 'k1', version: 0 }], 'not-a-signature');
        await until(() => sub.errors.length === 1, 'the bad-signature error');
        assert.equal(sub.errors[0].type, 'track');
        assert.equal(sub.errors[0].error.code, 103, JSON.stringify(sub.errors[0]));
        // Signed for bob, or for other keys: refused the same way.
        sub.track([{ key: 'k1', version: 0 }], trackSignature('bob', ch, ['k1']));
        await until(() => sub.errors.length === 2, 'the wrong-user error');
        assert.equal(sub.errors[1].error.code, 103);

        sub.track([{ key: 'k2', version: 0 }], trackSignature('alice', ch, ['k2'], { ttl: -60 }));
        await until(() => sub.errors.length === 3, 'the expired-signature error');
        assert.equal(sub.errors[2].error.code, 109, JSON.stringify(sub.errors[2]));

        sub.track(
          ['k1', 'k2', 'k3', 'k4'].map((key) => ({ key, version: 0 })),
          trackSignature('alice', ch, ['k1', 'k2', 'k3', 'k4']),
        );
        await until(() => sub.errors.length === 4, 'the limit error');
        assert.equal(sub.errors[3].error.code, 106, JSON.stringify(sub.errors[3]));
        // The SDK reports refused keys as removed; no item of them ever came.
        assert.deepEqual(sub.updates.filter((u) => !u.removed), [], 'nothing refused was tracked');

        // Within the limit, with a good signature, the same connection tracks fine.
        const good = await pollSubscription(alice, 'poll:fine', 'alice');
        good.track(['k1', 'k2', 'k3']);
        await until(() => good.updates.length === 3, 'three items within the limit');
        const news = await subscribed(alice, 'news:after');
        await server.publish('news:after', { still: 'here' });
        await until(() => news.pubs.length === 1, 'a stream publication after the refusals');
        assert.equal(alice.state, 'connected');
      });
    });
  });

  test(`${label}: a backend that errors or is down delivers nothing until it is back; the server keeps serving`, async () => {
    await withBackend(async (backend) => {
      await withClients({ config: pollConfig(backend) }, async (server, clients) => {
        const ch = 'poll:flaky';
        backend.items.set('k', { data: { n: 1 }, version: 1 });
        const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
        const sub = await pollSubscription(alice, ch, 'alice');
        sub.track(['k']);
        await until(() => sub.updates.length === 1, 'the first item');

        let version = 1;
        for (const mode of ['error', 'status']) {
          backend.mode = mode;
          version += 1;
          const failedAt = backend.requestsFor(ch).length;
          backend.items.set('k', { data: { n: version }, version });
          await until(() => backend.requestsFor(ch).length >= failedAt + 2, `two failing rounds (${mode})`);
          assert.equal(sub.updates.length, version - 1, `nothing delivered while the backend fails (${mode})`);
          backend.mode = 'ok';
          await until(() => sub.updates.length === version, `the change once the backend answers (${mode})`);
          assert.equal(Number(sub.updates[version - 1].version), version);
        }

        // Down altogether: others are served meanwhile, and the change arrives once it is up.
        const port = backend.port;
        await backend.stop();
        version += 1;
        backend.items.set('k', { data: { n: version }, version });
        const news = await subscribed(alice, 'news:meanwhile');
        await server.publish('news:meanwhile', { ok: true });
        await until(() => news.pubs.length === 1, 'a stream publication while the backend is down');
        const bob = await clients.connected(server.wsUrl, connectionToken('bob'), { protobuf });
        const bobs = await pollSubscription(bob, ch, 'bob');
        assert.equal(bobs.state, 'subscribed');
        await backend.start(port);
        await until(() => sub.updates.some((u) => Number(u.version) === version), 'the change once the backend is back');
        assert.equal(alice.state, 'connected');
      });
    });
  });
}

/** A raw JSON-protocol connection (no SDK, so nothing is filtered client-side). */
async function rawConnection(url, token) {
  const { WebSocket } = require('ws');
  const ws = new WebSocket(url);
  const frames = [];
  ws.on('message', (data) => {
    for (const line of data.toString().split('\n')) if (line.trim()) frames.push(JSON.parse(line));
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  let id = 0;
  const call = async (command) => {
    id += 1;
    const mine = id;
    ws.send(JSON.stringify({ id: mine, ...command }));
    return until(() => frames.find((f) => f.id === mine), `the reply to ${JSON.stringify(command)}`);
  };
  const connected = await call({ connect: { token } });
  assert.ok(connected.connect, JSON.stringify(connected));
  const pushes = () => frames.filter((f) => f.push && f.push.pub).map((f) => f.push.pub);
  return { ws, call, frames, pushes };
}

test('raw json: each item goes to exactly the connections tracking its key; untrack stops it', async () => {
  await withBackend(async (backend) => {
    await withClients({ config: pollConfig(backend) }, async (server) => {
      const ch = 'poll:raw';
      backend.items.set('a', { data: { v: 1 }, version: 1 });
      backend.items.set('b', { data: { v: 1 }, version: 1 });
      const one = await rawConnection(server.wsUrl, connectionToken('one'));
      const two = await rawConnection(server.wsUrl, connectionToken('two'));
      try {
        for (const [conn, user, key] of [[one, 'one', 'a'], [two, 'two', 'b']]) {
          const sub = await conn.call({ subscribe: { channel: ch, type: 4 } });
          assert.ok(sub.subscribe, JSON.stringify(sub));
          const tracked = await conn.call({
            sub_refresh: { channel: ch, type: 1, track: [{ signature: trackSignature(user, ch, [key]), items: [{ key }] }] },
          });
          assert.ok(tracked.sub_refresh, JSON.stringify(tracked));
          assert.equal(tracked.sub_refresh.expires, true);
          assert.ok(tracked.sub_refresh.ttl > 3500 && tracked.sub_refresh.ttl <= 3600, JSON.stringify(tracked));
        }
        const got = (conn, key, version) => conn.pushes().some((p) => p.key === key && p.version === version);
        await until(() => got(one, 'a', 1) && got(two, 'b', 1), 'the first items');
        backend.items.set('a', { data: { v: 2 }, version: 2 });
        backend.items.set('b', { data: { v: 2 }, version: 2 });
        await until(() => got(one, 'a', 2) && got(two, 'b', 2), 'the changes');
        assert.ok(one.pushes().every((p) => p.key === 'a'), JSON.stringify(one.pushes()));
        assert.ok(two.pushes().every((p) => p.key === 'b'), JSON.stringify(two.pushes()));
        assert.deepEqual(one.pushes().find((p) => p.version === 2).data, { v: 2 });

        // A key tracked already is answered in the track reply itself.
        const late = await two.call({
          sub_refresh: { channel: ch, type: 1, track: [{ signature: trackSignature('two', ch, ['a']), items: [{ key: 'a', version: 1 }] }] },
        });
        assert.deepEqual(late.sub_refresh.items.map((p) => [p.key, p.version]), [['a', 2]]);

        const untracked = await one.call({ sub_refresh: { channel: ch, type: 2, untrack: ['a'] } });
        assert.ok(untracked.sub_refresh, JSON.stringify(untracked));
        backend.items.set('a', { data: { v: 3 }, version: 3 });
        await until(() => got(two, 'a', 3), 'the change of a on the other connection');
        const rounds = backend.requestsFor(ch).length;
        await until(() => backend.requestsFor(ch).length >= rounds + 4, 'two more rounds');
        assert.ok(!got(one, 'a', 3), 'an untracked key is not sent');

        // Track and untrack on a channel that is not subscribed, or not a shared poll.
        const notSubscribed = await one.call({ sub_refresh: { channel: 'poll:elsewhere', type: 2, untrack: ['a'] } });
        assert.equal(notSubscribed.error.code, 103, JSON.stringify(notSubscribed));
        const notPoll = await one.call({ sub_refresh: { channel: 'news:x', type: 1, track: [] } });
        assert.equal(notPoll.error.code, 108, JSON.stringify(notPoll));
        const streamSub = await one.call({ subscribe: { channel: 'poll:stream' } });
        assert.equal(streamSub.error.code, 108, JSON.stringify(streamSub));
        const clientPublish = await one.call({ publish: { channel: ch, data: { x: 1 } } });
        assert.equal(clientPublish.error.code, 108, JSON.stringify(clientPublish));
        // The server API cannot publish into a shared poll either: its items are the backend's.
        const { body } = await server.api('publish', { channel: ch, data: { x: 1 } });
        assert.equal(body.error.code, 108, JSON.stringify(body));
        assert.match(body.error.message, /shared-poll channel/);
        const still = await one.call({ ping: {} });
        assert.ok(still.ping, JSON.stringify(still));
      } finally {
        one.ws.close();
        two.ws.close();
      }
    });
  });
});

for (const kind of Object.keys(BROKERS)) {
  test(`${kind}: two nodes each poll for their own connections; versionless epochs differ per node`, { timeout: 30000 }, async (t) => {
    const cleanups = cleanupsFor(t);
    const backend = await new Backend().start();
    cleanups.push(() => backend.stop());
    const broker = await startBroker(kind);
    cleanups.push(() => broker.stop());
    const nodes = [1, 2].map((i) => new Server({ config: pollConfig(backend), env: { ...broker.env, SWITCHBOARD_NODE_NAME: `${kind}-poll-${i}` } }));
    cleanups.push(() => Promise.all(nodes.map((node) => node.stop())));
    await Promise.all(nodes.map((node) => node.start()));
    const clients = new Clients();
    cleanups.push(() => clients.closeAll());

    backend.items.set('k', { data: { n: 1 }, version: 1 });
    const alice = await clients.connected(nodes[0].wsUrl, connectionToken('alice'));
    const bob = await clients.connected(nodes[1].wsUrl, connectionToken('bob'));
    const sa = await pollSubscription(alice, 'poll:cluster', 'alice');
    const sb = await pollSubscription(bob, 'poll:cluster', 'bob');
    sa.track(['k']);
    sb.track(['k']);
    await until(() => sa.updates.length === 1 && sb.updates.length === 1, 'the item on both nodes');
    backend.items.set('k', { data: { n: 2 }, version: 2 });
    await until(() => sa.updates.length === 2 && sb.updates.length === 2, 'the change on both nodes');
    assert.deepEqual([seen(sa), seen(sb)], [['k@1', 'k@2'], ['k@1', 'k@2']]);

    const va = await pollSubscription(alice, 'vl:cluster', 'alice');
    const vb = await pollSubscription(bob, 'vl:cluster', 'bob');
    assert.equal(va._sharedPollEpoch.length, 8);
    assert.notEqual(va._sharedPollEpoch, vb._sharedPollEpoch, 'versionless versions are per node');
  });
}
