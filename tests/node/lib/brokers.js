'use strict';
// Private broker servers for the cluster tests: redis-server or nats-server (JetStream) on a free
// loopback port (never the default 6379 / 4222), stopped by pid (and killed on exit as a last
// resort). tests/node/run.sh and scripts/test install them when they are missing.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const { HOST, freePort, sleep } = require('./harness');

// Broker servers still running, killed on exit if a test left one behind.
const brokerPids = new Set();
process.on('exit', () => {
  for (const pid of brokerPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** `name` on PATH or in the usual system directories (Debian puts nats-server in /usr/sbin). */
function findBinary(name) {
  const dirs = [...(process.env.PATH || '').split(path.delimiter), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** A free loopback port that is none of the brokers' default ports (those are never touched). */
async function privatePort() {
  for (;;) {
    const port = await freePort();
    if (port !== 6379 && port !== 4222 && port !== 8222) return port;
  }
}

/** Does a TCP exchange on `port` answer with something matching `expected`? */
function probe(port, send, expected) {
  return new Promise((resolve) => {
    const socket = net.connect(port, HOST);
    let got = '';
    const done = (ok) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 500);
    socket.on('error', () => done(false));
    socket.on('connect', () => send && socket.write(send));
    socket.on('data', (chunk) => {
      got += chunk;
      if (expected.test(got)) done(true);
    });
  });
}

const BROKERS = {
  redis: {
    binary: 'redis-server',
    async args(port) {
      return { args: ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no'] };
    },
    ready: (port) => probe(port, 'PING\r\n', /\+PONG/),
    env: (port) => ({ SWITCHBOARD_BROKER: 'redis', SWITCHBOARD_REDIS_URL: `redis://${HOST}:${port}` }),
  },
  nats: {
    binary: 'nats-server',
    async args(port, dir) {
      const monitor = await privatePort();
      return { args: ['-js', '-a', HOST, '-p', String(port), '-m', String(monitor), '-sd', path.join(dir, 'jetstream')], monitor };
    },
    // /healthz answers 200 once JetStream is up.
    async ready(port, { monitor }) {
      if (!(await probe(port, null, /^INFO /))) return false;
      try {
        const res = await fetch(`http://${HOST}:${monitor}/healthz`, { signal: AbortSignal.timeout(500) });
        return res.status === 200;
      } catch {
        return false;
      }
    },
    env: (port) => ({ SWITCHBOARD_BROKER: 'nats', SWITCHBOARD_NATS_URL: `nats://${HOST}:${port}` }),
  },
};

/** Starts a private broker server of `kind` and waits until it serves. */
async function startBroker(kind) {
  const spec = BROKERS[kind];
  const binary = findBinary(spec.binary);
  if (!binary) throw new Error(`${spec.binary} not found (tests/node/run.sh and scripts/test install it)`);
  const port = await privatePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `switchboard-${kind}-`));
  const logPath = path.join(dir, `${kind}.log`);
  const extra = await spec.args(port, dir);
  const log = fs.openSync(logPath, 'a');
  const proc = spawn(binary, extra.args, { cwd: dir, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  brokerPids.add(proc.pid);
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      brokerPids.delete(proc.pid);
      proc.exitStatus = { code, signal };
      resolve(proc.exitStatus);
    });
  });
  const broker = {
    kind,
    port,
    env: spec.env(port),
    readLog: () => {
      try {
        return fs.readFileSync(logPath, 'utf8');
      } catch {
        return '';
      }
    },
    async stop() {
      if (!proc.exitStatus) {
        try {
          process.kill(proc.pid, 'SIGTERM');
        } catch {
          // exited meanwhile
        }
        let timer;
        const status = await Promise.race([exited, new Promise((resolve) => (timer = setTimeout(resolve, 5000, null)))]);
        clearTimeout(timer);
        if (!status) {
          process.kill(proc.pid, 'SIGKILL');
          await exited;
        }
      }
      if (!process.env.SWITCHBOARD_TEST_KEEP) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + 10000;
  for (;;) {
    if (proc.exitStatus) throw new Error(`${spec.binary} exited early (${JSON.stringify(proc.exitStatus)}):\n${broker.readLog()}`);
    if (await spec.ready(port, extra)) return broker;
    if (Date.now() > deadline) {
      await broker.stop();
      throw new Error(`${spec.binary} did not serve on ${port} within 10 s:\n${broker.readLog()}`);
    }
    await sleep(50);
  }
}

module.exports = { BROKERS, findBinary, privatePort, startBroker };
