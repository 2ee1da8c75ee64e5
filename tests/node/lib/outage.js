'use strict';
// One scenario run in JSON and in Protobuf: the client's own network drops while publications
// flow, and the SDK must reconnect and recover every publication exactly once, in order.

const assert = require('node:assert/strict');

const { HOST, connectionToken, nextEvent, sleep, until } = require('./harness');
const { config } = require('./config');
const { startProxy } = require('./proxy');
const { subscribed, withClients } = require('./sdk');

/**
 * Runs the network-drop scenario. `connectOptions` go to the SDK client (`{ protobuf: true }`
 * for Protobuf); `numberOf(data)` reads the publication's counter back from what the SDK hands
 * over (an object in JSON, bytes in Protobuf).
 */
async function recoversEveryPublicationThroughANetworkDrop({ connectOptions, numberOf }) {
  // History deep enough that nothing published during the test is dropped from it.
  const feed = { subscribe: 'authenticated', history_size: 10000, history_ttl: '5m', recover: true };
  await withClients({ config: config({ feed }) }, async (server, clients) => {
    const proxy = await startProxy(server.port);
    let publishing = true;
    let published = 0;
    const publisher = (async () => {
      // Publications keep flowing through the API, paced lightly, until told to stop.
      while (publishing && published < 5000) {
        published += 1;
        await server.publish('feed:live', { n: published });
        await sleep(5);
      }
    })();
    try {
      const url = `ws://${HOST}:${proxy.port}/connection/websocket`;
      const client = await clients.connected(url, connectionToken('alice'), connectOptions);
      const sub = await subscribed(client, 'feed:live');
      assert.equal(sub.subscribedCtx.recoverable, true, JSON.stringify(sub.subscribedCtx));
      const firstOffset = sub.subscribedCtx.streamPosition.offset + 1;
      await until(() => sub.pubs.length >= 20, '20 live publications');

      // The network goes: both sides of the proxied connection reset, reconnects refused.
      const lost = nextEvent(client, 'connecting');
      const recovered = nextEvent(sub, 'subscribed', () => true, 30000);
      proxy.blocked = true;
      const accepted = proxy.accepted;
      proxy.drop();
      await lost;
      const missedFrom = published;
      // Publications go on while the client is cut off, and it keeps trying.
      await until(() => published >= missedFrom + 50 && proxy.accepted > accepted, 'publications and a refused reconnect while cut off', 20000);
      proxy.blocked = false;

      const ctx = await recovered;
      assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      // Live publications go on after the recovery; then the publisher stops.
      const lastOffset = () => (sub.pubs.length ? sub.pubs[sub.pubs.length - 1].offset : 0);
      await until(() => lastOffset() >= missedFrom + 100, 'live publications after the recovery', 20000);
      publishing = false;
      await publisher;
      // A gap would never let this complete: the comparison below then shows it.
      await until(() => lastOffset() >= published, 'the last publication', 10000).catch(() => {});

      const expected = Array.from({ length: published - firstOffset + 1 }, (_, i) => firstOffset + i);
      assert.deepEqual(sub.pubs.map((p) => p.offset), expected, 'every publication exactly once, in offset order');
      assert.deepEqual(sub.pubs.map((p) => numberOf(p.data)), expected, 'offsets follow the publication order');
      assert.equal(client.state, 'connected');
      assert.ok(proxy.accepted > accepted + 1, 'the client came back through the proxy');
    } finally {
      publishing = false;
      await publisher.catch(() => {});
      await proxy.close();
    }
  });
}

module.exports = { recoversEveryPublicationThroughANetworkDrop };
