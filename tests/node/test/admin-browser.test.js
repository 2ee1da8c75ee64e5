'use strict';
// The admin UI (/admin) in headless Chromium (playwright-core, the system's /usr/bin/chromium):
// a wrong password is refused; after the right one the page shows a client of the real
// centrifuge SDK appear, opens its channel, publishes to it (the SDK receives it) and
// disconnects it (the SDK gets 3503). Screenshots of each page, on a desktop and a phone-sized
// viewport, go to target/admin-screenshots/ (or $SWITCHBOARD_SCREENSHOT_DIR) as CI artefacts.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');

const { ROOT, connectionToken, nextEvent, until } = require('../lib/harness');
const { launchChromium } = require('../lib/chromium');
const { config } = require('../lib/config');
const { subscribed, withClients } = require('../lib/sdk');

const PASSWORD = 'admin-browser-test-password';
const SHOTS = process.env.SWITCHBOARD_SCREENSHOT_DIR || path.join(ROOT, 'target', 'admin-screenshots');
const DESKTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };
const CHANNEL = 'room:admin-test';

async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function login(page, password) {
  await page.fill('#password', password);
  await page.click('#login-form button[type=submit]');
}

test('the admin UI refuses a wrong password, shows an SDK client, publishes to its channel and disconnects it', async () => {
  const cfg = config(
    { room: { subscribe: 'authenticated', presence: true, history_size: 10, history_ttl: '5m' } },
    { admin: { enabled: true } },
  );
  // The password comes from the environment, as an operator's secret would.
  const env = { SWITCHBOARD_ADMIN_PASSWORD: PASSWORD };
  await withClients({ config: cfg, env }, async (server, clients) => {
    const sdk = await clients.connected(server.wsUrl, connectionToken('sdk-user'));
    const sub = await subscribed(sdk, CHANNEL);

    const browser = await launchChromium();
    const logs = [];
    try {
      const context = await browser.newContext({ viewport: DESKTOP });
      const page = await context.newPage();
      page.on('console', (msg) => logs.push(`console.${msg.type()}: ${msg.text()}`));
      page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
      page.setDefaultTimeout(15000);

      // Wrong password: refused, nothing of the admin shown.
      await page.goto(`http://${server.base}/admin`);
      await page.waitForSelector('#login-view:not([hidden])');
      await login(page, 'not the password');
      await page.waitForFunction(() => document.querySelector('#login-error').textContent === 'wrong password');
      assert.equal(await page.locator('#nav').isHidden(), true);
      await shot(page, 'login-refused-desktop');

      // The right one: the nodes page, live, with the SDK client counted.
      await login(page, PASSWORD);
      await page.waitForSelector('#nodes-view:not([hidden])');
      await page.waitForFunction(() => document.querySelector('[data-stat=connections]')?.textContent === '1');
      await page.waitForFunction(() => !document.querySelector('#live').classList.contains('off'));
      // Rates appear once a second event arrives.
      await page.waitForFunction(() => /\/s$/.test(document.querySelector('[data-stat=messages_in]')?.textContent || ''));
      const cookies = await context.cookies();
      const session = cookies.find((c) => c.name === 'sb_admin');
      assert.ok(session, JSON.stringify(cookies));
      assert.equal(session.httpOnly, true);
      assert.equal(session.sameSite, 'Strict');
      assert.equal(await page.evaluate(() => document.cookie), '', 'the session cookie is not readable by scripts');
      await shot(page, 'nodes-desktop');

      // The SDK client appears among the connections.
      await page.click('#nav a[data-view=connections]');
      const row = page.locator('#conn-table tr[data-user="sdk-user"]');
      await row.waitFor();
      assert.equal(await row.locator('td[data-label=Door]').textContent(), 'protocol');
      assert.equal(await row.locator('td[data-label=Channels]').textContent(), '1');
      await shot(page, 'connections-desktop');

      // Its channel, with the client subscribed and present.
      await page.click('#nav a[data-view=channels]');
      await page.click(`#chan-table a:text-is("${CHANNEL}")`);
      await page.waitForSelector('#channel-view:not([hidden])');
      await page.locator('#sub-table tr[data-user="sdk-user"]').waitFor();
      await page.waitForFunction(() => document.querySelector('#presence')?.textContent.includes('sdk-user'));

      // Publish from the UI: the SDK client receives it, and the history shows it.
      const received = nextEvent(sub, 'publication', () => true, 15000);
      await page.fill('#publish-data', '{"text":"hello from the admin UI"}');
      await page.click('#publish-form button[type=submit]');
      const publication = await received;
      assert.deepEqual(publication.data, { text: 'hello from the admin UI' });
      await page.waitForFunction(() => document.querySelector('#publish-result').textContent.startsWith('Published'));
      await page.waitForFunction(() => document.querySelector('#history')?.textContent.includes('hello from the admin UI'));
      await shot(page, 'channel-desktop');

      // The same pages at a phone's size.
      await page.setViewportSize(PHONE);
      await shot(page, 'channel-phone');
      await page.click('#nav a[data-view=nodes]');
      await page.waitForSelector('#nodes-view:not([hidden])');
      await shot(page, 'nodes-phone');
      await page.click('#nav a[data-view=connections]');
      await row.waitFor();
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(width <= PHONE.width, `the connections page fits a phone's width (${width}px)`);
      await shot(page, 'connections-phone');

      // Disconnect the user (two clicks: arm, confirm): the SDK gets 3503 and the row goes.
      const gone = nextEvent(sdk, 'disconnected', () => true, 15000);
      await row.locator('button:text-is("Disconnect user")').click();
      await row.locator('button:text-is("Confirm")').click();
      const ctx = await gone;
      assert.equal(ctx.code, 3503, JSON.stringify(ctx));
      await row.waitFor({ state: 'detached' });
      await until(async () => (await server.call('info', {})).nodes[0].num_clients === 0, 'the connection is gone');

      assert.deepEqual(logs.filter((l) => l.startsWith('pageerror')), []);
    } catch (err) {
      err.message += `\n--- page console ---\n${logs.join('\n')}`;
      throw err;
    } finally {
      await browser.close();
    }
  });
});
