'use strict';
// What Switchboard does not have is refused with a clear error, never degraded: a
// presence-as-map subscription (error 108, "not supported"), a shared-poll subscription to a
// channel that is not a shared poll (108, "not a shared-poll channel": shared polls are tested
// in shared-poll.test.js), a map subscription, map
// publish or removal to a channel that is not a map (108, "not a map channel": maps are
// tested in maps.test.js), and rpc with no rpc hook (108). Driven by the real `centrifuge`
// SDK, JSON and Protobuf builds; after each refusal the connection keeps serving a plain
// stream subscription.

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

  test(`${label}: shared poll and presence-as-map subscriptions are refused with 108, and map commands to a stream channel too; the connection keeps working`, async () => {
    const cfg = config({ news: { subscribe: 'authenticated', publish: 'subscribers' } });
    await withClients({ config: cfg }, async (server, clients) => {
      const alice = await clients.connected(server.wsUrl, connectionToken('alice'), { protobuf });
      for (const [make, channel, reason] of [
        [(c) => alice.newSharedPollSubscription(c), 'news:poll', /not a shared-poll channel/],
        [(c) => alice.newMapUsersSubscription(c), 'news:users', /subscription type not supported/],
      ]) {
        const sub = make(channel);
        const outcome = firstOf(sub, SUB_EVENTS);
        sub.subscribe();
        const { name, ctx } = await outcome;
        assert.equal(name, 'unsubscribed', `${channel}: must not look subscribed: ${name} ${JSON.stringify(ctx)}`);
        assert.equal(ctx.code, 108, JSON.stringify(ctx));
        assert.match(ctx.reason, reason);
      }

      // `news` is not a map namespace: the SDK must not see a subscribed (empty) map.
      const map = alice.newMapSubscription('news:map');
      const outcome = firstOf(map, SUB_EVENTS);
      map.subscribe();
      const { name, ctx } = await outcome;
      assert.equal(name, 'unsubscribed', `the SDK must not see a subscribed (empty) map: ${name} ${JSON.stringify(ctx)}`);
      assert.equal(ctx.code, 108, JSON.stringify(ctx));
      assert.match(ctx.reason, /not a map channel/);

      // The SDK's mapRemove is a keyed publish: refused with 108, the connection stays open.
      const err = await rejectionOf(alice.mapRemove('news:map', 'some-key'));
      assert.equal(err.code, 108, JSON.stringify(err));
      assert.match(err.message, /not a map channel/);
      const pubErr = await rejectionOf(alice.mapPublish('news:map', 'some-key', protobuf ? new TextEncoder().encode('{"v":1}') : { v: 1 }));
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
