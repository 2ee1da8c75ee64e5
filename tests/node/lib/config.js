'use strict';
// Server configurations for the tests, as nested objects written out as TOML by the harness.

/** Closed defaults (tokens required, nothing published by clients) plus `namespaces`. */
function config(namespaces = {}, { channels = {}, token = {}, server = {}, client = {}, ...rest } = {}) {
  return {
    server: { heartbeat_interval: '25s', dev: false, ...server },
    token: { allow_anonymous: false, ...token },
    client: { connect_timeout: '10s', max_subscriptions: 128, history_meta_ttl: '24h', ...client },
    channels: {
      subscribe: 'token',
      publish: 'none',
      presence: false,
      join_leave: false,
      history_size: 0,
      history_ttl: '0s',
      recover: false,
      ...channels,
      namespaces,
    },
    ...rest,
  };
}

module.exports = { config };
