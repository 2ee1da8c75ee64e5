// A minimal Switchboard client page: connects with the centrifuge SDK to the client protocol
// door, subscribes to one channel, lists its publications and tells the user what happened on
// a disconnect. Everything comes from the query string:
//   index.html?url=ws://127.0.0.1:8000/connection/websocket&token=JWT&channel=news:today
(function () {
  'use strict';

  // docs/protocol.md, "Error codes" and "Close codes": the message for a user.
  var USER_MESSAGES = {
    100: 'Something went wrong on the server. Retrying.',
    101: 'Please sign in.',
    102: 'This channel does not exist.',
    103: 'You do not have access to this channel.',
    104: 'This action is not available.',
    106: 'Too many subscriptions.',
    107: 'The app sent a bad request.',
    108: 'Not available for this channel.',
    109: 'Session expired. Renewing.',
    112: 'Reloading missed messages.',
    3001: 'Server restarting. Reconnecting…',
    3004: 'Server error. Reconnecting…',
    3005: 'Session expired. Renewing…',
    3006: 'Access renewed. Reconnecting…',
    3008: 'Connection too slow. Reconnecting…',
    3012: 'Connection lost. Reconnecting…',
    3013: 'Too many messages. Reconnecting…',
    3500: 'Sign-in failed. Please sign in again.',
    3501: 'Protocol error. Please reload.',
    3502: 'Connection timed out. Please reload.',
    3503: 'You were disconnected by the server.',
    1009: 'Message too large.'
  };
  // The SDK reports a 1009 close as its own code 3 ("message size limit exceeded").
  var SDK_CODES = { 3: 1009 };

  function messageFor(code) {
    if (SDK_CODES.hasOwnProperty(code)) code = SDK_CODES[code];
    return USER_MESSAGES.hasOwnProperty(code) ? USER_MESSAGES[code] : '';
  }

  var params = new URLSearchParams(window.location.search);
  var url = params.get('url') ||
    (window.location.protocol === 'https:' ? 'wss://' : 'ws://') + window.location.host + '/connection/websocket';
  var token = params.get('token') || '';
  var channel = params.get('channel') || 'news';

  var stateEl = document.getElementById('state');
  var noticeEl = document.getElementById('notice');
  var messagesEl = document.getElementById('messages');
  document.getElementById('channel').textContent = channel;

  function showState(state) {
    stateEl.textContent = state;
    stateEl.setAttribute('data-state', state);
  }

  function notify(text) {
    noticeEl.textContent = text || '';
  }

  function render(data) {
    var li = document.createElement('li');
    li.textContent = typeof data === 'string' ? data : JSON.stringify(data);
    messagesEl.appendChild(li);
  }

  var client = new Centrifuge(url, token ? { token: token } : {});
  client.on('state', function (ctx) { showState(ctx.newState); });
  client.on('connecting', function (ctx) {
    // Only a server's reason is worth telling (codes from 3000 on), e.g. a restart.
    notify(ctx.code >= 3000 ? messageFor(ctx.code) : '');
  });
  client.on('connected', function () { notify(''); });
  client.on('disconnected', function (ctx) {
    notify(messageFor(ctx.code) || 'Disconnected.');
  });
  client.on('error', function (ctx) {
    if (window.console) console.warn('switchboard client error', ctx);
  });

  var sub = client.newSubscription(channel);
  sub.on('publication', function (ctx) { render(ctx.data); });
  sub.on('unsubscribed', function (ctx) {
    var text = messageFor(ctx.code);
    if (text) notify(text);
  });
  sub.on('error', function (ctx) {
    var text = ctx.error && messageFor(ctx.error.code);
    if (text) notify(text);
  });
  sub.subscribe();
  client.connect();

  // For tests and debugging from the console.
  window.switchboardClient = client;
})();
