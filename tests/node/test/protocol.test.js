'use strict';
// The client protocol door (/connection/websocket) driven by the real `centrifuge` SDK in Node:
// one behaviour per test, each against its own server process.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { connectionToken, firstEvent, nextEvent, rejectionOf, sleep, subscriptionToken, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { WebSocket, errorsOf, subscribed, subscription, withClients } = require('../lib/sdk');

const datas = (sub) => sub.pubs.map((p) => p.data);

test('a client with a token connects, subscribes and receives what the server API publishes', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    assert.equal(alice.state, 'connected');
    assert.equal(typeof alice.connectedCtx.client, 'string');
    assert.ok(alice.connectedCtx.client.length > 0, 'the connect reply names the client');
    assert.equal(alice.connectedCtx.transport, 'websocket');

    const sub = await subscribed(alice, 'news:today');
    assert.equal(sub.subscribedCtx.channel, 'news:today');

    await server.publish('news:today', { n: 1 });
    await server.publish('news:today', { n: 2, text: 'ünïcode ✓' });
    await server.publish('news:today', 'three');
    await until(() => sub.pubs.length >= 3, '3 publications');
    assert.deepEqual(datas(sub), [{ n: 1 }, { n: 2, text: 'ünïcode ✓' }, 'three']);
    assert.ok(sub.pubs.every((p) => p.channel === 'news:today'));

    const channels = await server.call('channels', {});
    assert.equal(channels.channels['news:today']?.num_clients, 1, JSON.stringify(channels));
    assert.deepEqual(errorsOf(alice), []);
    assert.deepEqual(errorsOf(sub), []);
  });
});

test('an unknown namespace is error 102 and the connection keeps working', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    const bad = subscription(alice, 'nowhere:x');
    const refused = nextEvent(bad, 'unsubscribed');
    bad.subscribe();
    assert.equal((await refused).code, 102);

    const sub = await subscribed(alice, 'news:after');
    await server.publish('news:after', 'still here');
    await until(() => sub.pubs.length >= 1, 'a publication after the refusal');
    assert.deepEqual(datas(sub), ['still here']);
    assert.equal(alice.state, 'connected');
  });
});

test('a subscription token grants a channel of a token namespace; a missing or bad one is 103', async () => {
  // The default namespace has subscribe = "token".
  const cfg = config({});
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    const attempts = [
      ['no token', undefined],
      ['signed with another key', subscriptionToken('alice', 'vip', { secret: 'not-the-server-secret-0123456789' })],
      ['for another user', subscriptionToken('bob', 'vip')],
      ['for another channel', subscriptionToken('alice', 'other')],
      ['expired', subscriptionToken('alice', 'vip', { ttl: -60 })],
    ];
    for (const [what, token] of attempts) {
      const sub = subscription(alice, 'vip', token ? { token } : {});
      const refused = nextEvent(sub, 'unsubscribed');
      sub.subscribe();
      const ctx = await refused;
      // An expired subscription token may be reported as 109 (token expired) by the server, and
      // the SDK, having no getToken, then unsubscribes with code 1 (unauthorized).
      const expected = what === 'expired' ? [103, 109, 1] : [103];
      assert.ok(expected.includes(ctx.code), `${what}: unsubscribed ${JSON.stringify(ctx)}, errors ${JSON.stringify(errorsOf(sub))}`);
      alice.removeSubscription(sub);
    }
    assert.equal(alice.state, 'connected');

    const sub = await subscribed(alice, 'vip', { token: subscriptionToken('alice', 'vip') });
    await server.publish('vip', { secret: 42 });
    await until(() => sub.pubs.length >= 1, 'a publication in vip');
    assert.deepEqual(datas(sub), [{ secret: 42 }]);
  });
});

test('user-limited channels (#): only the users named after the # may subscribe, with no token', async () => {
  // The default namespace has subscribe = "token": a user-limited channel needs none.
  const cfg = config({});
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    const carol = await clients.connected(server.wsUrl, connectionToken('carol'));
    const own = await subscribed(alice, '#alice');
    const dialog = await subscribed(alice, 'dialog#alice,bob');
    for (const channel of ['#bob', 'dialog#bob,dave']) {
      const sub = subscription(alice, channel);
      const refused = nextEvent(sub, 'unsubscribed');
      sub.subscribe();
      assert.equal((await refused).code, 103, channel);
    }
    const intruder = subscription(carol, 'dialog#alice,bob');
    const refused = nextEvent(intruder, 'unsubscribed');
    intruder.subscribe();
    assert.equal((await refused).code, 103);

    await server.publish('#alice', 'just for alice');
    await server.publish('dialog#alice,bob', 'for the dialog');
    await until(() => own.pubs.length >= 1 && dialog.pubs.length >= 1, 'the publications');
    assert.deepEqual([datas(own), datas(dialog)], [['just for alice'], ['for the dialog']]);
    assert.equal(carol.state, 'connected');
  });
});

test('server-side subscriptions from the token\'s channels claim deliver publications with no subscription object', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const client = clients.client(server.wsUrl, { token: connectionToken('alice', { channels: ['news:pushed', '#alice'] }) });
    const serverSubs = [];
    client.on('subscribed', (ctx) => serverSubs.push(ctx.channel));
    const connected = nextEvent(client, 'connected');
    client.connect();
    await connected;
    await until(() => serverSubs.length >= 2, "'subscribed' for both server-side channels");
    assert.deepEqual([...serverSubs].sort(), ['#alice', 'news:pushed']);
    assert.equal(client.getSubscription('news:pushed'), null, 'no client-side subscription object');

    await server.publish('news:pushed', { n: 1 });
    await server.publish('#alice', { n: 2 });
    const pubs = () => client.events.filter((e) => e.name === 'publication').map((e) => [e.ctx.channel, e.ctx.data]);
    await until(() => pubs().length >= 2, 'two server-side publications');
    assert.deepEqual(pubs(), [['news:pushed', { n: 1 }], ['#alice', { n: 2 }]]);
  });
});

test('rpc with no rpc hook is error 108 (not available) and the connection keeps working', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    const err = await rejectionOf(alice.rpc('anything', { x: 1 }));
    assert.equal(err.code, 108, JSON.stringify(err));
    assert.equal(err.message, 'not available');
    alice.send({ ignored: true }); // asynchronous message: no reply, no harm
    const sub = await subscribed(alice, 'news:x');
    await server.publish('news:x', 'ok');
    await until(() => sub.pubs.length >= 1, 'a publication');
    assert.equal(alice.state, 'connected');
  });
});

test('a short-lived token is refreshed through getToken and the connection stays up', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    let refreshes = 0;
    const getToken = async () => {
      refreshes += 1;
      return connectionToken('alice');
    };
    // exp two seconds away: the connect reply says expires/ttl, the SDK refreshes before then.
    const alice = await clients.connected(server.wsUrl, connectionToken('alice', { ttl: 2 }), { getToken });
    const sub = await subscribed(alice, 'news:refresh');
    await until(() => refreshes >= 1, 'a token refresh', 15000);
    // Past the first token's exp: still the same connection.
    await sleep(2500);
    await server.publish('news:refresh', 'after the refresh');
    await until(() => sub.pubs.length >= 1, 'a publication after the refresh');
    assert.equal(alice.state, 'connected');
    // One connection throughout: no reconnect (e.g. after a 3005 close) on the way.
    const reconnects = alice.events.filter((e) => e.name === 'connecting').slice(1).map((e) => e.ctx);
    assert.deepEqual(reconnects, [], `the connection was not kept across the refresh (getToken called ${refreshes} times)`);
    assert.equal(alice.events.filter((e) => e.name === 'disconnected').length, 0, JSON.stringify(alice.events));
  });
});

test('a short-lived subscription token is refreshed through the subscription\'s getToken (sub_refresh) and the connection stays up', async () => {
  // The default namespace has subscribe = "token".
  const cfg = config({});
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    let refreshes = 0;
    const getToken = async (ctx) => {
      refreshes += 1;
      return subscriptionToken('alice', ctx.channel);
    };
    // exp two seconds away: the subscribe reply says expires/ttl, the SDK sends sub_refresh.
    const sub = await subscribed(alice, 'vip', { token: subscriptionToken('alice', 'vip', { ttl: 2 }), getToken });
    await until(() => refreshes >= 1, 'a subscription token refresh', 15000);
    await sleep(2500); // past the first token's exp
    await server.publish('vip', 'after the refresh');
    await until(() => sub.pubs.length >= 1, 'a publication after the refresh');
    assert.equal(alice.state, 'connected');
    const reconnects = alice.events.filter((e) => e.name === 'connecting').slice(1).map((e) => e.ctx);
    assert.deepEqual(reconnects, [], `the connection was not kept across the refresh (getToken called ${refreshes} times)`);
    const resubscribes = sub.events.filter((e) => e.name === 'subscribing').slice(1).map((e) => e.ctx);
    assert.deepEqual(resubscribes, [], 'the subscription was not kept across the refresh');
  });
});

test('heartbeats: an idle SDK client answers the server pings and stays connected over several intervals', async () => {
  // heartbeat_interval 500ms: a client silent for two intervals would be closed with 3012.
  const cfg = config({ news: { subscribe: 'authenticated' } }, { server: { heartbeat_interval: '500ms' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    const sub = await subscribed(alice, 'news:idle');
    await sleep(4000); // eight intervals with nothing but pings and pongs
    assert.equal(alice.state, 'connected');
    const names = alice.events.map((e) => e.name);
    assert.deepEqual(names.filter((n) => n === 'connecting' || n === 'disconnected'), ['connecting'], JSON.stringify(alice.events));
    await server.publish('news:idle', 'still connected');
    await until(() => sub.pubs.length >= 1, 'a publication');

    // The control: a raw client that never answers the pings is closed with 3012, and the SDK
    // client is not affected.
    const raw = new WebSocket(server.wsUrl);
    const frames = [];
    raw.on('message', (data) => frames.push(data.toString()));
    const closed = new Promise((resolve) => raw.on('close', (code) => resolve(code)));
    await new Promise((resolve, reject) => {
      raw.once('open', resolve);
      raw.once('error', reject);
    });
    raw.send(JSON.stringify({ id: 1, connect: { token: connectionToken('silent') } }));
    let timer;
    const code = await Promise.race([closed, new Promise((resolve) => (timer = setTimeout(resolve, 15000, 'no close in 15 s')))]);
    clearTimeout(timer);
    assert.equal(code, 3012, `frames: ${JSON.stringify(frames)}`);
    assert.ok(frames.includes('{}'), `the server pinged: ${JSON.stringify(frames)}`);
    await server.publish('news:idle', 'after the control');
    await until(() => sub.pubs.length >= 2, 'a publication after the control');
    assert.equal(alice.state, 'connected');
  });
});

test('a client publishes, another client receives it; publish = "none" refuses with 103 and the connection goes on', async () => {
  const cfg = config({
    chat: { subscribe: 'authenticated', publish: 'subscribers' },
    ro: { subscribe: 'authenticated', publish: 'none' },
  });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice', { info: { name: 'Alice' } }));
    const bob = await clients.connected(server.wsUrl, connectionToken('bob'));
    const aliceChat = await subscribed(alice, 'chat:room');
    const bobChat = await subscribed(bob, 'chat:room');

    await aliceChat.publish({ text: 'hi bob' });
    await until(() => bobChat.pubs.length >= 1, "bob receives alice's publication");
    assert.deepEqual(bobChat.pubs[0].data, { text: 'hi bob' });
    assert.equal(bobChat.pubs[0].info?.user, 'alice', JSON.stringify(bobChat.pubs[0]));
    assert.equal(bobChat.pubs[0].info?.client, alice.connectedCtx.client);
    assert.deepEqual(bobChat.pubs[0].info?.connInfo, { name: 'Alice' });

    // Publishing where the namespace says "none": refused, connection and subscriptions intact.
    await subscribed(alice, 'ro:news');
    const err = await rejectionOf(alice.publish('ro:news', { text: 'not allowed' }));
    assert.equal(err.code, 103, JSON.stringify(err));
    assert.equal(alice.state, 'connected');

    // Publishing to a channel of a "subscribers" namespace without being subscribed: refused.
    const notSub = await rejectionOf(bob.publish('chat:elsewhere', 'x'));
    assert.equal(notSub.code, 103, JSON.stringify(notSub));

    await aliceChat.publish({ text: 'after the refusal' });
    await until(() => bobChat.pubs.length >= 2, 'a publication after the refusal');
    assert.deepEqual(bobChat.pubs[1].data, { text: 'after the refusal' });
    await bobChat.publish('and back');
    await until(() => aliceChat.pubs.some((p) => p.data === 'and back'), "alice receives bob's reply");
    assert.equal(alice.state, 'connected');
    assert.equal(bob.state, 'connected');
  });
});

test('presence, presence_stats and history (with limit, reverse and since); 108 where they are off', async () => {
  const cfg = config({
    room: { subscribe: 'authenticated', presence: true, history_size: 5, history_ttl: '5m' },
    bare: { subscribe: 'authenticated' },
  });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice', { info: { name: 'Alice' } }));
    const bob = await clients.connected(server.wsUrl, connectionToken('bob', { info: { name: 'Bob' } }));
    const bob2 = await clients.connected(server.wsUrl, connectionToken('bob'));
    const subs = [await subscribed(alice, 'room:1'), await subscribed(bob, 'room:1'), await subscribed(bob2, 'room:1')];

    const presence = await subs[0].presence();
    const infos = Object.entries(presence.clients);
    assert.equal(infos.length, 3, JSON.stringify(presence));
    const byClient = Object.fromEntries(infos);
    assert.equal(byClient[alice.connectedCtx.client]?.user, 'alice');
    assert.deepEqual(byClient[alice.connectedCtx.client]?.connInfo, { name: 'Alice' });
    assert.equal(byClient[bob.connectedCtx.client]?.user, 'bob');
    assert.deepEqual(byClient[bob.connectedCtx.client]?.connInfo, { name: 'Bob' });
    assert.equal(byClient[bob2.connectedCtx.client]?.user, 'bob');
    for (const [id, info] of infos) assert.equal(info.client, id);

    assert.deepEqual(await subs[1].presenceStats(), { numClients: 3, numUsers: 2 });

    for (let n = 1; n <= 7; n++) await server.publish('room:1', { n });
    await until(() => subs[0].pubs.length >= 7, '7 publications');
    assert.deepEqual(subs[0].pubs.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7]);

    // Only the last history_size (5) are kept.
    const all = await subs[0].history({ limit: 100 });
    assert.equal(all.offset, 7);
    assert.equal(typeof all.epoch, 'string');
    assert.ok(all.epoch.length > 0);
    assert.equal(all.epoch, subs[0].subscribedCtx.streamPosition?.epoch ?? all.epoch);
    assert.deepEqual(all.publications.map((p) => [p.offset, p.data.n]), [[3, 3], [4, 4], [5, 5], [6, 6], [7, 7]]);

    // limit counts from the oldest kept publication, or from the newest with reverse (the
    // Centrifugo semantics the SDKs are written for).
    const first3 = await subs[0].history({ limit: 3 });
    assert.deepEqual(first3.publications.map((p) => p.offset), [3, 4, 5]);
    const last2 = await subs[0].history({ limit: 2, reverse: true });
    assert.deepEqual(last2.publications.map((p) => p.offset), [7, 6]);
    const since = await subs[0].history({ limit: 100, since: { offset: 5, epoch: all.epoch } });
    assert.deepEqual(since.publications.map((p) => p.offset), [6, 7]);
    // limit 0: the stream position only.
    const position = await subs[0].history({ limit: 0 });
    assert.deepEqual([position.publications.length, position.offset, position.epoch], [0, 7, all.epoch]);

    // A namespace without presence and history: 108, and the connection keeps working.
    await subscribed(alice, 'bare:x');
    for (const call of [() => alice.presence('bare:x'), () => alice.presenceStats('bare:x'), () => alice.history('bare:x', { limit: 10 })]) {
      const err = await rejectionOf(call());
      assert.equal(err.code, 108, JSON.stringify(err));
    }
    assert.equal(alice.state, 'connected');
    assert.equal(Object.keys((await alice.presence('room:1')).clients).length, 3);
  });
});

test('join and leave events reach the other subscribers, with the client info', async () => {
  const cfg = config({ lobby: { subscribe: 'authenticated', presence: true, join_leave: true } });
  await withClients({ config: cfg }, async (server, clients) => {
    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    // No joinLeave option: docs/protocol.md has the namespace's join_leave decide.
    const watcher = await subscribed(alice, 'lobby:main');

    const bob = await clients.connected(server.wsUrl, connectionToken('bob', { info: { name: 'Bob' } }));
    const isBob = (ctx) => ctx.info?.user === 'bob';
    const joined = nextEvent(watcher, 'join', isBob);
    const bobSub = await subscribed(bob, 'lobby:main');
    const join = await joined;
    assert.equal(join.channel, 'lobby:main');
    assert.equal(join.info.client, bob.connectedCtx.client);
    assert.deepEqual(join.info.connInfo, { name: 'Bob' });

    const left = nextEvent(watcher, 'leave', isBob);
    bobSub.unsubscribe();
    const leave = await left;
    assert.equal(leave.info.client, bob.connectedCtx.client);

    // A disconnect is a leave too.
    const joinedAgain = nextEvent(watcher, 'join', isBob);
    bobSub.subscribe();
    await joinedAgain;
    const leftOnDisconnect = nextEvent(watcher, 'leave', isBob);
    bob.disconnect();
    await leftOnDisconnect;

    // Alice got no join/leave of her own subscription and is still subscribed and served.
    assert.ok(watcher.events.filter((e) => e.name === 'join' || e.name === 'leave').every((e) => isBob(e.ctx)));
    await server.publish('lobby:main', 'still here');
    await until(() => watcher.pubs.length >= 1, 'a publication');
    assert.equal(watcher.pubs[0].data, 'still here');
  });
});

test('an anonymous connect is refused with 101 (disconnected, no retry) while a client with a token works', async () => {
  const cfg = config({ news: { subscribe: 'authenticated' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const anon = clients.client(server.wsUrl);
    const outcome = firstEvent(anon, ['connected', 'disconnected']);
    anon.connect();
    const { name, ctx } = await outcome;
    assert.equal(name, 'disconnected', JSON.stringify(ctx));
    assert.equal(ctx.code, 101, JSON.stringify(ctx));
    assert.equal(anon.state, 'disconnected');

    const alice = await clients.connected(server.wsUrl, connectionToken('alice'));
    const sub = await subscribed(alice, 'news:x');
    await server.publish('news:x', 'for alice');
    await until(() => sub.pubs.length >= 1, 'a publication');
    assert.deepEqual(datas(sub), ['for alice']);
    // The refused client did not try again meanwhile.
    assert.equal(anon.state, 'disconnected');
    assert.equal(anon.events.filter((e) => e.name === 'connecting').length, 1, JSON.stringify(anon.events.map((e) => e.name)));

    // A token with a bad signature is refused for good too (3500 or 101, never "connected").
    const forged = clients.client(server.wsUrl, { token: connectionToken('mallory', { secret: 'some-other-secret-0123456789abcd' }) });
    const forgedOutcome = firstEvent(forged, ['connected', 'disconnected']);
    forged.connect();
    const f = await forgedOutcome;
    assert.equal(f.name, 'disconnected', JSON.stringify(f.ctx));
    assert.ok([3500, 101].includes(f.ctx.code), JSON.stringify(f.ctx));
    await server.publish('news:x', 'still for alice');
    await until(() => sub.pubs.length >= 2, 'a second publication');
  });
});

test('a plain door member (/ws/chat/lobby) and an SDK subscriber of chat:lobby exchange messages both ways', async () => {
  const cfg = config({ chat: { subscribe: 'authenticated', publish: 'subscribers' } });
  await withClients({ config: cfg }, async (server, clients) => {
    const door = new WebSocket(`ws://${server.base}/ws/chat/lobby?token=${connectionToken('door-user')}`);
    const doorGot = [];
    door.on('message', (data, isBinary) => doorGot.push(isBinary ? data : data.toString('utf8')));
    try {
      await new Promise((resolve, reject) => {
        door.once('open', resolve);
        door.once('error', reject);
        door.once('unexpected-response', (_req, res) => reject(new Error(`door refused: HTTP ${res.statusCode}`)));
      });

      const sdk = await clients.connected(server.wsUrl, connectionToken('sdk-user'));
      const sub = await subscribed(sdk, 'chat:lobby');

      // Door → SDK: JSON text is the data as-is, other text a JSON string, binary its base64.
      door.send('{"text":"from the door"}');
      door.send('plain words');
      door.send(Buffer.from([0, 1, 2, 250]), { binary: true });
      await until(() => sub.pubs.length >= 3, '3 messages from the door');
      assert.deepEqual(datas(sub), [{ text: 'from the door' }, 'plain words', Buffer.from([0, 1, 2, 250]).toString('base64')]);

      // SDK → door: a JSON string arrives as its text, any other JSON serialized.
      await sub.publish({ text: 'from the sdk' });
      await sub.publish('just text');
      const fromSdk = () => doorGot.filter((m) => typeof m === 'string' && m.includes('sdk') || m === 'just text');
      await until(() => fromSdk().length >= 2, 'the door receives 2 SDK publications');
      assert.deepEqual(fromSdk(), ['{"text":"from the sdk"}', 'just text']);
      assert.equal(door.readyState, WebSocket.OPEN);
      assert.equal(sdk.state, 'connected');
    } finally {
      door.terminate();
    }
  });
});
