'use strict';
// The client protocol over HTTP streaming and SSE with bidirectional emulation, driven by the
// real `centrifuge` SDK in Node through its `transports` option: http_stream in JSON and
// Protobuf (the SDK's protobuf build), SSE in JSON (the SDK's SSE transport is JSON only; the
// EventSource is the `eventsource` package, Node 20 has none). Each connects, subscribes,
// receives publications from the server API, publishes and reads presence and history through
// the emulation endpoint, recovers what it missed after its stream is cut, and reads a server
// disconnect's code from a disconnect push. A second test runs two nodes on a private
// redis-server behind a round-robin forwarder, so the stream lands on one node and emulation
// requests alternate between the nodes: the other node routes them through the broker.

const assert = require('node:assert/strict');
const { test } = require('node:test');
const EventSource = require('eventsource');

const { HOST, Server, cleanupsFor, connectionToken, nextEvent, until, withServer } = require('../lib/harness');
const { BROKERS, startBroker } = require('../lib/brokers');
const { config } = require('../lib/config');
const { startProxy } = require('../lib/proxy');
const { Clients, subscribed } = require('../lib/sdk');

const feed = {
  subscribe: 'authenticated',
  publish: 'subscribers',
  presence: true,
  history_size: 100,
  history_ttl: '5m',
  recover: true,
};

const CASES = [
  { transport: 'http_stream', protobuf: false },
  { transport: 'http_stream', protobuf: true },
  { transport: 'sse', protobuf: false },
];

/** The SDK's endpoint list for a client that only speaks `transport` to the server at `base`. */
const endpoints = (base, transport) => [{ transport, endpoint: `${base}/connection/${transport}` }];

/** The SDK options that go with it: where emulation requests go, and the EventSource. */
const emulation = (base) => ({ emulationEndpoint: `${base}/emulation`, eventsource: EventSource });

for (const { transport, protobuf } of CASES) {
  const name = `${transport} ${protobuf ? 'protobuf' : 'json'}`;
  test(`${name}: connect, subscribe, publications from the API, publish/presence/history through emulation, recovery after the stream is cut, and a server disconnect code`, { timeout: 60000 }, async () => {
    await withServer({ config: config({ feed }) }, async (server) => {
      const clients = new Clients();
      const proxy = await startProxy(server.port);
      try {
        const base = `http://${HOST}:${proxy.port}`;
        const client = await clients.connected(endpoints(base, transport), connectionToken('alice'), {
          protobuf,
          ...emulation(base),
        });
        assert.equal(client.connectedCtx.transport, transport);
        const channel = `feed:${transport}-${protobuf ? 'pb' : 'json'}`;
        // The protobuf build hands data over as bytes (the JSON the API published, here).
        const dataOf = (p) => (protobuf ? JSON.parse(new TextDecoder().decode(p.data)) : p.data);
        const encode = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
        const sub = await subscribed(client, channel, { recoverable: true });

        // Publications from the server API reach the stream.
        await server.publish(channel, { n: 1 });
        await server.publish(channel, { n: 2 });
        await until(() => sub.pubs.length === 2, 'two publications from the API');
        assert.deepEqual(sub.pubs.map((p) => dataOf(p).n), [1, 2]);

        // Commands through the emulation endpoint.
        await sub.publish(encode({ n: 3, from: 'client' }));
        await until(() => sub.pubs.length === 3, 'the client publication comes back on the stream');
        assert.equal(dataOf(sub.pubs[2]).from, 'client');
        const presence = await sub.presence();
        assert.deepEqual(Object.values(presence.clients).map((c) => c.user), ['alice']);
        const history = await sub.history({ limit: 10 });
        assert.deepEqual(history.publications.map((p) => dataOf(p).n), [1, 2, 3]);

        // The client's network drops: publications made meanwhile are recovered on reconnect.
        const resubscribed = nextEvent(sub, 'subscribed', () => true, 20000);
        proxy.blocked = true;
        proxy.drop();
        await nextEvent(client, 'connecting');
        await server.publish(channel, { n: 4 });
        await server.publish(channel, { n: 5 });
        proxy.blocked = false;
        const ctx = await resubscribed;
        assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
        assert.equal(ctx.recovered, true, JSON.stringify(ctx));
        await until(() => sub.pubs.length === 5, 'the missed publications recovered');
        assert.deepEqual(sub.pubs.map((p) => dataOf(p).n), [1, 2, 3, 4, 5]);

        // The API disconnects the user: the code reaches the client in a disconnect push.
        const disconnected = nextEvent(client, 'disconnected');
        assert.deepEqual(await server.call('disconnect', { user: 'alice' }), {});
        const gone = await disconnected;
        assert.equal(gone.code, 3503, JSON.stringify(gone));
        assert.equal(client.state, 'disconnected');

        const metrics = await (await fetch(`http://${server.base}/metrics`)).text();
        assert.match(metrics, /switchboard_emulation_requests_total\{result="local"\} [1-9]/);
      } finally {
        clients.closeAll();
        await proxy.close();
      }
    });
  });
}

test('an emulation request for an unknown session is dropped with 200, a bad body or an oversized body gets its error, and the stream of another client goes on', { timeout: 30000 }, async () => {
  await withServer({ config: config({ feed }, { limits: { max_message_bytes: 4096 } }) }, async (server) => {
    const clients = new Clients();
    try {
      const client = await clients.connected(endpoints(`http://${server.base}`, "http_stream"), connectionToken("bob"), emulation(`http://${server.base}`));
      const sub = await subscribed(client, 'feed:bad-input');
      const post = (body, type = 'application/json') =>
        fetch(`http://${server.base}/emulation`, { method: 'POST', headers: { 'Content-Type': type }, body });
      // Dropped and answered as a forwarded one is (see the two-node test below).
      const unknown = await post(JSON.stringify({ session: 'no-such-session', node: '', data: '{}' }));
      assert.equal(unknown.status, 200);
      assert.equal(await unknown.text(), '');
      const bad = await post('not json');
      assert.equal(bad.status, 400);
      assert.equal((await bad.json()).error.code, 'bad_emulation_request');
      const big = await post(JSON.stringify({ session: 'x', data: 'x'.repeat(20000) }));
      assert.equal(big.status, 413);
      assert.equal((await big.json()).error.code, 'body_too_large');
      await server.publish('feed:bad-input', { ok: true });
      await until(() => sub.pubs.length === 1, 'the other client still gets publications');
      await sub.publish({ still: 'served' });
      await until(() => sub.pubs.length === 2, 'and its commands are still served');
    } finally {
      clients.closeAll();
    }
  });
});

// The proxy in front of the nodes is round robin: a load balancer with no sticky sessions.
test('redis: two nodes behind a round-robin forwarder; emulation requests that land on the other node reach the session through the broker', { timeout: 60000 }, async (t) => {
  const cleanups = cleanupsFor(t);
  const broker = await startBroker('redis');
  cleanups.push(() => broker.stop());
  const nodes = [1, 2].map((i) => new Server({ config: config({ feed }), env: { ...broker.env, SWITCHBOARD_NODE_NAME: `transports-node-${i}` } }));
  cleanups.push(() => Promise.all(nodes.map((node) => node.stop())));
  await Promise.all(nodes.map((node) => node.start()));
  // Each node has heard the other before a client names it.
  await until(async () => (await nodes[0].call('info', {})).nodes.length === 2 && (await nodes[1].call('info', {})).nodes.length === 2, 'both nodes know each other');

  const lb = await startProxy(nodes.map((node) => node.port));
  cleanups.push(() => lb.close());
  const base = `http://${HOST}:${lb.port}`;
  // Node's fetch keeps connections alive and reuses them: a fresh connection per request makes
  // every emulation request go through the round robin.
  const freshFetch = (url, options = {}) => fetch(url, { ...options, headers: { ...(options.headers || {}), Connection: 'close' } });
  const clients = new Clients();
  cleanups.push(() => clients.closeAll());
  const client = await clients.connected(endpoints(base, 'http_stream'), connectionToken('carol'), { ...emulation(base), fetch: freshFetch });
  const channel = 'feed:two-nodes';
  const sub = await subscribed(client, channel);
  await sub.publish({ n: 1 });
  await sub.publish({ n: 2 });
  const presence = await sub.presence();
  assert.deepEqual(Object.values(presence.clients).map((c) => c.user), ['carol']);
  await until(() => sub.pubs.length === 2, 'both publications back on the stream');
  assert.deepEqual(sub.pubs.map((p) => p.data.n), [1, 2]);
  assert.ok(new Set(lb.routes).size === 2, `requests reached both nodes (routes ${JSON.stringify(lb.routes)})`);
  const forwarded = async (node) => {
    const metrics = await (await fetch(`http://${node.base}/metrics`)).text();
    return /switchboard_emulation_requests_total\{result="forwarded"\} [1-9]/.test(metrics);
  };
  assert.ok((await forwarded(nodes[0])) || (await forwarded(nodes[1])), 'a node forwarded an emulation request through the broker');
  await nodes[1].publish(channel, { n: 3 });
  await until(() => sub.pubs.length === 3, 'a publication on the other node reaches the stream');

  // A session that has ended: its commands posted to the node that held it and to the other
  // node (which forwards them through the broker) get the same answer, and the holding node
  // drops them both times.
  const { session, node } = await endedSession(nodes[0]);
  const answers = [];
  for (const target of [nodes[0], nodes[1]]) {
    const response = await fetch(`http://${target.base}/emulation`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ session, node, data: JSON.stringify({ id: 2, presence: { channel } }) }),
    });
    answers.push({ status: response.status, body: await response.text() });
  }
  assert.deepEqual(answers, [{ status: 200, body: '' }, { status: 200, body: '' }], 'the local and the forwarded request are answered alike');
  const dropped = async (server) => {
    const metrics = await (await fetch(`http://${server.base}/metrics`)).text();
    return /switchboard_emulation_requests_total\{result="unknown_session"\} 1\b/.test(metrics);
  };
  assert.ok(await dropped(nodes[0]), 'the holding node counted the one posted to it as dropped');
  assert.ok(!(await dropped(nodes[1])), 'the forwarding node did not');
  // The node that holds the live client still serves it.
  await sub.publish({ n: 4 });
  await until(() => sub.pubs.length === 4, 'the live client is still served');
});

/**
 * Opens an HTTP stream on `server` with a raw connect, reads its session and node from the
 * connect reply, then ends it and waits until the node no longer has the connection.
 */
async function endedSession(server) {
  // `info` lists the answering node first, with its live count.
  const clientsHere = async () => (await server.call('info', {})).nodes[0].num_clients;
  const before = await clientsHere();
  const abort = new AbortController();
  const response = await fetch(`http://${server.base}/connection/http_stream`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: 1, connect: { token: connectionToken('dave') } }) + '\n',
    signal: abort.signal,
  });
  assert.equal(response.status, 200);
  const reader = response.body.getReader();
  let text = '';
  while (!text.includes('\n')) {
    const { value, done } = await reader.read();
    assert.ok(!done, 'the connect reply came');
    text += new TextDecoder().decode(value);
  }
  const reply = JSON.parse(text.slice(0, text.indexOf('\n')));
  assert.equal(await clientsHere(), before + 1);
  abort.abort();
  await until(async () => (await clientsHere()) === before, 'the ended stream left the node');
  return { session: reply.connect.session, node: reply.connect.node };
}
