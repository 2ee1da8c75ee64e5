'use strict';
// A loopback TCP proxy standing for the client's network or a load balancer: tests connect SDK
// clients through it and cut it to simulate the client's own connection dropping (the server
// sees nothing but reset sockets), or put it in front of several nodes.

const net = require('node:net');
const { HOST } = require('./harness');

/**
 * Starts a proxy on a free loopback port forwarding to `targets`, one port or several. With
 * several, each new connection goes to the next in turn (`order: 'round-robin'`, the default)
 * or to the first that accepts it (`order: 'first'`: a dead node refuses, so the next one gets
 * it); `routes` lists the index of the target each connection went to. `drop()` resets every
 * proxied connection, both sides; while `blocked` is true, new connections are reset at once
 * (`accepted` counts every attempt). Either side closing closes the other. `close()` drops
 * everything and stops listening.
 */
async function startProxy(targets, { host = HOST, order = 'round-robin' } = {}) {
  const ports = Array.isArray(targets) ? targets : [targets];
  const sockets = new Set();
  const track = (socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  };
  let turn = 0;
  const proxy = {
    blocked: false,
    accepted: 0,
    port: 0,
    routes: [],
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
    track(client);
    const first = order === 'first' ? 0 : turn++ % ports.length;
    // Round robin tries one target; 'first' tries each in order until one accepts.
    const last = order === 'first' ? ports.length - 1 : first;
    const attempt = (i) => {
      if (i > last || client.destroyed) {
        client.resetAndDestroy();
        return;
      }
      const upstream = net.connect(ports[i], host);
      let connected = false;
      upstream.on('error', () => {
        if (connected) return;
        upstream.destroy();
        attempt(i + 1);
      });
      upstream.once('connect', () => {
        connected = true;
        track(upstream);
        proxy.routes.push(i);
        for (const [from, to] of [[client, upstream], [upstream, client]]) {
          from.on('close', () => to.destroy());
          from.pipe(to);
        }
      });
    };
    attempt(first);
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
