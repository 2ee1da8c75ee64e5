'use strict';
// examples/browser in headless Chromium (playwright-core, the system's /usr/bin/chromium): the
// page connects with the SDK's browser bundle, lists publications made through the server API,
// and shows the message for a user when the API disconnects it.

const assert = require('node:assert/strict');
const path = require('node:path');
const { test } = require('node:test');

const { ROOT, connectionToken, until, withServer } = require('../lib/harness');
const { CENTRIFUGE_BUNDLE: BUNDLE, launchChromium } = require('../lib/chromium');
const { config } = require('../lib/config');
const { startPageServer } = require(path.join(ROOT, 'examples', 'browser', 'serve.js'));

const text = (page, selector) => page.locator(selector).textContent({ timeout: 5000 });

async function waitForText(page, selector, expected, timeout = 15000) {
  try {
    await page.waitForFunction(
      ([sel, want]) => document.querySelector(sel)?.textContent === want,
      [selector, expected],
      { timeout },
    );
  } catch (err) {
    throw new Error(`${selector} never showed ${JSON.stringify(expected)} (it shows ${JSON.stringify(await text(page, selector))}): ${err.message}`);
  }
}

test('the browser page connects, lists publications, and shows the user message for a server disconnect (3503)', async () => {
  const pages = await startPageServer({ bundle: BUNDLE });
  const cfg = config({ news: { subscribe: 'authenticated' } }, { origins: { allowed: [pages.origin] } });
  try {
    await withServer({ config: cfg }, async (server) => {
      const browser = await launchChromium();
      const logs = [];
      try {
        const page = await browser.newPage();
        page.on('console', (msg) => logs.push(`console.${msg.type()}: ${msg.text()}`));
        page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
        const query = new URLSearchParams({ url: server.wsUrl, token: connectionToken('browser-user'), channel: 'news:browser' });
        await page.goto(`${pages.origin}/?${query}`, { timeout: 15000 });
        await waitForText(page, '#state', 'connected');

        // The page's subscription is live once the server counts it.
        await until(async () => (await server.call('channels', {})).channels['news:browser']?.num_clients === 1, 'the page subscribed');
        await server.publish('news:browser', { text: 'first <b>not bold</b>' });
        await server.publish('news:browser', 'second');
        await server.publish('news:browser', { n: 3 });
        await page.waitForFunction(() => document.querySelectorAll('#messages li').length >= 3, null, { timeout: 15000 });
        const items = await page.locator('#messages li').allTextContents();
        assert.deepEqual(items, ['{"text":"first <b>not bold</b>"}', 'second', '{"n":3}']);
        assert.equal(await page.locator('#messages b').count(), 0, 'publications are shown as text, not markup');
        assert.equal(await text(page, '#notice'), '');

        assert.deepEqual(await server.call('disconnect', { user: 'browser-user' }), {});
        await waitForText(page, '#state', 'disconnected');
        assert.equal(await text(page, '#notice'), 'You were disconnected by the server.');

        if (process.env.SWITCHBOARD_SCREENSHOT_DIR) {
          await page.screenshot({ path: path.join(process.env.SWITCHBOARD_SCREENSHOT_DIR, 'browser-disconnected.png'), fullPage: true });
        }
        assert.deepEqual(logs.filter((l) => l.startsWith('pageerror')), []);
      } catch (err) {
        err.message += `\n--- page console ---\n${logs.join('\n')}`;
        throw err;
      } finally {
        await browser.close();
      }
    });
  } finally {
    await pages.close();
  }
});

test('a page from an origin not in origins.allowed is refused with 403; an allowed page still connects', async () => {
  const allowed = await startPageServer({ bundle: BUNDLE });
  const other = await startPageServer({ bundle: BUNDLE });
  const cfg = config({ news: { subscribe: 'authenticated' } }, { origins: { allowed: [allowed.origin] } });
  try {
    await withServer({ config: cfg }, async (server) => {
      const browser = await launchChromium();
      try {
        const query = new URLSearchParams({ url: server.wsUrl, token: connectionToken('browser-user'), channel: 'news:origin' });
        const refusedPage = await browser.newPage();
        const refused = refusedPage.waitForEvent('console', {
          predicate: (msg) => /WebSocket connection to .* failed/.test(msg.text()),
          timeout: 15000,
        });
        await refusedPage.goto(`${other.origin}/?${query}`, { timeout: 15000 });
        assert.match((await refused).text(), /403/);
        assert.notEqual(await text(refusedPage, '#state'), 'connected');

        const page = await browser.newPage();
        await page.goto(`${allowed.origin}/?${query}`, { timeout: 15000 });
        await waitForText(page, '#state', 'connected');
        await until(async () => (await server.call('channels', {})).channels['news:origin']?.num_clients === 1, 'the allowed page subscribed');
        await server.publish('news:origin', 'only for the allowed page');
        await page.waitForFunction(() => document.querySelectorAll('#messages li').length >= 1, null, { timeout: 15000 });
        assert.deepEqual(await page.locator('#messages li').allTextContents(), ['only for the allowed page']);
        assert.equal(await refusedPage.locator('#messages li').count(), 0);
      } finally {
        await browser.close();
      }
    });
  } finally {
    await allowed.close();
    await other.close();
  }
});
