'use strict';
// A client-protocol connection without the SDK, for what the SDK never sends or hides: raw
// JSON commands, each reply matched by id, the pushes kept in arrival order.

const { WebSocket } = require('ws');
const { until } = require('./harness');

/** A raw JSON-protocol connection: `send(command)` resolves with the reply to it. */
async function rawClient(url, token) {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const replies = new Map();
  const pushes = [];
  ws.on('message', (data) => {
    for (const line of String(data).split('\n')) {
      if (!line.trim()) continue;
      const reply = JSON.parse(line);
      if (reply.id) replies.set(reply.id, reply);
      else if (reply.push) pushes.push(reply.push);
    }
  });
  let next = 0;
  const send = async (command) => {
    next += 1;
    const id = next;
    ws.send(JSON.stringify({ id, ...command }));
    await until(() => replies.has(id), `the reply to ${JSON.stringify(command)}`);
    return replies.get(id);
  };
  await send({ connect: { token } });
  return { ws, send, pushes };
}

module.exports = { rawClient };
