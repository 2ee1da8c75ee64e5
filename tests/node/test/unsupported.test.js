'use strict';
// What Switchboard does not have is refused with a clear error, never degraded: a map or shared
// poll subscription, a map publish or removal (error 108, "not supported"), and rpc with no rpc
// hook (108). Driven by the real `centrifuge` SDK, JSON and Protobuf builds; after
// each refusal the connection keeps serving a plain stream subscription.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { connectionToken, rejectionOf, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { subscribed, withClients } = require('../lib/sdk');

const SUB_EVENTS = ['subscribed', 'unsubscribed', 'error'];

/** The first of `names` that `emitter` emits, with its context. */
function firstOf(emitter, names) {
  return new Promise((resolve) => {
    for (const name of names) emitter.once(name, (ctx) => resolve({ name, ctx }));
  });
}

for (const protobuf of [false, true]) {
  const label = protobuf ? 'protobuf' : 'json';

  test(`${label}: a map subscription is refused with 108 instead of showing an empty map, and the connection keeps working`, async () => {
    const cfg = config({ news: { subscribe: 'authenticated', publish: 'subscribers' } });
    await withClients({ config: cfg }, async (server, clients) => {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const map = alice.newMapSubscription('news:map');
      const outcome = firstOf(map, SUB_EVENTS);
      map.subscribe();
      const { name, ctx } = await outcome;
      assert.equal(name, 'unsubscribed', `the SDK must not see a subscribed (empty) map: ${name} ${JSON.stringify(ctx)}`);
      assert.equal(ctx.code, 108, JSON.stringify(ctx));
      assert.match(ctx.reason, /not supported/);

      // The SDK's mapRemove is a keyed publish: refused with 108, the connection stays open.
      const err = await rejectionOf(alice.mapRemove('news:map', 'some-key'));
      assert.equal(err.code, 108, JSON.stringify(err));
      assert.match(err.message, /not supported/);
      const pubErr = await rejectionOf(alice.mapPublish('news:map', 'some-key', { v: 1 }));
      assert.equal(pubErr.code, 108, JSON.stringify(pubErr));

      const sub = await subscribed(alice, 'news:after');
      await server.publish('news:after', { still: 'here' });
      await until(() => sub.pubs.length >= 1, 'a publication after the refusals');
      assert.equal(alice.state, 'connected');
      assert.equal(alice.events.filter((e) => e.name === 'disconnected').length, 0, 'never disconnected');
    });
  });

  test(`${label}: rpc with no rpc hook is 108 not available`, async () => {
    const cfg = config({ news: { subscribe: 'authenticated' } });
    await withClients({ config: cfg }, async (server, clients) => {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      const err = await rejectionOf(alice.rpc('anything', protobuf ? new TextEncoder().encode('{}') : {}));
      assert.equal(err.code, 108, JSON.stringify(err));
      const sub = await subscribed(alice, 'news:after-rpc');
      assert.equal(sub.state, 'subscribed');
      assert.equal(alice.state, 'connected');
    });
  });
}
