'use strict';
// Backend hooks with the real `centrifuge` SDK: the SDK connects with no token through the
// connect hook (its session cookie forwarded) and subscribes through the subscribe hook; a
// backend that fails is a temporary error the SDK retries until the backend recovers. The
// backend is a real HTTP server on its own loopback port, answering in the proxy format.

const assert = require('node:assert/strict');
const http = require('node:http');
const { test } = require('node:test');

const { connectionToken, nextEvent, until } = require('../lib/harness');
const { config } = require('../lib/config');
const { WebSocket, subscribed, subscription, withClients } = require('../lib/sdk');

/** A backend that records each call; `mode` 'fail' answers 500 to everything. */
function startBackend() {
  const calls = [];
  const state = { mode: 'ok' };
  const server = http.createServer((req, res) => {
    let text = '';
    req.on('data', (chunk) => (text += chunk));
    req.on('end', () => {
      let body = {};
      try {
        body = JSON.parse(text || '{}');
      } catch {
        // recorded as empty
      }
      calls.push({ path: req.url, headers: req.headers, body });
      if (state.mode === 'fail') {
        res.writeHead(500);
        res.end('down');
        return;
      }
      const cookie = req.headers.cookie || '';
      let reply;
      if (req.url === '/connect') {
        reply = cookie.split('; ').includes('sid=good')
          ? { result: { user: 'alice', info: { name: 'Alice' } } }
          : { error: { code: 101, message: 'unauthorized' } };
      } else if (req.url === '/subscribe') {
        reply = body.channel === 'room:secret'
          ? { error: { code: 103, message: 'permission denied' } }
          : { result: { info: { role: 'member' } } };
      } else {
        reply = { error: { code: 404, message: 'no such hook' } };
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(reply));
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({
        calls,
        state,
        url: (path) => `http://127.0.0.1:${port}${path}`,
        close: () =>
          new Promise((done) => {
            server.closeAllConnections();
            server.close(done);
          }),
      });
    });
  });
}

/** The SDK's WebSocket with a session cookie on the handshake, as a browser would send it. */
function withCookie(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { Cookie: cookie } });
    }
  };
}

function hookedConfig(backend, hooks = {}) {
  return config(
    { room: { subscribe: 'token' }, news: { subscribe: 'authenticated' } },
    {
      hooks: {
        timeout: '500ms',
        retries: 0,
        forward_cookies: ['sid'],
        connect: { url: backend.url('/connect') },
        subscribe: { url: backend.url('/subscribe'), namespaces: ['room'] },
        ...hooks,
      },
    },
  );
}

test('the SDK connects with no token through the connect hook and subscribes through the subscribe hook', async () => {
  const backend = await startBackend();
  try {
    await withClients({ config: hookedConfig(backend) }, async (server, clients) => {
      const alice = await clients.connected(server.wsUrl, '', { websocket: withCookie('theme=dark; sid=good') });
      assert.equal(alice.state, 'connected');
      const connect = backend.calls.find((c) => c.path === '/connect');
      assert.equal(connect.headers.cookie, 'sid=good', 'only the allowlisted cookie is forwarded');
      assert.ok(connect.headers['x-trace-id'], 'the trace id goes along');
      assert.equal(connect.body.client, alice.connectedCtx.client);

      const sub = await subscribed(alice, 'room:open');
      const subCall = backend.calls.find((c) => c.path === '/subscribe');
      assert.equal(subCall.body.user, 'alice');
      assert.equal(subCall.body.channel, 'room:open');
      await server.publish('room:open', { n: 1 });
      await until(() => sub.pubs.length >= 1, 'a publication through the hooked subscription');
      assert.deepEqual(sub.pubs[0].data, { n: 1 });

      const secret = subscription(alice, 'room:secret');
      const refused = nextEvent(secret, 'unsubscribed');
      secret.subscribe();
      assert.equal((await refused).code, 103);
      assert.equal(alice.state, 'connected');
    });
  } finally {
    await backend.close();
  }
});

test('a session the backend does not know is refused, and a failing backend is retried until it recovers', async () => {
  const backend = await startBackend();
  try {
    await withClients({ config: hookedConfig(backend) }, async (server, clients) => {
      // Unknown session: the hook's error (not temporary) ends the SDK's connecting with it.
      const stranger = clients.client(server.wsUrl, { websocket: withCookie('sid=nobody') });
      const refused = nextEvent(stranger, 'disconnected');
      stranger.connect();
      assert.equal((await refused).code, 101);

      // Backend answering 500: error 100, temporary, so the SDK reports it and reconnects...
      backend.state.mode = 'fail';
      const carol = clients.client(server.wsUrl, { websocket: withCookie('sid=good') });
      const temporary = nextEvent(carol, 'error', (ctx) => ctx.type === 'connect');
      carol.connect();
      const error = await temporary;
      assert.equal(error.error.code, 100, JSON.stringify(error));
      assert.equal(error.error.temporary, true, JSON.stringify(error));
      carol.disconnect();

      // ...with backoff, for as long as the backend fails...
      const bob = clients.client(server.wsUrl, { websocket: withCookie('sid=good') });
      bob.connect();
      await until(() => backend.calls.filter((c) => c.path === '/connect' && c.headers.cookie === 'sid=good').length >= 2, 'the SDK retrying the connect');
      assert.notEqual(bob.state, 'connected');
      // ...while a client with a token is served as usual.
      const dave = await clients.connected(server.wsUrl, connectionToken('dave'));
      await subscribed(dave, 'news:a');

      // The backend recovers: the SDK's next attempt connects.
      backend.state.mode = 'ok';
      await until(() => bob.state === 'connected', 'the SDK connected once the backend recovered', 20000);
    });
  } finally {
    await backend.close();
  }
});
