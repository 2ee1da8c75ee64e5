'use strict';
// Reconnects and recovery with the real `centrifuge` SDK: a server killed and restarted, the
// client's own network dropping (a TCP proxy in between), and a terminal disconnect by the API.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { connectionToken, nextEvent, sleep, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { recoversEveryPublicationThroughANetworkDrop } = require('../lib/outage');
const { subscribed, withClients } = require('../lib/sdk');

const feed = { subscribe: 'authenticated', history_size: 1000, history_ttl: '5m', recover: true };

test('server killed (SIGKILL) and restarted on the same port: the SDK reconnects, resubscribes, wasRecovering and not recovered', async () => {
  await withClients({ config: config({ feed }) }, async (server, clients) => {
    const client = await clients.connected(server.wsUrl, connectionToken('alice'));
    const sub = await subscribed(client, 'feed:restart');
    assert.equal(sub.subscribedCtx.recoverable, true, JSON.stringify(sub.subscribedCtx));
    assert.equal(sub.subscribedCtx.wasRecovering, false);
    for (let n = 1; n <= 3; n++) await server.publish('feed:restart', { n });
    await until(() => sub.pubs.length >= 3, '3 publications before the restart');
    assert.deepEqual(sub.pubs.map((p) => p.offset), [1, 2, 3]);
    const oldEpoch = sub.subscribedCtx.streamPosition?.epoch;
    assert.ok(oldEpoch, JSON.stringify(sub.subscribedCtx));

    const lost = nextEvent(client, 'connecting');
    const resubscribed = nextEvent(sub, 'subscribed', () => true, 30000);
    const killed = await server.kill('SIGKILL');
    assert.equal(killed.signal, 'SIGKILL');
    await lost;
    assert.equal(sub.state, 'subscribing');

    await server.start();
    const ctx = await resubscribed;
    assert.equal(client.state, 'connected');
    assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
    assert.equal(ctx.recovered, false, JSON.stringify(ctx));
    assert.equal(ctx.recoverable, true, JSON.stringify(ctx));
    assert.notEqual(ctx.streamPosition?.epoch, oldEpoch, 'a restarted memory broker starts a new epoch');

    // Live again in the new epoch.
    await server.publish('feed:restart', { n: 'after' });
    await until(() => sub.pubs.length >= 4, 'a publication after the restart');
    assert.deepEqual(sub.pubs[3].data, { n: 'after' });
    assert.equal(sub.pubs[3].offset, 1);
  });
});

test("the client's network drops while publications flow: the SDK reconnects and recovers every one, once, in order", async () => {
  await recoversEveryPublicationThroughANetworkDrop({ numberOf: (data) => data.n });
});

test('the API disconnects a user: the SDK gets 3503, stays disconnected, and others are still served', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    await subscribed(alice, 'news:x');
    const bob = await clients.connected(server.wsUrl, connectionToken('bob'));
    const bobSub = await subscribed(bob, 'news:x');

    const gone = nextEvent(alice, 'disconnected');
    assert.deepEqual(await server.call('disconnect', { user: 'alice' }), {});
    const ctx = await gone;
    assert.equal(ctx.code, 3503, JSON.stringify(ctx));
    assert.equal(alice.state, 'disconnected');

    // Bob is served; Alice did not come back (her reconnect delay would be at most 1 s).
    await server.publish('news:x', 'for bob');
    await until(() => bobSub.pubs.length >= 1, 'a publication for bob');
    await sleep(1500);
    assert.equal(alice.state, 'disconnected');
    assert.equal(alice.events.filter((e) => e.name === 'connecting').length, 1, JSON.stringify(alice.events.map((e) => e.name)));
    const channels = await server.call('channels', {});
    assert.equal(channels.channels['news:x']?.num_clients, 1, JSON.stringify(channels));
    assert.equal(bob.state, 'connected');
  });
});
