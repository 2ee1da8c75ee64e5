'use strict';
// The real `centrifuge` SDK in Node over the `ws` package, with every client and subscription
// recording its events (an 'error' event with no listener would throw inside the SDK). A client
// made with `{ protobuf: true }` is the SDK's protobuf build (`centrifuge/build/protobuf`): it
// adds `?cf_protocol=protobuf` to the URL and speaks binary frames.

const { Centrifuge } = require('centrifuge');
const { Centrifuge: CentrifugeProtobuf } = require('centrifuge/build/protobuf');
const WebSocket = require('ws');
const { firstEvent, record, withServer } = require('./harness');

const CLIENT_EVENTS = ['state', 'connecting', 'connected', 'disconnected', 'error', 'publication', 'subscribed', 'join', 'leave'];
const SUB_EVENTS = ['state', 'subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'error'];

/** Creates SDK clients and subscriptions; `closeAll()` disconnects every one. */
class Clients {
  constructor() {
    this.list = [];
  }

  /**
   * A new (not yet connected) client; `client.events` lists what it emitted. With
   * `protobuf: true` it is the SDK's protobuf build.
   */
  client(url, { protobuf = false, ...options } = {}) {
    const Sdk = protobuf ? CentrifugeProtobuf : Centrifuge;
    const client = new Sdk(url, {
      websocket: WebSocket,
      // Short backoff so reconnects happen promptly; no assertion depends on it.
      minReconnectDelay: 50,
      maxReconnectDelay: 1000,
      timeout: 5000,
      ...options,
    });
    client.events = record(client, CLIENT_EVENTS);
    this.list.push(client);
    return client;
  }

  /** A client connected with `token` (resolves after its 'connected' event). */
  async connected(url, token, options = {}) {
    const client = this.client(url, { token, ...options });
    const outcome = firstEvent(client, ['connected', 'disconnected']);
    client.connect();
    const { name, ctx } = await outcome;
    if (name !== 'connected') throw new Error(`connect failed: ${name} ${JSON.stringify(ctx)}`);
    client.connectedCtx = ctx;
    return client;
  }

  closeAll() {
    for (const client of this.list) {
      try {
        client.disconnect();
      } catch {
        // already closed
      }
    }
    this.list = [];
  }
}

/** A new subscription on `client` recording its events (`sub.events`, `sub.pubs`). */
function subscription(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  sub.events = record(sub, SUB_EVENTS);
  sub.pubs = [];
  sub.on('publication', (ctx) => sub.pubs.push(ctx));
  return sub;
}

/** Subscribes and resolves with the subscription once 'subscribed' (`sub.subscribedCtx`). */
async function subscribed(client, channel, options = {}) {
  const sub = subscription(client, channel, options);
  const outcome = firstEvent(sub, ['subscribed', 'unsubscribed', 'error']);
  sub.subscribe();
  const { name, ctx } = await outcome;
  if (name !== 'subscribed') throw new Error(`subscribe to ${channel} failed: ${name} ${JSON.stringify(ctx)}`);
  sub.subscribedCtx = ctx;
  return sub;
}

const errorsOf = (emitter) => emitter.events.filter((e) => e.name === 'error').map((e) => e.ctx);

/**
 * Runs `fn(server, clients)` against a started server (see harness.withServer); every SDK
 * client made through `clients` is disconnected afterwards, pass or fail.
 */
async function withClients(serverOptions, fn) {
  return withServer(serverOptions, async (server) => {
    const clients = new Clients();
    try {
      return await fn(server, clients);
    } finally {
      clients.closeAll();
    }
  });
}

module.exports = { Centrifuge, CentrifugeProtobuf, Clients, WebSocket, errorsOf, subscribed, subscription, withClients };
