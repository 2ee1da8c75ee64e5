'use strict';
// Node loss in a cluster, with the real `centrifuge` SDK, for each broker (Redis, NATS): three
// `switchboard` nodes joined by a private redis-server / nats-server, a TCP forwarder standing
// for the load balancer (new connections go to the first node that accepts, node 1 first), a
// recoverable subscription through it, and a publisher on node 3's API. Node 1, the client's
// node, is killed with SIGKILL while publications flow: the SDK reconnects through the forwarder
// to node 2 and recovers from the shared stream every publication, once, in order. On Redis,
// one node's admin UI also lists the other node with the counters it announces.
//
// The broker servers are started here on free loopback ports (never the default 6379 / 4222)
// and, like the nodes, stopped by their pid in the test's `after` hook (and killed on exit as a
// last resort). tests/node/run.sh and scripts/test install redis-server and nats-server when
// they are missing.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { HOST, Server, cleanupsFor, connectionToken, nextEvent, sleep, until } = require('../lib/harness');
const { startProxy } = require('../lib/proxy');
const { BROKERS, startBroker } = require('../lib/brokers');
const { config } = require('../lib/config');
const { Clients, subscribed } = require('../lib/sdk');

// History deep and long enough that nothing published during a test leaves it.
const feed = { subscribe: 'authenticated', history_size: 10000, history_ttl: '5m', recover: true };
const clusterConfig = config({ feed }, { server: { shutdown_drain: '1s' } });

const tail = (text, lines = 40) => text.trim().split('\n').slice(-lines).join('\n');

for (const kind of Object.keys(BROKERS)) {
  test(`${kind}: the client's node is killed (SIGKILL) while publications flow; the SDK reconnects to another node and recovers every one, once, in order`, { timeout: 28000 }, async (t) => {
    // Stopped in reverse order of start, pass or fail: publisher, clients, forwarder, nodes, broker.
    const cleanups = cleanupsFor(t);

    const broker = await startBroker(kind);
    cleanups.push(() => broker.stop());
    const nodes = [1, 2, 3].map(
      (i) => new Server({ config: clusterConfig, env: { ...broker.env, SWITCHBOARD_NODE_NAME: `${kind}-node-${i}` } }),
    );
    cleanups.push(() => Promise.all(nodes.map((node) => node.stop())));
    const [node1, node2, node3] = nodes;

    try {
      await Promise.all(nodes.map((node) => node.start()));
      const lb = await startProxy(nodes.map((node) => node.port), { order: 'first' });
      cleanups.push(() => lb.close());

      const channel = `feed:cluster-${kind}`;
      const clients = new Clients();
      cleanups.push(() => clients.closeAll());
      // A reconnect delay of 250-500 ms: the client is away long enough to miss publications.
      const client = await clients.connected(`ws://${HOST}:${lb.port}/connection/websocket`, connectionToken('alice'), {
        minReconnectDelay: 250,
        maxReconnectDelay: 1000,
      });
      const sub = await subscribed(client, channel, { recoverable: true, positioned: true });
      assert.deepEqual(lb.routes, [0], 'the first connection goes to node 1');
      const [self1] = (await node1.call('info', {})).nodes;
      assert.equal(self1.num_subs, 1, JSON.stringify(self1));
      const first = sub.subscribedCtx;
      assert.equal(first.recoverable, true, JSON.stringify(first));
      assert.equal(first.positioned, true, JSON.stringify(first));
      assert.equal(first.wasRecovering, false, JSON.stringify(first));
      const epoch = first.streamPosition?.epoch;
      assert.ok(epoch, JSON.stringify(first));
      const firstOffset = first.streamPosition.offset + 1;

      // The publisher starts once the client is subscribed: it gets every publication live or
      // recovered, from the first.
      const acked = []; // {n, offset, epoch} of every publication node 3 acknowledged, in order
      const failures = [];
      let publishing = true;
      const publisher = (async () => {
        // One publication every 20 ms through node 3's API, each awaited (acknowledged).
        for (let n = 1; publishing && n <= 1000; n++) {
          const started = Date.now();
          try {
            const result = await node3.publish(channel, { n });
            acked.push({ n, offset: result.offset, epoch: result.epoch });
          } catch (err) {
            failures.push({ n, error: String(err && err.message) });
          }
          await sleep(Math.max(0, 20 - (Date.now() - started)));
        }
      })();
      cleanups.push(async () => {
        publishing = false;
        await publisher;
      });

      await until(() => sub.pubs.length >= 25, '25 live publications on node 1', 10000);

      // Node 1 dies: its kernel resets the client's connection; the SDK reconnects through the
      // forwarder, which node 1 now refuses, so node 2 gets it.
      const lost = nextEvent(client, 'connecting');
      const resubscribed = nextEvent(sub, 'subscribed', () => true, 15000);
      const killed = await node1.kill('SIGKILL');
      assert.equal(killed.signal, 'SIGKILL');
      await lost;
      const ackedAtLoss = acked.length;
      const receivedAtLoss = sub.pubs.length;
      const ctx = await resubscribed;
      const ackedAtRecovery = acked.length;
      assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      assert.equal(ctx.recoverable, true, JSON.stringify(ctx));
      assert.equal(ctx.streamPosition?.epoch, epoch, 'the stream outlives the node: same epoch');
      assert.equal(client.state, 'connected');
      assert.equal(lb.routes[lb.routes.length - 1], 1, `the reconnect goes to node 2 (routes ${JSON.stringify(lb.routes)})`);
      assert.ok(ackedAtRecovery > ackedAtLoss, `publications acknowledged while the client was away (${ackedAtLoss} -> ${ackedAtRecovery})`);
      // `info` lists the node itself first, with its own counts. (Not the API's `channels`: a
      // survey over the broker that, before a node has heard the others' announcements, sums
      // whichever single answer comes first, possibly another node's.)
      const [self2] = (await node2.call('info', {})).nodes;
      assert.equal(self2.name, `${kind}-node-2`, JSON.stringify(self2));
      assert.equal(self2.num_clients, 1, JSON.stringify(self2));
      assert.equal(self2.num_subs, 1, JSON.stringify(self2));

      // Live publications go on after the recovery; then the publisher stops.
      const lastReceived = () => (sub.pubs.length ? sub.pubs[sub.pubs.length - 1].offset : 0);
      const target = acked[ackedAtRecovery - 1].offset + 25;
      await until(() => lastReceived() >= target, `live publications on node 2 up to offset ${target}`, 10000);
      publishing = false;
      await publisher;
      const lastAcked = acked[acked.length - 1].offset;
      // A gap would never let this complete: the comparisons below then show it.
      await until(() => lastReceived() >= lastAcked, `the last acknowledged publication (offset ${lastAcked})`, 5000).catch(() => {});

      assert.deepEqual(failures, [], 'node 3 acknowledged every publication');
      const expected = Array.from({ length: lastAcked - firstOffset + 1 }, (_, i) => firstOffset + i);
      assert.deepEqual(acked.map((p) => p.offset), expected, 'node 3 acknowledged consecutive offsets');
      assert.ok(acked.every((p) => p.epoch === epoch), 'one epoch for every publication');
      assert.deepEqual(sub.pubs.map((p) => p.offset), expected, 'every acknowledged publication exactly once, in offset order, no gap');
      assert.deepEqual(
        sub.pubs.map((p) => p.data.n),
        acked.map((p) => p.n),
        'each offset carries the publication acknowledged with it',
      );
      assert.ok(receivedAtLoss < sub.pubs.length);
      t.diagnostic(
        `${kind}: ${acked.length} publications; ${receivedAtLoss} received on node 1, ${ackedAtRecovery - receivedAtLoss}+ recovered on node 2`,
      );
    } catch (err) {
      const logs = [
        ...nodes.map((node, i) => `--- node ${i + 1} log (${node.logPath}) ---\n${tail(node.readLog())}`),
        `--- ${kind} log ---\n${tail(broker.readLog(), 20)}`,
      ];
      try {
        err.message += `\n${logs.join('\n')}`;
      } catch {
        // read-only message
      }
      throw err;
    }
  });
}

test('redis: the admin UI of one node lists every node of the cluster with the counters each announces', { timeout: 28000 }, async (t) => {
  const cleanups = cleanupsFor(t);
  const broker = await startBroker('redis');
  cleanups.push(() => broker.stop());
  const password = 'cluster-admin-password';
  const adminConfig = config({ feed }, { server: { shutdown_drain: '1s' }, admin: { enabled: true }, node: { announce_interval: '300ms' } });
  const nodes = [1, 2].map(
    (i) => new Server({ config: adminConfig, env: { ...broker.env, SWITCHBOARD_NODE_NAME: `admin-node-${i}`, SWITCHBOARD_ADMIN_PASSWORD: password } }),
  );
  cleanups.push(() => Promise.all(nodes.map((node) => node.stop())));
  const [node1, node2] = nodes;
  await Promise.all(nodes.map((node) => node.start()));

  // A client on node 2 is sent publications: node 2's totals move.
  const clients = new Clients();
  cleanups.push(() => clients.closeAll());
  const client = await clients.connected(node2.wsUrl, connectionToken('watched'));
  const sub = await subscribed(client, 'feed:admin-cluster');
  for (let n = 1; n <= 5; n++) await node1.publish('feed:admin-cluster', { n });
  await until(() => sub.pubs.length === 5, 'five publications on node 2');

  const login = await fetch(`http://${node1.base}/admin/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ password }),
  });
  assert.equal(login.status, 200);
  const cookie = login.headers.get('set-cookie').split(';')[0];
  const nodesSeen = async () => {
    const res = await fetch(`http://${node1.base}/admin/api/nodes`, { headers: { Cookie: cookie } });
    assert.equal(res.status, 200);
    return res.json();
  };
  // Node 1's page shows node 2 as node 2 last announced itself: its client and what it sent.
  const seen = await until(async () => {
    const body = await nodesSeen();
    const other = body.nodes.find((n) => n.name === 'admin-node-2');
    return other && other.num_clients === 1 && other.messages_out >= 5 && other.bytes_out > 0 ? body : null;
  }, "node 2's announced counters on node 1's admin page");
  assert.equal(seen.nodes.length, 2, JSON.stringify(seen));
  assert.equal(seen.nodes[0].name, 'admin-node-1', 'this node first');
  assert.equal(seen.nodes[0].uid, seen.this);
  assert.equal(seen.broker, 'redis');
});
