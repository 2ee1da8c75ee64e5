#!/usr/bin/env bash
# Node and browser tests of the client protocol door with the real `centrifuge` SDK, and of the
# Pusher door with the real `pusher-js` client and `pusher` server SDK (test/pusher.test.js,
# test/pusher-webhooks.test.js; in Chromium with Laravel Echo over pusher-js,
# test/pusher-browser.test.js).
# Installs what is missing (Chromium, redis-server and nats-server from Debian's packages, the
# npm packages from the lock file), then runs `npm test` against the release binary
# ($SWITCHBOARD_BIN, default target/release/switchboard). Exits non-zero when a test fails.
# Debian packages go through scripts/apt-install (root or password-less sudo). For another
# user it prints what to install; outside CI it then runs every test but the browser one,
# saying so, and in CI (CI=true) a missing package fails the run.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
export SWITCHBOARD_BIN=${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}
export CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}

install() { "$ROOT/scripts/apt-install" "$@"; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  install "the Node SDK tests" nodejs npm
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "tests/node needs Node.js 20 or later (found $(node --version))" >&2
  exit 1
fi

tests=(test/*.test.js)
if [ ! -x "$CHROMIUM_PATH" ] && ! install "the browser test (headless Chromium)" chromium; then
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  echo "browser tests SKIPPED (outside CI): no Chromium at $CHROMIUM_PATH; every other Node test runs"
  tests=()
  for file in test/*.test.js; do
    case "$file" in test/browser.test.js | test/admin-browser.test.js | test/pusher-browser.test.js) ;; *) tests+=("$file") ;; esac
  done
fi

# test/cluster.test.js starts its own redis-server and nats-server (JetStream) on free ports,
# test/pusher.test.js its own redis-server, test/pusher-webhooks.test.js a redis-server and a
# nats-server.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  install "the Node cluster test" "${missing[@]}" || [ "${CI:-}" != "true" ] || exit 1
fi

# npm ci when node_modules is missing or was installed from another lock file.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f node_modules/.lock-sha256 ] || [ "$(cat node_modules/.lock-sha256)" != "$lock_sum" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sum" > node_modules/.lock-sha256
fi

if [ ! -x "$SWITCHBOARD_BIN" ]; then
  echo "no server binary at $SWITCHBOARD_BIN (cargo build --release -p switchboard-server)" >&2
  exit 1
fi

# What `npm test` runs, on the chosen files.
node --test --test-concurrency=1 --test-timeout=120000 "${tests[@]}"
