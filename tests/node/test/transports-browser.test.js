'use strict';
// Headless Chromium (playwright-core, the system's /usr/bin/chromium) with the SDK's browser
// bundle, on a network that blocks WebSocket: a small HTTP proxy in the test refuses every
// upgrade and passes plain HTTP through (streaming responses as they come). The page lists
// WebSocket then HTTP streaming; the SDK falls back to HTTP streaming (cross-origin, so CORS
// too), receives publications made through the server API, and after the proxy cuts its stream
// reconnects and recovers what was published meanwhile.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const { test } = require('node:test');

const { HOST, connectionToken, until, withServer } = require('../lib/harness');
const { CENTRIFUGE_BUNDLE: BUNDLE, launchChromium } = require('../lib/chromium');
const { config } = require('../lib/config');

const PAGE = `<!doctype html><meta charset="utf-8"><title>fallback</title>
<script src="/centrifuge.js"></script>
<script>
  const params = new URLSearchParams(location.search);
  const proxy = params.get('proxy');
  window.pubs = [];
  window.log = [];
  const client = new Centrifuge([
    { transport: 'websocket', endpoint: 'ws://' + proxy + '/connection/websocket' },
    { transport: 'http_stream', endpoint: 'http://' + proxy + '/connection/http_stream' },
  ], {
    token: params.get('token'),
    emulationEndpoint: 'http://' + proxy + '/emulation',
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
  });
  client.on('connected', (ctx) => window.log.push('connected:' + ctx.transport));
  client.on('connecting', (ctx) => window.log.push('connecting:' + ctx.code));
  const sub = client.newSubscription(params.get('channel'), { recoverable: true });
  sub.on('subscribed', (ctx) => window.log.push('subscribed:' + ctx.wasRecovering + ':' + ctx.recovered));
  sub.on('publication', (ctx) => window.pubs.push(ctx.data.n));
  sub.subscribe();
  client.connect();
</script>`;

/** Serves the page and the SDK bundle. */
function startPage() {
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, 'http://page').pathname;
    if (pathname === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html', 'Cache-Control': 'no-store' }).end(PAGE);
    } else if (pathname === '/centrifuge.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(fs.readFileSync(BUNDLE));
    } else {
      res.writeHead(404).end();
    }
  });
  return listen(server);
}

/**
 * The network in between: refuses WebSocket upgrades (`refusedUpgrades` counts them), forwards
 * every other request to the server, streaming the response. `cut()` ends every request under
 * way; while `blocked`, requests are answered 503.
 */
async function startHttpOnlyProxy(targetPort) {
  const open = new Set();
  const proxy = http.createServer((req, res) => {
    if (state.blocked) {
      res.writeHead(503).end();
      return;
    }
    const upstream = http.request({ host: HOST, port: targetPort, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      res.flushHeaders();
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    const pair = { req, res, upstream };
    open.add(pair);
    res.on('close', () => {
      open.delete(pair);
      upstream.destroy();
    });
    req.pipe(upstream);
  });
  proxy.on('upgrade', (req, socket) => {
    state.refusedUpgrades += 1;
    socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
  });
  const state = {
    blocked: false,
    refusedUpgrades: 0,
    cut() {
      for (const { res, upstream } of open) {
        upstream.destroy();
        res.destroy();
      }
      open.clear();
    },
  };
  const listening = await listen(proxy);
  return Object.assign(state, listening);
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address();
      resolve({
        port,
        origin: `http://${HOST}:${port}`,
        close: () =>
          new Promise((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}

test('in Chromium, with WebSocket refused by the network, the SDK falls back to HTTP streaming, receives publications and recovers after its stream is cut', { timeout: 90000 }, async () => {
  const page = await startPage();
  const feed = { subscribe: 'authenticated', history_size: 100, history_ttl: '5m', recover: true };
  const cfg = config({ feed }, { origins: { allowed: [page.origin] } });
  try {
    await withServer({ config: cfg }, async (server) => {
      const proxy = await startHttpOnlyProxy(server.port);
      const browser = await launchChromium();
      const logs = [];
      try {
        const tab = await browser.newPage();
        tab.on('console', (msg) => logs.push(`console.${msg.type()}: ${msg.text()}`));
        tab.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
        const channel = 'feed:browser-fallback';
        const query = new URLSearchParams({ proxy: `${HOST}:${proxy.port}`, token: connectionToken('dora'), channel });
        await tab.goto(`${page.origin}/?${query}`, { timeout: 15000 });
        await tab.waitForFunction(() => window.log.includes('connected:http_stream'), null, { timeout: 30000 });
        assert.ok(proxy.refusedUpgrades >= 1, 'the SDK tried WebSocket first');
        await until(async () => (await server.call('channels', {})).channels[channel]?.num_clients === 1, 'the page subscribed');

        await server.publish(channel, { n: 1 });
        await server.publish(channel, { n: 2 });
        await tab.waitForFunction(() => window.pubs.length >= 2, null, { timeout: 15000 });

        // The stream is cut and the network refuses everything for a while: the page misses
        // publications, then reconnects over HTTP streaming and recovers them.
        proxy.blocked = true;
        proxy.cut();
        await tab.waitForFunction(() => window.log.some((l) => l.startsWith('connecting:')), null, { timeout: 15000 });
        await until(async () => !(await server.call('channels', {})).channels[channel], 'the server saw the stream end');
        await server.publish(channel, { n: 3 });
        await server.publish(channel, { n: 4 });
        proxy.blocked = false;
        await tab.waitForFunction(() => window.pubs.length >= 4, null, { timeout: 30000 });
        assert.deepEqual(await tab.evaluate(() => window.pubs), [1, 2, 3, 4]);
        const log = await tab.evaluate(() => window.log);
        assert.ok(log.includes('subscribed:true:true'), `recovered after the cut: ${JSON.stringify(log)}`);
        assert.equal(log.filter((l) => l.startsWith('connected:')).every((l) => l === 'connected:http_stream'), true, JSON.stringify(log));
        assert.deepEqual(logs.filter((l) => l.startsWith('pageerror')), []);
      } catch (err) {
        err.message += `\n--- page console ---\n${logs.join('\n')}`;
        throw err;
      } finally {
        await browser.close();
        await proxy.close();
      }
    });
  } finally {
    await page.close();
  }
});
