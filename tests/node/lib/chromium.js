'use strict';
// Headless Chromium for the browser tests: the system's /usr/bin/chromium (CHROMIUM_PATH to
// choose another) driven by playwright-core, with the flags a sandboxed CI machine needs.
// Never downloads a browser; a missing one fails the test with the line that installs it.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const LAUNCH = {
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  timeout: 60000,
};
// The centrifuge SDK's browser bundle, as a page loads it with a <script> tag.
const CENTRIFUGE_BUNDLE = path.join(path.dirname(require.resolve('centrifuge')), '..', 'dist', 'centrifuge.js');

/** A running headless Chromium; the caller closes it. */
async function launchChromium() {
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install -y chromium)`);
  return chromium.launch(LAUNCH);
}

module.exports = { CENTRIFUGE_BUNDLE, launchChromium };
