'use strict';
// Pusher webhooks, per-user presence and per-app limits, driven by the real `pusher-js` client
// and the real `pusher` server SDK (which also checks each webhook's signature) against the
// release binary, with a small HTTP receiver in the test standing in for the app's backend; the
// last test runs two nodes on a private redis-server, then on a private nats-server.

const assert = require('node:assert/strict');
const http = require('node:http');
const { after, test } = require('node:test');

const { Server, until, withServer: serve } = require('../lib/harness');
const { connected, pusherClient, pusherServer, subscribed } = require('../lib/pusher');
const { startBroker } = require('../lib/brokers');
const { config } = require('../lib/config');

const SECRET = 'hooks-secret-0123456789';

// Every pusher-js client this file makes. Each is disconnected while its server still runs: a
// client whose server went away first keeps reconnecting, and its timers keep this test
// process alive after the last test.
const everyClient = [];

/** The harness' `withServer`, disconnecting every client before the server stops. */
async function withServer(options, fn) {
  await serve(options, async (server) => {
    try {
      await fn(server);
    } finally {
      for (const client of everyClient) client.disconnect();
    }
  });
}

after(() => {
  for (const client of everyClient) client.disconnect();
});

function app(extra = {}) {
  return { id: 'hooked', key: 'hooked-key', secret: SECRET, client_events: true, ...extra };
}

function pusherConfig(appConfig, pusher = {}) {
  return config({}, { pusher: { webhook_batch_window: '300ms', ...pusher, apps: [appConfig] } });
}

const sdk = (server, appConfig) => pusherServer(server, appConfig);

/**
 * A webhook receiver on a free loopback port. `answer(n)` gives the status of the n-th request
 * (from 0). Every request is kept with its headers and raw body.
 */
async function receiver(answer = () => 200) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const status = answer(requests.length);
      requests.push({ headers: req.headers, rawBody: Buffer.concat(chunks).toString('utf8'), status });
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/hooks`,
    requests,
    /** The events of the requests answered 2xx, in order. */
    events: () => requests.filter((r) => r.status < 300).flatMap((r) => JSON.parse(r.rawBody).events),
    close: () => new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    }),
  };
}

function opener(server, appConfig, clients) {
  return ({ user } = {}) => {
    const client = pusherClient(server, appConfig, { user, userInfo: { name: user } });
    clients.push(client);
    everyClient.push(client);
    return client;
  };
}

async function metric(server, name, label) {
  const text = await (await fetch(`http://${server.base}/metrics`)).text();
  return text
    .split('\n')
    .filter((line) => line.startsWith(name) && (!label || line.includes(label)))
    .reduce((sum, line) => sum + Number(line.split(' ').pop()), 0);
}

const named = (events, name, extra = {}) =>
  events.filter((e) => e.name === name && Object.entries(extra).every(([k, v]) => e[k] === v));

test('webhooks: signed, batched; occupied/vacated, members once per user, client events', async () => {
  const hooks = await receiver();
  const appConfig = app({ webhooks: [{ url: hooks.url }] });
  const clients = [];
  try {
    await withServer({ config: pusherConfig(appConfig) }, async (server) => {
      const open = opener(server, appConfig, clients);
      const bob = open({ user: 'bob' });
      const alice1 = open({ user: 'alice' });
      const alice2 = open({ user: 'alice' });
      const carol = open({ user: 'carol' });
      await Promise.all([bob, alice1, alice2, carol].map(connected));

      const room = await subscribed(bob, 'presence-room');
      const added = [];
      const removed = [];
      room.bind('pusher:member_added', (m) => added.push(m.id));
      room.bind('pusher:member_removed', (m) => removed.push(m.id));
      await subscribed(alice1, 'presence-room');
      await until(() => added.length === 1, 'alice added');
      // alice's second connection: no second member_added; alice listed once.
      const second = await subscribed(alice2, 'presence-room');
      assert.equal(second.members.count, 2);
      assert.deepEqual(Object.keys(second.members.members).sort(), ['alice', 'bob']);
      await subscribed(carol, 'presence-room');
      await until(() => added.length === 2, 'carol added');
      assert.deepEqual(added, ['alice', 'carol']);

      // alice's first connection leaves: alice is still there; carol's leave shows the order.
      alice1.disconnect();
      await until(async () => (await sdk(server, appConfig).get({ path: '/channels/presence-room', params: { info: 'subscription_count' } }).then((r) => r.json())).subscription_count === 3, 'alice1 gone');
      carol.disconnect();
      await until(() => removed.length === 1, 'carol removed');
      assert.deepEqual(removed, ['carol']);
      alice2.disconnect();
      await until(() => removed.length === 2, 'alice removed');
      assert.deepEqual(removed, ['carol', 'alice']);

      // Client events on a private channel, sent together: one webhook request holds them.
      const priv = await subscribed(bob, 'private-chat');
      const bobSocket = bob.connection.socket_id;
      for (let i = 0; i < 3; i += 1) priv.trigger('client-typing', { i });
      await until(() => named(hooks.events(), 'client_event').length === 3, 'three client_event webhooks');
      bob.disconnect();
      await until(() => named(hooks.events(), 'channel_vacated').length === 2, 'both channels vacated');

      // Every request is signed with the app's secret under the app's key.
      const verifier = sdk(server, appConfig);
      for (const request of hooks.requests) {
        assert.equal(request.headers['x-pusher-key'], appConfig.key);
        const hook = verifier.webhook({ headers: request.headers, rawBody: request.rawBody });
        assert.ok(hook.isValid(), `signature of ${request.rawBody}`);
        assert.equal(typeof JSON.parse(request.rawBody).time_ms, 'number');
      }
      const events = hooks.events();
      assert.equal(named(events, 'member_added', { user_id: 'alice' }).length, 1);
      assert.equal(named(events, 'member_removed', { user_id: 'alice' }).length, 1);
      assert.equal(named(events, 'member_added', { user_id: 'bob' }).length, 1);
      assert.equal(named(events, 'channel_occupied', { channel: 'presence-room' }).length, 1);
      assert.equal(named(events, 'channel_occupied', { channel: 'private-chat' }).length, 1);
      assert.equal(named(events, 'channel_vacated', { channel: 'presence-room' }).length, 1);
      const typing = named(events, 'client_event');
      assert.deepEqual(typing.map((e) => JSON.parse(e.data).i), [0, 1, 2]);
      assert.ok(typing.every((e) => e.event === 'client-typing' && e.channel === 'private-chat' && e.socket_id === bobSocket));
      const batched = hooks.requests.some((r) => JSON.parse(r.rawBody).events.filter((e) => e.name === 'client_event').length >= 2);
      assert.ok(batched, 'client events sent together share a request');
      assert.ok(hooks.requests.length < events.length, 'fewer requests than events');
      await until(async () => (await metric(server, 'switchboard_pusher_webhook_events_total', 'outcome="sent"')) === events.length, 'sent events counted');
    });
  } finally {
    for (const client of clients) client.disconnect();
    await hooks.close();
  }
});

test('webhooks: a 500 is retried with the same signed body; a receiver that is down does not stop the server', async () => {
  const flaky = await receiver((n) => (n === 0 ? 500 : 200));
  const appConfig = app({ webhooks: [{ url: flaky.url, events: ['channel_occupied'] }] });
  const clients = [];
  try {
    await withServer({ config: pusherConfig(appConfig) }, async (server) => {
      const open = opener(server, appConfig, clients);
      const client = open();
      await connected(client);
      await subscribed(client, 'news');
      await until(() => flaky.requests.length === 2, 'the retry');
      assert.equal(flaky.requests[0].status, 500);
      assert.equal(flaky.requests[1].rawBody, flaky.requests[0].rawBody);
      assert.equal(flaky.requests[1].headers['x-pusher-signature'], flaky.requests[0].headers['x-pusher-signature']);
      assert.deepEqual(flaky.events().map((e) => [e.name, e.channel]), [['channel_occupied', 'news']]);
      await until(async () => (await metric(server, 'switchboard_pusher_webhook_requests_total', 'result="ok"')) === 1, 'the retry counted');
      assert.equal(await metric(server, 'switchboard_pusher_webhook_requests_total', 'result="error"'), 1);
    });
  } finally {
    for (const client of clients) client.disconnect();
    await flaky.close();
  }

  // Nothing listens on the webhook URL; the queue holds two events, each request carries one
  // and fails three times, so the events of ten channels cannot all wait.
  const gone = await receiver();
  await gone.close();
  const down = app({ webhooks: [{ url: gone.url }] });
  try {
    await withServer({ config: pusherConfig(down, { webhook_queue: 2, webhook_max_batch: 1, webhook_attempts: 3 }) }, async (server) => {
      const open = opener(server, down, clients);
      const client = open({ user: 'u' });
      const other = open({ user: 'v' });
      await Promise.all([client, other].map(connected));
      const api = sdk(server, down);
      for (let i = 0; i < 10; i += 1) {
        const channel = await subscribed(client, `ch-${i}`);
        const seen = [];
        channel.bind('ev', (d) => seen.push(d));
        await api.trigger(`ch-${i}`, 'ev', { i });
        await until(() => seen.length === 1, `event on ch-${i}`);
        client.unsubscribe(`ch-${i}`);
      }
      const p = await subscribed(other, 'presence-x');
      assert.equal(p.members.count, 1);
      await until(async () => (await metric(server, 'switchboard_pusher_webhook_events_total', 'outcome="dropped"')) > 0, 'dropped events counted');
      await until(async () => (await metric(server, 'switchboard_pusher_webhook_events_total', 'outcome="failed"')) > 0, 'failed events counted');
    });
  } finally {
    for (const client of clients) client.disconnect();
  }
});

test('per-app limits: connections (4004), client event rate (4301), payload size (413), channels per event', async () => {
  const appConfig = app({ max_connections: 2, max_client_events_per_second: 2, max_event_bytes: 1000, max_channels_per_event: 3 });
  const clients = [];
  try {
    await withServer({ config: pusherConfig(appConfig) }, async (server) => {
      const open = opener(server, appConfig, clients);
      const a = open({ user: 'a' });
      const b = open({ user: 'b' });
      await Promise.all([a, b].map(connected));
      const refused = open({ user: 'c' });
      await until(() => refused.errors.some((e) => JSON.stringify(e).includes('4004')), 'pusher:error 4004');
      refused.disconnect();

      const chatA = await subscribed(a, 'private-chat');
      const chatB = await subscribed(b, 'private-chat');
      const seen = [];
      chatB.bind('client-x', (d) => seen.push(d));
      for (let i = 0; i < 4; i += 1) chatA.trigger('client-x', { i });
      await until(() => a.errors.some((e) => e.data && e.data.code === 4301), 'pusher:error 4301');
      chatA.trigger('client-x', { big: 'x'.repeat(2000) });
      await until(() => a.errors.some((e) => e.data && /larger than 1000/.test(e.data.message)), 'oversize client event refused');
      assert.equal(a.connection.state, 'connected');

      const api = sdk(server, appConfig);
      await assert.rejects(api.trigger('news', 'ev', 'x'.repeat(2000)), (e) => e.status === 413);
      await assert.rejects(api.trigger(['a', 'b', 'c', 'd'], 'ev', {}), (e) => e.status === 400);
      // Still serving: a small event reaches its subscriber.
      await until(() => seen.length >= 1, 'client events within the rate');
      const news = await subscribed(b, 'news');
      const got = [];
      news.bind('ev', (d) => got.push(d));
      await api.trigger(['news', 'b', 'c'], 'ev', { ok: true });
      await until(() => got.length === 1, 'the event after the refusals');
    });
  } finally {
    for (const client of clients) client.disconnect();
  }
});

for (const kind of ['redis', 'nats']) {
  test(`across two nodes on ${kind}: a user on both nodes is one member, announced and hooked once`, async () => {
    const hooks = await receiver();
    const appConfig = app({ webhooks: [{ url: hooks.url, events: ['member_added', 'member_removed'] }] });
    const broker = await startBroker(kind);
    const nodes = [1, 2].map((i) => new Server({ config: pusherConfig(appConfig), env: { ...broker.env, SWITCHBOARD_NODE_NAME: `hooked-${i}` } }));
    const clients = [];
    try {
      await Promise.all(nodes.map((node) => node.start()));
      const [one, two] = nodes;
      const watcher = opener(one, appConfig, clients)({ user: 'watcher' });
      const dana1 = opener(one, appConfig, clients)({ user: 'dana' });
      const dana2 = opener(two, appConfig, clients)({ user: 'dana' });
      const eve = opener(two, appConfig, clients)({ user: 'eve' });
      await Promise.all([watcher, dana1, dana2, eve].map(connected));
      const room = await subscribed(watcher, 'presence-hall');
      const added = [];
      const removed = [];
      room.bind('pusher:member_added', (m) => added.push(m.id));
      room.bind('pusher:member_removed', (m) => removed.push(m.id));
      await subscribed(dana1, 'presence-hall');
      await until(() => added.length === 1, 'dana added');
      // Presence entries reach the broker after the join: wait until node 2 reads dana's.
      const ids = async () => (await (await sdk(two, appConfig).get({ path: '/channels/presence-hall/users' })).json()).users.map((u) => u.id).sort();
      await until(async () => (await ids()).join() === 'dana,watcher', 'dana listed by node 2');
      await subscribed(dana2, 'presence-hall');
      await subscribed(eve, 'presence-hall');
      await until(() => added.length === 2, 'eve added');
      assert.deepEqual(added, ['dana', 'eve']);

      dana1.disconnect();
      const count = async () => (await (await sdk(one, appConfig).get({ path: '/channels/presence-hall', params: { info: 'subscription_count' } })).json()).subscription_count;
      await until(async () => (await count()) === 3, 'dana1 gone');
      eve.disconnect();
      await until(() => removed.length === 1, 'eve removed');
      dana2.disconnect();
      await until(() => removed.length === 2, 'dana removed');
      assert.deepEqual(removed, ['eve', 'dana']);
      await until(() => named(hooks.events(), 'member_removed').length === 2, 'member_removed webhooks');
      const events = hooks.events();
      assert.equal(named(events, 'member_added', { user_id: 'dana' }).length, 1);
      assert.equal(named(events, 'member_removed', { user_id: 'dana' }).length, 1);
    } finally {
      for (const client of clients) client.disconnect();
      await Promise.all(nodes.map((node) => node.stop()));
      await broker.stop();
      await hooks.close();
    }
  });
}
