'use strict';
// The Pusher door in headless Chromium (playwright-core, the system's /usr/bin/chromium): a page
// served by this test loads pusher-js's browser build and Laravel Echo's (the `laravel-echo`
// package, broadcaster "pusher"), subscribes to a public, a private and a presence channel
// (Echo's channel(), private() and join(); the private and presence authorizations come from an
// auth endpoint this test serves, signed with the app secret by the `pusher` server SDK, as a
// Laravel backend's /broadcasting/auth would), and renders what arrives into the DOM. Events
// are triggered through the `pusher` server SDK; the test reads the DOM.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { test } = require('node:test');
const PusherServer = require('pusher');

const { HOST, until, withServer } = require('../lib/harness');
const { launchChromium } = require('../lib/chromium');
const { config } = require('../lib/config');

const PUSHER_JS = path.join(path.dirname(require.resolve('pusher-js')), '..', 'web', 'pusher.js');
const ECHO_JS = path.join(path.dirname(require.resolve('laravel-echo')), 'echo.iife.js');
const APP = { id: 'browser-app', key: 'browser-key', secret: 'browser-secret-0123456789' };

// The page: Echo over pusher-js; every event and presence change becomes a list item. Its
// parameters come from the query string: the server's port and the user it speaks for.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Echo over pusher-js</title>
<script src="/pusher.js"></script><script src="/echo.js"></script></head>
<body>
<p id="state">loading</p>
<ul id="subscribed"></ul>
<ul id="events"></ul>
<ul id="presence"></ul>
<p id="members"></p>
<ul id="errors"></ul>
<script>
  const q = new URLSearchParams(location.search);
  const user = q.get('user');
  const add = (list, text) => {
    const li = document.createElement('li');
    li.textContent = text;
    document.getElementById(list).appendChild(li);
  };
  const members = new Map();
  const showMembers = () => {
    document.getElementById('members').textContent = [...members.keys()].sort().join(',');
  };
  const echo = new Echo.default({
    broadcaster: 'pusher',
    Pusher: window.Pusher,
    key: q.get('key'),
    cluster: 'local',
    wsHost: q.get('host'),
    wsPort: Number(q.get('port')),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    authEndpoint: '/broadcasting/auth',
    auth: { headers: { 'X-User': user } },
  });
  echo.connector.pusher.connection.bind('state_change', (s) => {
    document.getElementById('state').textContent = s.current;
  });
  echo.channel('news')
    .subscribed(() => add('subscribed', 'news'))
    .listen('.headline', (e) => add('events', 'news: ' + e.text));
  echo.private('orders')
    .subscribed(() => add('subscribed', 'private-orders'))
    .error((e) => add('errors', 'private-orders: ' + (e && e.status)))
    .listen('.order-placed', (e) => add('events', 'orders: #' + e.id + ' ' + e.item));
  if (q.get('forbidden')) {
    echo.private('vault')
      .subscribed(() => add('subscribed', 'private-vault'))
      .error((e) => add('errors', 'private-vault: ' + (e && e.status)));
  }
  echo.join('lobby')
    .here((list) => {
      list.forEach((m) => members.set(m.name, m));
      showMembers();
      add('subscribed', 'presence-lobby');
    })
    .joining((m) => { members.set(m.name, m); showMembers(); add('presence', 'joining: ' + m.name); })
    .leaving((m) => { members.delete(m.name); showMembers(); add('presence', 'leaving: ' + m.name); })
    .listen('.announcement', (e) => add('events', 'lobby: ' + e.text));
</script>
</body></html>`;

/**
 * Serves the page, the two browser builds and the auth endpoint: POST /broadcasting/auth with
 * socket_id and channel_name (form-encoded, as pusher-js sends them) and the user in X-User;
 * `private-vault` is refused with 403, as a backend refuses a channel the user may not have.
 */
function startPages(signer) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://page');
    if (req.method === 'GET' && url.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(PAGE);
    } else if (req.method === 'GET' && (url.pathname === '/pusher.js' || url.pathname === '/echo.js')) {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(fs.readFileSync(url.pathname === '/pusher.js' ? PUSHER_JS : ECHO_JS));
    } else if (req.method === 'POST' && url.pathname === '/broadcasting/auth') {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        const form = new URLSearchParams(body);
        const socketId = form.get('socket_id');
        const channel = form.get('channel_name');
        const user = req.headers['x-user'];
        if (!user || channel === 'private-vault') {
          res.writeHead(403, { 'content-type': 'application/json' });
          res.end('{"message":"forbidden"}');
          return;
        }
        const presence = channel.startsWith('presence-')
          ? { user_id: `id-${user}`, user_info: { name: user } }
          : undefined;
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(signer.authorizeChannel(socketId, channel, presence)));
      });
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve) => {
    server.listen(0, HOST, () => {
      resolve({
        origin: `http://${HOST}:${server.address().port}`,
        close: () => new Promise((done) => { server.closeAllConnections(); server.close(done); }),
      });
    });
  });
}

const items = (page, list) => page.locator(`#${list} li`).allTextContents();

/** Waits until `#list` has at least `n` items; says what it has on timeout. */
async function waitForItems(page, list, n, what) {
  try {
    await page.waitForFunction(
      ([l, want]) => document.querySelectorAll(`#${l} li`).length >= want,
      [list, n],
      { timeout: 15000 },
    );
  } catch (err) {
    throw new Error(`${what}: #${list} has ${JSON.stringify(await items(page, list))}: ${err.message}`);
  }
}

async function waitForMembers(page, expected) {
  try {
    await page.waitForFunction((want) => document.getElementById('members').textContent === want, expected, { timeout: 15000 });
  } catch (err) {
    const shown = await page.locator('#members').textContent();
    throw new Error(`members never showed ${expected} (they show ${JSON.stringify(shown)}): ${err.message}`);
  }
}

test('Laravel Echo over pusher-js in Chromium: public, private and presence channels render SDK-triggered events; a refused authorization is reported', async () => {
  // The signer only signs authorizations (it needs no server address).
  const signer = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: HOST, port: '1', useTLS: false });
  const pages = await startPages(signer);
  const cfg = config({}, { pusher: { apps: [APP] }, origins: { allowed: [pages.origin] } });
  try {
    await withServer({ config: cfg }, async (server) => {
      const sdk = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: HOST, port: String(server.port), useTLS: false });
      const browser = await launchChromium();
      const logs = [];
      const open = async (user, extra = {}) => {
        const page = await browser.newPage();
        page.on('console', (msg) => logs.push(`${user} console.${msg.type()}: ${msg.text()}`));
        page.on('pageerror', (err) => logs.push(`${user} pageerror: ${err.message}`));
        const query = new URLSearchParams({ key: APP.key, host: HOST, port: String(server.port), user, ...extra });
        await page.goto(`${pages.origin}/?${query}`, { timeout: 15000 });
        return page;
      };
      try {
        const alice = await open('alice', { forbidden: '1' });
        await waitForItems(alice, 'subscribed', 3, 'alice subscribed to news, private-orders, presence-lobby');
        assert.deepEqual((await items(alice, 'subscribed')).sort(), ['news', 'presence-lobby', 'private-orders']);
        assert.equal(await alice.locator('#state').textContent(), 'connected');
        // The refused authorization reaches the page's error handler; nothing else broke.
        await waitForItems(alice, 'errors', 1, 'the refused private-vault');
        assert.deepEqual(await items(alice, 'errors'), ['private-vault: 403']);
        await waitForMembers(alice, 'alice');

        // Events triggered through the server SDK, one per channel, rendered in order.
        await sdk.trigger('news', 'headline', { text: 'first <b>not bold</b>' });
        await sdk.trigger('private-orders', 'order-placed', { id: 7, item: 'tea' });
        await sdk.trigger('presence-lobby', 'announcement', { text: 'welcome' });
        await waitForItems(alice, 'events', 3, 'the three triggered events');
        assert.deepEqual(await items(alice, 'events'), ['news: first <b>not bold</b>', 'orders: #7 tea', 'lobby: welcome']);
        assert.equal(await alice.locator('#events b').count(), 0, 'events are rendered as text');

        // Presence: bob joins (alice sees joining, bob's here lists both), then leaves.
        const bob = await open('bob');
        await waitForItems(bob, 'subscribed', 3, 'bob subscribed');
        await waitForMembers(bob, 'alice,bob');
        await waitForMembers(alice, 'alice,bob');
        assert.deepEqual(await items(alice, 'presence'), ['joining: bob']);
        const users = await sdk.get({ path: '/channels/presence-lobby/users' });
        assert.equal(users.status, 200);
        assert.deepEqual((await users.json()).users.map((u) => u.id).sort(), ['id-alice', 'id-bob']);
        // An event after the join reaches both pages.
        await sdk.trigger('news', 'headline', { text: 'second' });
        await waitForItems(bob, 'events', 1, 'bob got the second headline');
        assert.deepEqual(await items(bob, 'events'), ['news: second']);
        await waitForItems(alice, 'events', 4, 'alice got the second headline');

        await bob.close();
        await waitForMembers(alice, 'alice');
        assert.deepEqual(await items(alice, 'presence'), ['joining: bob', 'leaving: bob']);
        await until(async () => {
          const res = await sdk.get({ path: '/channels/presence-lobby/users' });
          return (await res.json()).users.length === 1;
        }, 'the server dropped bob from the presence channel');
        assert.deepEqual(logs.filter((l) => l.includes('pageerror')), []);
      } catch (err) {
        err.message += `\n--- page console ---\n${logs.join('\n')}`;
        throw err;
      } finally {
        await browser.close();
      }
    });
  } finally {
    await pages.close();
  }
});
