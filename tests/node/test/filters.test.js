'use strict';
// Tag filters: publications published through the server API with `tags`, and subscribers of
// the same channel with the SDK's `tagsFilter`, each receiving only what its filter passes, live
// and in recovery. The real `centrifuge` SDK, JSON and Protobuf builds.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { connectionToken, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { subscribed, subscription, withClients } = require('../lib/sdk');

/** The JSON value of a publication's data, whatever the build (protobuf gives bytes). */
const valueOf = (data) => (data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(data)) : data);
const ns = (sub) => sub.pubs.map((p) => valueOf(p.data).n);

const TICKS = [
  { n: 1, tags: { ticker: 'BTC', price: '50001' } },
  { n: 2, tags: { ticker: 'ETH', price: '3000' } },
  { n: 3, tags: { ticker: 'BTC', price: '49000' } },
  { n: 4, tags: { ticker: 'SOL', price: '150' } },
  { n: 5 }, // no tags
  { n: 6, tags: { ticker: 'BTC', price: '51000' } },
];

for (const protobuf of [false, true]) {
  const label = protobuf ? 'protobuf' : 'json';

  test(`${label}: subscribers with different tag filters each get exactly the publications their filter passes; an unfiltered one gets all`, async () => {
    const cfg = config({ market: { subscribe: 'authenticated' } });
    await withClients({ config: cfg }, async (server, clients) => {
      const client = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const other = await clients.connected(server.wsUrl, connectionToken('bob'), { protobuf });
      const btc = await subscribed(client, 'market:ticks', { tagsFilter: { key: 'ticker', cmp: 'eq', val: 'BTC' } });
      const rich = await subscribed(other, 'market:ticks', {
        tagsFilter: { op: 'and', nodes: [{ key: 'ticker', cmp: 'in', vals: ['BTC', 'ETH'] }, { key: 'price', cmp: 'gt', val: '50000' }] },
      });
      const noTicker = await subscribed(other, 'market:untagged', {});
      const carol = await clients.connected(server.wsUrl, connectionToken('carol'), { protobuf });
      const all = await subscribed(carol, 'market:ticks');
      for (const { n, tags } of TICKS) {
        const body = { channel: 'market:ticks', data: { n } };
        if (tags) body.tags = tags;
        await server.call('publish', body);
      }
      await server.publish('market:untagged', { n: 0 });
      await until(() => all.pubs.length >= TICKS.length, 'every publication reaches the unfiltered subscriber');
      // Publications are delivered in order per connection; the last BTC one (6) comes after
      // every other, so once it arrived nothing else is on its way.
      await until(() => ns(btc).includes(6) && ns(rich).includes(6), 'the last matching publication');
      assert.deepEqual(ns(all), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(ns(btc), [1, 3, 6]);
      assert.deepEqual(ns(rich), [1, 6]);
      await until(() => noTicker.pubs.length >= 1, 'the other channel');
      const tagsSeen = all.pubs.map((p) => p.tags || {});
      assert.deepEqual(tagsSeen[0], { ticker: 'BTC', price: '50001' }, 'publications carry their tags');
    });
  });

  test(`${label}: a filtered subscription recovers only what its filter passes, and a bad filter is error 107`, async () => {
    const cfg = config({ market: { subscribe: 'authenticated', history_size: 20, history_ttl: '60s', recover: true } });
    await withClients({ config: cfg }, async (server, clients) => {
      const client = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const first = await server.call('publish', { channel: 'market:r', data: { n: 0 }, tags: { ticker: 'BTC' } });
      for (const { n, tags } of TICKS) {
        const body = { channel: 'market:r', data: { n } };
        if (tags) body.tags = tags;
        await server.call('publish', body);
      }
      // Recover from the first publication's position: the SDK's `since` option.
      const sub = subscription(client, 'market:r', {
        since: { offset: first.offset, epoch: first.epoch },
        tagsFilter: { key: 'ticker', cmp: 'eq', val: 'BTC' },
      });
      const outcome = new Promise((resolve) => sub.once('subscribed', resolve));
      sub.subscribe();
      const ctx = await outcome;
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      await until(() => sub.pubs.length >= 3, 'the recovered BTC publications');
      assert.deepEqual(ns(sub), [1, 3, 6]);

      const bad = subscription(client, 'market:bad', { tagsFilter: { key: 'ticker', cmp: 'like', val: 'B%' } });
      const refused = new Promise((resolve) => bad.once('unsubscribed', resolve));
      bad.subscribe();
      assert.equal((await refused).code, 107);
      assert.equal(client.state, 'connected');
    });
  });
}
