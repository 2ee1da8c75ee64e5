#!/usr/bin/env node
'use strict';
// Serves this page (index.html, app.js) and the centrifuge SDK's browser bundle as
// /centrifuge.js, on loopback. Used by tests/node/test/browser.test.js, and by hand:
//   (cd tests/node && npm ci) && node examples/browser/serve.js 8080
//   open http://127.0.0.1:8080/?url=ws://127.0.0.1:8000/connection/websocket&token=JWT&channel=news
// With `switchboard serve --dev` any http://127.0.0.1:PORT origin is allowed; otherwise add the
// page's origin to `origins.allowed`.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const DEFAULT_BUNDLE = path.resolve(__dirname, '..', '..', 'tests', 'node', 'node_modules', 'centrifuge', 'dist', 'centrifuge.js');

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };

/** Starts the page server; resolves `{port, origin, close()}`. */
function startPageServer({ host = '127.0.0.1', port = 0, bundle = process.env.CENTRIFUGE_BUNDLE || DEFAULT_BUNDLE } = {}) {
  const files = {
    '/': path.join(__dirname, 'index.html'),
    '/index.html': path.join(__dirname, 'index.html'),
    '/app.js': path.join(__dirname, 'app.js'),
    '/centrifuge.js': bundle,
  };
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, 'http://page').pathname;
    if (pathname === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    const file = files[pathname];
    if (req.method !== 'GET' || !file) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
      return;
    }
    fs.readFile(file, (err, body) => {
      if (err) {
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`cannot read ${path.basename(file)}\n`);
        return;
      }
      res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store' });
      res.end(body);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const actual = server.address().port;
      resolve({
        port: actual,
        origin: `http://${host}:${actual}`,
        close: () => new Promise((done) => {
          server.closeAllConnections();
          server.close(() => done());
        }),
      });
    });
  });
}

module.exports = { startPageServer };

if (require.main === module) {
  if (!fs.existsSync(DEFAULT_BUNDLE) && !process.env.CENTRIFUGE_BUNDLE) {
    console.error(`no SDK bundle at ${DEFAULT_BUNDLE}: run npm ci in tests/node (or set CENTRIFUGE_BUNDLE)`);
    process.exit(1);
  }
  startPageServer({ port: Number(process.argv[2] || 8080) }).then(({ origin }) => {
    console.log(`page at ${origin}/?url=ws://127.0.0.1:8000/connection/websocket&token=JWT&channel=news`);
  });
}
