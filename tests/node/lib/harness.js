'use strict';
// Test harness: runs the release `switchboard` binary as a process on a free loopback port,
// mints HS256 tokens, calls the server API, and waits on SDK events with bounded timeouts.
// Every process started here is stopped by its pid: at the end of each test (also when it
// fails) and, as a last resort, when the test process exits.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BINARY = process.env.SWITCHBOARD_BIN || path.join(ROOT, 'target', 'release', 'switchboard');
const SECRET = 'node-test-secret-0123456789abcdef0123';
const API_KEY = 'node-test-api-key';
const HOST = '127.0.0.1';

// Pids of servers still running, killed on exit if a test left one behind.
const running = new Set();
function killRunning() {
  for (const pid of running) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', killRunning);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killRunning();
    process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// ---- TOML ------------------------------------------------------------------------------------

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  // An object inside an array: an inline table (`[[pusher.apps]]` written as `apps = [{…}]`).
  if (v !== null && typeof v === 'object') {
    return `{ ${Object.entries(v).map(([k, x]) => `${k} = ${tomlValue(x)}`).join(', ')} }`;
  }
  throw new Error(`no TOML form for ${JSON.stringify(v)}`);
}

/** A nested object as TOML: scalars first, then one [table] per nested object. */
function toToml(obj, prefix = []) {
  const lines = [];
  const tables = [];
  for (const [key, value] of Object.entries(obj)) {
    if (value === undefined) continue;
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) tables.push([key, value]);
    else lines.push(`${key} = ${tomlValue(value)}`);
  }
  let out = '';
  if (prefix.length && (lines.length || !tables.length)) out += `[${prefix.join('.')}]\n`;
  if (lines.length) out += `${lines.join('\n')}\n`;
  for (const [key, value] of tables) out += `\n${toToml(value, [...prefix, key])}`;
  return out;
}

// ---- tokens ----------------------------------------------------------------------------------

const b64url = (buf) => Buffer.from(buf).toString('base64url');

function signJwt(claims, secret = SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const signature = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** A connection token: `sub`, `exp` (default one hour), optional `channels` and `info`. */
function connectionToken(user, { ttl = 3600, channels, info, secret } = {}) {
  const claims = { sub: user, exp: nowSeconds() + ttl };
  if (channels !== undefined) claims.channels = channels;
  if (info !== undefined) claims.info = info;
  return signJwt(claims, secret);
}

/** A subscription token for one channel: `sub`, `channel`, `exp`, optional `info`. */
function subscriptionToken(user, channel, { ttl = 3600, info, secret } = {}) {
  const claims = { sub: user, channel, exp: nowSeconds() + ttl };
  if (info !== undefined) claims.info = info;
  return signJwt(claims, secret);
}

// ---- the server process ----------------------------------------------------------------------

class Server {
  /**
   * @param {object} options
   * @param {object} [options.config] the TOML configuration as a nested object
   * @param {object} [options.env] extra environment variables
   * @param {number} [options.port] port to listen on (default: a free one)
   */
  constructor({ config = {}, env = {}, port } = {}) {
    this.config = config;
    this.extraEnv = env;
    this.port = port;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-node-'));
    this.configPath = path.join(this.dir, 'switchboard.toml');
    this.logPath = path.join(this.dir, 'server.log');
    fs.writeFileSync(this.configPath, toToml(config));
    this.proc = null;
    this.starts = 0;
  }

  get base() {
    return `${HOST}:${this.port}`;
  }

  get wsUrl() {
    return `ws://${this.base}/connection/websocket`;
  }

  /** Starts the process (again, on the same port, after `kill`) and waits for /healthz. */
  async start() {
    if (this.port === undefined) this.port = await freePort();
    if (!fs.existsSync(BINARY)) throw new Error(`no server binary at ${BINARY} (cargo build --release)`);
    const env = {
      PATH: process.env.PATH || '/usr/bin:/bin',
      SWITCHBOARD_LISTEN: this.base,
      SWITCHBOARD_TOKEN_HMAC_SECRET: SECRET,
      SWITCHBOARD_API_KEY: API_KEY,
      SWITCHBOARD_CLIENT_MESSAGE_RATE: '0',
      SWITCHBOARD_LOG_LEVEL: process.env.SWITCHBOARD_TEST_LOG_LEVEL || 'warn',
      ...this.extraEnv,
    };
    this.starts += 1;
    fs.appendFileSync(this.logPath, `--- start #${this.starts}: ${BINARY} serve --config ${this.configPath}\n`);
    const log = fs.openSync(this.logPath, 'a');
    const proc = spawn(BINARY, ['serve', '--config', this.configPath], { env, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    this.proc = proc;
    running.add(proc.pid);
    proc.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        running.delete(proc.pid);
        proc.exitStatus = { code, signal };
        resolve(proc.exitStatus);
      });
    });
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      if (proc.exitStatus) {
        throw new Error(`server exited early (${JSON.stringify(proc.exitStatus)}):\n${this.readLog()}`);
      }
      try {
        const res = await fetch(`http://${this.base}/healthz`, { signal: AbortSignal.timeout(1000) });
        if (res.status === 200) return this;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error(`server did not become healthy in 15 s:\n${this.readLog()}`);
  }

  /** Kills the process by pid with `signal` and waits (bounded) for it to exit. */
  async kill(signal = 'SIGKILL') {
    const proc = this.proc;
    if (!proc || proc.exitStatus) return proc && proc.exitStatus;
    try {
      process.kill(proc.pid, signal);
    } catch {
      // exited meanwhile
    }
    let timer;
    const status = await Promise.race([proc.exited, new Promise((resolve) => (timer = setTimeout(resolve, 15000, null)))]);
    clearTimeout(timer);
    if (status) return status;
    process.kill(proc.pid, 'SIGKILL');
    return proc.exited;
  }

  /** Graceful stop (SIGTERM, then SIGKILL if it hangs); removes the temporary directory. */
  async stop() {
    await this.kill('SIGTERM');
    if (!process.env.SWITCHBOARD_TEST_KEEP) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  readLog() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  /** POST /api/{method}: resolves to `{status, body}`. */
  async api(method, params = {}, { key = API_KEY } = {}) {
    const res = await fetch(`http://${this.base}/api/${method}`, {
      method: 'POST',
      headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
      body: JSON.stringify(params),
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    return { status: res.status, body };
  }

  /** An API call that must succeed: returns its `result`, throws with the reply otherwise. */
  async call(method, params = {}) {
    const { status, body } = await this.api(method, params);
    if (status !== 200 || !body || typeof body !== 'object' || !('result' in body)) {
      throw new Error(`API ${method} ${JSON.stringify(params)} -> ${status} ${JSON.stringify(body)}`);
    }
    return body.result;
  }

  publish(channel, data) {
    return this.call('publish', { channel, data });
  }
}

/**
 * Runs `fn(server)` with a started server and stops it afterwards, pass or fail. A failure's
 * message gets the server's log appended.
 */
async function withServer(options, fn) {
  const server = new Server(options);
  try {
    await server.start();
    return await fn(server);
  } catch (err) {
    const log = server.readLog().trim();
    if (log && err && typeof err === 'object') {
      try {
        err.message += `\n--- server log (${server.logPath}) ---\n${log.split('\n').slice(-60).join('\n')}`;
      } catch {
        // read-only message
      }
    }
    throw err;
  } finally {
    await server.stop();
  }
}

// ---- waiting ---------------------------------------------------------------------------------

/** Resolves when `check()` is truthy (polled), rejects after `timeout` ms naming `what`. */
async function until(check, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * The first of `events` (a name or a list of names) emitted by an EventEmitter-like
 * `emitter` whose context satisfies `predicate(ctx, name)`: resolves `{name, ctx}`, or rejects
 * after `timeout` ms. Its listeners and timer are removed either way.
 */
function firstEvent(emitter, events, predicate = () => true, timeout = 10000) {
  const names = Array.isArray(events) ? events : [events];
  return new Promise((resolve, reject) => {
    const listeners = new Map();
    const done = () => {
      clearTimeout(timer);
      for (const [name, listener] of listeners) emitter.off(name, listener);
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${timeout} ms waiting for ${names.map((n) => `'${n}'`).join(' or ')}`));
    }, timeout);
    for (const name of names) {
      const listener = (ctx) => {
        if (!predicate(ctx, name)) return;
        done();
        resolve({ name, ctx });
      };
      listeners.set(name, listener);
      emitter.on(name, listener);
    }
  });
}

/** The context of the next `event` satisfying `predicate` (see firstEvent). */
async function nextEvent(emitter, event, predicate = () => true, timeout = 10000) {
  return (await firstEvent(emitter, event, predicate, timeout)).ctx;
}

/** Records every event named in `names` emitted by `emitter`, in order. */
function record(emitter, names) {
  const events = [];
  for (const name of names) emitter.on(name, (ctx) => events.push({ name, ctx }));
  return events;
}

/** A promise's rejection value (fails if it resolves or takes longer than `timeout`). */
async function rejectionOf(promise, timeout = 10000) {
  let timer;
  const outcome = await Promise.race([
    promise.then(
      (value) => ({ resolved: value }),
      (error) => ({ rejected: error }),
    ),
    new Promise((resolve) => {
      timer = setTimeout(() => resolve({ timeout: true }), timeout);
    }),
  ]);
  clearTimeout(timer);
  if (outcome.timeout) throw new Error(`no answer within ${timeout} ms`);
  if (!('rejected' in outcome)) throw new Error(`expected a rejection, got ${JSON.stringify(outcome.resolved)}`);
  return outcome.rejected;
}

/**
 * A list to push cleanups to, run when test `t` ends, pass or fail: last pushed first, and one
 * that throws does not stop the rest (a test of several processes stops each by its pid).
 */
function cleanupsFor(t) {
  const cleanups = [];
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch {
        // keep stopping the rest
      }
    }
  });
  return cleanups;
}

module.exports = {
  API_KEY,
  BINARY,
  HOST,
  ROOT,
  SECRET,
  Server,
  cleanupsFor,
  connectionToken,
  firstEvent,
  freePort,
  nextEvent,
  record,
  rejectionOf,
  signJwt,
  sleep,
  subscriptionToken,
  toToml,
  until,
  withServer,
};
