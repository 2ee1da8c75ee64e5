'use strict';
// The Pusher door's test clients: the real `pusher` server SDK pointed at a test server, and
// real `pusher-js` clients whose channel authorizations and sign-ins that SDK signs, as an
// app's auth endpoint would; with the waits the Pusher tests share.

const PusherClient = require('pusher-js');
const PusherServer = require('pusher');

const { HOST, until } = require('./harness');

/** The `pusher` server SDK for `app` on `server`, signing with `secret`. */
function pusherServer(server, app, secret = app.secret) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret,
    host: HOST,
    port: String(server.port),
    useTLS: false,
  });
}

/**
 * A pusher-js client of `app` on `server` over WebSocket. Its private and presence
 * authorizations (presence as `user` with `userInfo`) and its sign-in are signed with
 * `authSecret` (the app's own unless a test forges one); `key` overrides the app key.
 * `client.errors` collects its connection errors.
 */
function pusherClient(server, app, { user, userInfo, authSecret, key } = {}) {
  const signer = pusherServer(server, app, authSecret || app.secret);
  const client = new PusherClient(key || app.key, {
    cluster: 'local',
    wsHost: HOST,
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const presence = channelName.startsWith('presence-')
          ? { user_id: user, user_info: userInfo || { name: `name of ${user}` } }
          : undefined;
        callback(null, signer.authorizeChannel(socketId, channelName, presence));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        callback(null, signer.authenticateUser(socketId, { id: user }));
      },
    },
  });
  client.errors = [];
  client.connection.bind('error', (error) => client.errors.push(error));
  return client;
}

const connected = (client) => until(() => client.connection.state === 'connected', 'pusher-js connected');

/** Subscribes and resolves once `pusher:subscription_succeeded` (or rejects on an error). */
function subscribed(client, name) {
  const channel = client.subscribe(name);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no subscription to ${name} in 10 s`)), 10000);
    channel.bind('pusher:subscription_succeeded', () => {
      clearTimeout(timer);
      resolve(channel);
    });
    channel.bind('pusher:subscription_error', (error) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`subscription to ${name} refused`), { error }));
    });
  });
}

/** Every event of `channel` named in `names`, in order of arrival. */
function record(channel, names) {
  const seen = [];
  for (const name of names) channel.bind(name, (data, meta) => seen.push({ name, data, meta }));
  return seen;
}

module.exports = { connected, pusherClient, pusherServer, record, subscribed };
