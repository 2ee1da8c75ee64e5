'use strict';
// A loopback TCP proxy standing for the client's network: tests connect SDK clients through it
// and cut it to simulate the client's own connection dropping (the server sees nothing but
// reset sockets).

const net = require('node:net');
const { HOST } = require('./harness');

/**
 * Starts a proxy on a free loopback port forwarding to `targetPort`. `drop()` resets every
 * proxied connection, both sides; while `blocked` is true, new connections are reset at once
 * (`accepted` counts every attempt). `close()` drops everything and stops listening.
 */
async function startProxy(targetPort, host = HOST) {
  const sockets = new Set();
  const proxy = {
    blocked: false,
    accepted: 0,
    port: 0,
    drop() {
      for (const socket of sockets) socket.resetAndDestroy();
      sockets.clear();
    },
  };
  const server = net.createServer((client) => {
    proxy.accepted += 1;
    if (proxy.blocked) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(targetPort, host);
    for (const [from, to] of [[client, upstream], [upstream, client]]) {
      sockets.add(from);
      from.on('error', () => {});
      from.on('close', () => {
        sockets.delete(from);
        to.destroy();
      });
      from.pipe(to);
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  proxy.port = server.address().port;
  proxy.close = () =>
    new Promise((resolve) => {
      proxy.drop();
      server.close(() => resolve());
    });
  return proxy;
}

module.exports = { startProxy };
