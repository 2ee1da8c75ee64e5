'use strict';
// Node loss in a cluster, with the real `centrifuge` SDK, for each broker (Redis, NATS): three
// `switchboard` nodes joined by a private redis-server / nats-server, a TCP forwarder standing
// for the load balancer (new connections go to the first node that accepts, node 1 first), a
// recoverable subscription through it, and a publisher on node 3's API. Node 1, the client's
// node, is killed with SIGKILL while publications flow: the SDK reconnects through the forwarder
// to node 2 and recovers from the shared stream every publication, once, in order.
//
// The broker servers are started here on free loopback ports (never the default 6379 / 4222)
// and, like the nodes, stopped by their pid in the test's `after` hook (and killed on exit as a
// last resort). tests/node/run.sh and scripts/test install redis-server and nats-server when
// they are missing.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { test } = require('node:test');

const { HOST, Server, connectionToken, freePort, nextEvent, sleep, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { Clients, subscribed } = require('../lib/sdk');

// Broker servers still running, killed on exit if a test left one behind.
const brokerPids = new Set();
process.on('exit', () => {
  for (const pid of brokerPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** `name` on PATH or in the usual system directories (Debian puts nats-server in /usr/sbin). */
function findBinary(name) {
  const dirs = [...(process.env.PATH || '').split(path.delimiter), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** A free loopback port that is none of the brokers' default ports (those are never touched). */
async function privatePort() {
  for (;;) {
    const port = await freePort();
    if (port !== 6379 && port !== 4222 && port !== 8222) return port;
  }
}

/** Does a TCP exchange on `port` answer with something matching `expected`? */
function probe(port, send, expected) {
  return new Promise((resolve) => {
    const socket = net.connect(port, HOST);
    let got = '';
    const done = (ok) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 500);
    socket.on('error', () => done(false));
    socket.on('connect', () => send && socket.write(send));
    socket.on('data', (chunk) => {
      got += chunk;
      if (expected.test(got)) done(true);
    });
  });
}

const BROKERS = {
  redis: {
    binary: 'redis-server',
    async args(port) {
      return { args: ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no'] };
    },
    ready: (port) => probe(port, 'PING\r\n', /\+PONG/),
    env: (port) => ({ SWITCHBOARD_BROKER: 'redis', SWITCHBOARD_REDIS_URL: `redis://${HOST}:${port}` }),
  },
  nats: {
    binary: 'nats-server',
    async args(port, dir) {
      const monitor = await privatePort();
      return { args: ['-js', '-a', HOST, '-p', String(port), '-m', String(monitor), '-sd', path.join(dir, 'jetstream')], monitor };
    },
    // /healthz answers 200 once JetStream is up.
    async ready(port, { monitor }) {
      if (!(await probe(port, null, /^INFO /))) return false;
      try {
        const res = await fetch(`http://${HOST}:${monitor}/healthz`, { signal: AbortSignal.timeout(500) });
        return res.status === 200;
      } catch {
        return false;
      }
    },
    env: (port) => ({ SWITCHBOARD_BROKER: 'nats', SWITCHBOARD_NATS_URL: `nats://${HOST}:${port}` }),
  },
};

/** Starts a private broker server of `kind` and waits until it serves. */
async function startBroker(kind) {
  const spec = BROKERS[kind];
  const binary = findBinary(spec.binary);
  if (!binary) throw new Error(`${spec.binary} not found (tests/node/run.sh and scripts/test install it)`);
  const port = await privatePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `switchboard-${kind}-`));
  const logPath = path.join(dir, `${kind}.log`);
  const extra = await spec.args(port, dir);
  const log = fs.openSync(logPath, 'a');
  const proc = spawn(binary, extra.args, { cwd: dir, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  brokerPids.add(proc.pid);
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      brokerPids.delete(proc.pid);
      proc.exitStatus = { code, signal };
      resolve(proc.exitStatus);
    });
  });
  const broker = {
    kind,
    port,
    env: spec.env(port),
    readLog: () => {
      try {
        return fs.readFileSync(logPath, 'utf8');
      } catch {
        return '';
      }
    },
    async stop() {
      if (!proc.exitStatus) {
        try {
          process.kill(proc.pid, 'SIGTERM');
        } catch {
          // exited meanwhile
        }
        let timer;
        const status = await Promise.race([exited, new Promise((resolve) => (timer = setTimeout(resolve, 5000, null)))]);
        clearTimeout(timer);
        if (!status) {
          process.kill(proc.pid, 'SIGKILL');
          await exited;
        }
      }
      if (!process.env.SWITCHBOARD_TEST_KEEP) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + 10000;
  for (;;) {
    if (proc.exitStatus) throw new Error(`${spec.binary} exited early (${JSON.stringify(proc.exitStatus)}):\n${broker.readLog()}`);
    if (await spec.ready(port, extra)) return broker;
    if (Date.now() > deadline) {
      await broker.stop();
      throw new Error(`${spec.binary} did not serve on ${port} within 10 s:\n${broker.readLog()}`);
    }
    await sleep(50);
  }
}

/**
 * The load balancer: listens on a free loopback port and forwards each new connection to the
 * first of `ports` that accepts it (a dead node refuses, so the next one gets it). `routes`
 * lists the index of the node each connection went to.
 */
async function startForwarder(ports) {
  const sockets = new Set();
  const routes = [];
  const track = (socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  };
  const server = net.createServer((client) => {
    track(client);
    const attempt = (i) => {
      if (i >= ports.length || client.destroyed) {
        client.resetAndDestroy();
        return;
      }
      const upstream = net.connect(ports[i], HOST);
      let connected = false;
      upstream.on('error', () => {
        if (connected) return;
        upstream.destroy();
        attempt(i + 1);
      });
      upstream.once('connect', () => {
        connected = true;
        track(upstream);
        routes.push(i);
        // Either side closing (a killed node's kernel resets its sockets) closes the other.
        for (const [from, to] of [[client, upstream], [upstream, client]]) {
          from.on('close', () => to.destroy());
          from.pipe(to);
        }
      });
    };
    attempt(0);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, resolve);
  });
  return {
    port: server.address().port,
    routes,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

// History deep and long enough that nothing published during a test leaves it.
const feed = { subscribe: 'authenticated', history_size: 10000, history_ttl: '5m', recover: true };
const clusterConfig = config({ feed }, { server: { shutdown_drain: '1s' } });

const tail = (text, lines = 40) => text.trim().split('\n').slice(-lines).join('\n');

for (const kind of Object.keys(BROKERS)) {
  test(`${kind}: the client's node is killed (SIGKILL) while publications flow; the SDK reconnects to another node and recovers every one, once, in order`, { timeout: 28000 }, async (t) => {
    // Stopped in reverse order of start, pass or fail: publisher, clients, forwarder, nodes, broker.
    const cleanups = [];
    t.after(async () => {
      for (const cleanup of cleanups.reverse()) {
        try {
          await cleanup();
        } catch {
          // keep stopping the rest
        }
      }
    });

    const broker = await startBroker(kind);
    cleanups.push(() => broker.stop());
    const nodes = [1, 2, 3].map(
      (i) => new Server({ config: clusterConfig, env: { ...broker.env, SWITCHBOARD_NODE_NAME: `${kind}-node-${i}` } }),
    );
    cleanups.push(() => Promise.all(nodes.map((node) => node.stop())));
    const [node1, node2, node3] = nodes;

    try {
      await Promise.all(nodes.map((node) => node.start()));
      const lb = await startForwarder(nodes.map((node) => node.port));
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
