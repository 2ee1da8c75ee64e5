'use strict';
// Fossil delta compression with the real `centrifuge` SDK (JSON and Protobuf builds): a
// subscriber that asks for `delta: 'fossil'` gets `delta: true` in its subscribe reply and the
// stream's publications as deltas the SDK applies; it ends up with the same data as a
// subscriber without delta, in fewer bytes on the wire (counted on its socket); recovery after
// a reconnect replays deltas too (the first whole).

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { connectionToken, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { WebSocket, subscribed, withClients } = require('../lib/sdk');

/** A `ws` WebSocket class that adds every received message's bytes to `counter.bytes`. */
function countingWebSocket(counter) {
  return class CountingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on('message', (data) => {
        // A Buffer, an ArrayBuffer (the protobuf build sets binaryType) or fragments.
        const size = (b) => (b.byteLength !== undefined ? b.byteLength : b.length);
        counter.bytes += Array.isArray(data) ? data.reduce((n, b) => n + size(b), 0) : size(data);
      });
    }
  };
}

const valueOf = (data) => (data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(data)) : data);

/** A ~5 KB JSON document: a list of items, one of which changes at each version. */
function documentAt(version) {
  const items = [];
  for (let i = 0; i < 50; i++) {
    items.push({ id: i, name: `item number ${i}`, status: 'active', price: i * 10 + (i === version % 50 ? version : 0) });
  }
  return { version, updated: `2026-12-06T10:00:${String(version % 60).padStart(2, '0')}Z`, items };
}

const cfg = () => config({ doc: { subscribe: 'authenticated', history_size: 100, history_ttl: '5m', recover: true } });

for (const protobuf of [false, true]) {
  const label = protobuf ? 'protobuf' : 'json';

  test(`${label}: a delta subscriber gets the same data as a plain one in far fewer bytes`, async () => {
    await withClients({ config: cfg() }, async (server, clients) => {
      const plainBytes = { bytes: 0 };
      const deltaBytes = { bytes: 0 };
      const plain = await clients.connected(server.wsUrl, connectionToken('p'), { protobuf, websocket: countingWebSocket(plainBytes) });
      const viaDelta = await clients.connected(server.wsUrl, connectionToken('d'), { protobuf, websocket: countingWebSocket(deltaBytes) });
      const a = await subscribed(plain, 'doc:live');
      const b = await subscribed(viaDelta, 'doc:live', { delta: 'fossil' });
      // Count only the publications.
      plainBytes.bytes = 0;
      deltaBytes.bytes = 0;
      const N = 30;
      for (let v = 1; v <= N; v++) await server.publish('doc:live', documentAt(v));
      await until(() => a.pubs.length >= N && b.pubs.length >= N, 'every publication at both');
      assert.deepEqual(b.pubs.map((p) => valueOf(p.data)), a.pubs.map((p) => valueOf(p.data)));
      assert.deepEqual(valueOf(b.pubs[N - 1].data), documentAt(N));
      const stats = b.deltaStats();
      assert.equal(stats.numPublications, N, JSON.stringify(stats));
      assert.equal(stats.numFullPayloads, 1, `only the first whole: ${JSON.stringify(stats)}`);
      assert.equal(stats.numDeltaPayloads, N - 1, JSON.stringify(stats));
      console.log(`${label}: ${N} publications of ~${JSON.stringify(documentAt(1)).length} B: plain ${plainBytes.bytes} B on the wire, delta ${deltaBytes.bytes} B`);
      assert.ok(deltaBytes.bytes * 5 < plainBytes.bytes, `delta ${deltaBytes.bytes} B vs plain ${plainBytes.bytes} B`);
    });
  });

  test(`${label}: a delta subscriber recovers missed publications as deltas after a reconnect and ends with the right data`, async () => {
    await withClients({ config: cfg() }, async (server, clients) => {
      const client = await clients.connected(server.wsUrl, connectionToken('d'), { protobuf });
      const sub = await subscribed(client, 'doc:rec', { delta: 'fossil' });
      for (let v = 1; v <= 3; v++) await server.publish('doc:rec', documentAt(v));
      await until(() => sub.pubs.length >= 3, 'the first three');
      const resubscribed = new Promise((resolve) => sub.once('subscribed', resolve));
      client.disconnect();
      for (let v = 4; v <= 10; v++) await server.publish('doc:rec', documentAt(v));
      client.connect();
      const ctx = await resubscribed;
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      await until(() => sub.pubs.length >= 10, 'the recovered ones');
      for (let v = 11; v <= 12; v++) await server.publish('doc:rec', documentAt(v));
      await until(() => sub.pubs.length >= 12, 'live ones after recovery');
      assert.deepEqual(sub.pubs.map((p) => valueOf(p.data).version), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
      assert.deepEqual(valueOf(sub.pubs[11].data), documentAt(12));
      const stats = sub.deltaStats();
      // Whole: the first live one, the first recovered one, the first live one after it.
      assert.equal(stats.numFullPayloads, 3, JSON.stringify(stats));
      assert.equal(stats.numDeltaPayloads, 9, JSON.stringify(stats));
    });
  });
}

test('an unknown delta kind is error 107', async () => {
  await withClients({ config: cfg() }, async (server, clients) => {
    const client = await clients.connected(server.wsUrl, connectionToken('d'));
    // The SDK refuses anything but 'fossil' itself; ask by hand over a raw socket.
    const ws = new WebSocket(server.wsUrl);
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    const replies = [];
    ws.on('message', (data) => { for (const line of String(data).split('\n')) if (line.trim()) replies.push(JSON.parse(line)); });
    ws.send(JSON.stringify({ id: 1, connect: { token: connectionToken('raw') } }));
    ws.send(JSON.stringify({ id: 2, subscribe: { channel: 'doc:x', delta: 'xdelta' } }));
    await until(() => replies.some((r) => r.id === 2), 'the subscribe reply');
    assert.equal(replies.find((r) => r.id === 2).error.code, 107);
    ws.close();
    assert.equal(client.state, 'connected');
  });
});

test('a publication whose JSON-string form could not reach a JSON delta subscriber is refused at publish time (106), and both subscribers go on', async () => {
  // A delta subscriber in JSON gets `data` as a JSON string: here each `""` of the array
  // becomes `\"\"`, so the frame is 5/3 of the raw one. The raw frame fits the 64 KiB queue,
  // the string form would not: it would close the delta subscriber as slow (3008) at every
  // try, so the publication is refused as too large for anyone.
  const limited = config(
    { doc: { subscribe: 'authenticated', history_size: 100, history_ttl: '5m', recover: true } },
    { limits: { max_queued_bytes: 65536 } },
  );
  await withClients({ config: limited }, async (server, clients) => {
    const plainClient = await clients.connected(server.wsUrl, connectionToken('p'));
    const deltaClient = await clients.connected(server.wsUrl, connectionToken('d'));
    const plain = await subscribed(plainClient, 'doc:big');
    const viaDelta = await subscribed(deltaClient, 'doc:big', { delta: 'fossil' });
    const big = new Array(14000).fill('');
    const raw = JSON.stringify(big).length;
    assert.ok(raw < 60000 && JSON.stringify(JSON.stringify(big)).length > 66000, `raw ${raw} B`);
    const { status, body } = await server.api('publish', { channel: 'doc:big', data: big });
    assert.equal(status, 200, JSON.stringify(body));
    assert.deepEqual(body.error, { code: 106, message: 'publication too large' });
    // Nothing was published; both subscribers are still connected and served.
    await server.publish('doc:big', { after: true });
    await until(() => plain.pubs.length === 1 && viaDelta.pubs.length === 1, 'the next publication at both');
    assert.deepEqual([plain.pubs[0].data, viaDelta.pubs[0].data], [{ after: true }, { after: true }]);
    assert.equal(deltaClient.events.filter((e) => e.name === 'disconnected').length, 0, JSON.stringify(deltaClient.events));
    assert.equal(deltaClient.state, 'connected');
  });
});

test('with permessage-deflate, a delta subscriber gets its whole publications compressed, and the deltas after them', async () => {
  const deflating = config(
    { doc: { subscribe: 'authenticated', history_size: 100, history_ttl: '5m', recover: true } },
    { server: { permessage_deflate: true } },
  );
  await withClients({ config: deflating }, async (server, clients) => {
    // The `ws` client offers permessage-deflate; count the bytes its socket read.
    const sockets = [];
    const Recording = class extends WebSocket {
      constructor(...args) {
        super(...args);
        sockets.push(this);
      }
    };
    const client = await clients.connected(server.wsUrl, connectionToken('d'), { websocket: Recording });
    const sub = await subscribed(client, 'doc:deflate', { delta: 'fossil' });
    const socket = sockets[sockets.length - 1];
    assert.match(socket.extensions, /permessage-deflate/);
    const read = () => socket._socket.bytesRead;
    // The first publication goes whole: its `data` a JSON string of the ~5 KB document.
    let before = read();
    await server.publish('doc:deflate', documentAt(1));
    await until(() => sub.pubs.length === 1, 'the whole one');
    const whole = read() - before;
    const stringForm = JSON.stringify(JSON.stringify(documentAt(1))).length;
    assert.ok(whole * 3 < stringForm, `whole publication: ${whole} B read for a ${stringForm} B JSON string`);
    // The next ones are deltas, applied to the same data.
    before = read();
    for (let v = 2; v <= 5; v++) await server.publish('doc:deflate', documentAt(v));
    await until(() => sub.pubs.length === 5, 'the deltas');
    assert.deepEqual(sub.pubs.map((p) => p.data), [1, 2, 3, 4, 5].map(documentAt));
    const stats = sub.deltaStats();
    assert.equal(stats.numDeltaPayloads, 4, JSON.stringify(stats));
    console.log(`deflate: whole ${whole} B read (JSON string ${stringForm} B), 4 deltas ${read() - before} B read`);
  });
});
