'use strict';
// Switchboard admin UI: plain JavaScript, no framework, no build step. Every value from the
// server is written with textContent (never as markup). Live counters come from the
// server-sent events of /admin/api/events; the list on screen is refreshed with them.
(() => {
  const $ = (selector) => document.querySelector(selector);
  const VIEWS = ['login', 'nodes', 'connections', 'channels', 'channel', 'config'];
  const ui = {
    view: null,
    source: null,
    loggedIn: false,
    refreshing: false,
    again: false,
    rates: new Map(), // node uid -> { last: {uptime, totals}, rate: {...} }
    conn: { q: '', after: 0, back: [], next: null },
    chan: { q: '', offset: 0, total: 0 },
    channel: '',
  };
  const PAGE = 50;

  // ---- helpers -------------------------------------------------------------------------------

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function toast(message) {
    const box = $('#toast');
    box.textContent = message;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  async function api(path, body) {
    const init = { credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.method = 'POST';
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    if (res.status === 401 && path.startsWith('/admin/api/')) {
      loggedOut();
      throw new Error('Your session ended: log in again.');
    }
    if (!res.ok) throw new Error((data && data.error && data.error.message) || `HTTP ${res.status}`);
    return data;
  }

  const num = (n) => Number(n || 0).toLocaleString('en-US');
  function bytes(n) {
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let v = Number(n || 0);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
  }
  function duration(secs) {
    const s = Number(secs || 0);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  // ---- views ---------------------------------------------------------------------------------

  function show(view) {
    ui.view = view;
    for (const name of VIEWS) $(`#${name}-view`).hidden = name !== view;
    for (const link of document.querySelectorAll('#nav a')) {
      const active = link.dataset.view === view || (view === 'channel' && link.dataset.view === 'channels');
      link.classList.toggle('active', active);
    }
  }

  function route() {
    if (!ui.loggedIn) return show('login');
    const hash = location.hash || '#/nodes';
    if (hash.startsWith('#/channel/')) {
      ui.channel = decodeURIComponent(hash.slice('#/channel/'.length));
      $('#channel-name').textContent = ui.channel;
      $('#publish-result').textContent = '';
      show('channel');
    } else {
      const view = hash.slice(2);
      show(['nodes', 'connections', 'channels', 'config'].includes(view) ? view : 'nodes');
    }
    refresh();
  }

  async function refresh() {
    // An armed button waits for its second click: redrawing the list would disarm it.
    if (!ui.loggedIn || document.querySelector('button.armed')) return;
    // One at a time; a refresh asked for meanwhile (a new page) runs when this one ends.
    if (ui.refreshing) { ui.again = true; return; }
    ui.refreshing = true;
    ui.again = false;
    try {
      if (ui.view === 'nodes' && !ui.source) renderNodes(await api('/admin/api/nodes'));
      else if (ui.view === 'connections') await loadConnections();
      else if (ui.view === 'channels') await loadChannels();
      else if (ui.view === 'channel') await loadChannel();
      else if (ui.view === 'config') await loadConfig();
    } catch (err) {
      if (ui.loggedIn) toast(err.message);
    } finally {
      ui.refreshing = false;
      if (ui.again) refresh();
    }
  }

  // ---- nodes ---------------------------------------------------------------------------------

  const COUNTERS = ['messages_in', 'messages_out', 'bytes_in', 'bytes_out'];

  /** Per-second rates from the totals' change over the node's own uptime. */
  function rateOf(node) {
    const seen = ui.rates.get(node.uid) || { rate: null };
    const last = seen.last;
    if (last && node.uptime > last.uptime) {
      const dt = node.uptime - last.uptime;
      seen.rate = {};
      for (const key of COUNTERS) seen.rate[key] = Math.max(0, (node[key] - last[key]) / dt);
    }
    if (!last || node.uptime !== last.uptime) seen.last = { uptime: node.uptime, ...Object.fromEntries(COUNTERS.map((k) => [k, node[k]])) };
    ui.rates.set(node.uid, seen);
    return seen.rate;
  }

  function renderNodes(data) {
    const broker = data.broker_connected ? 'connected' : 'DISCONNECTED';
    $('#broker').textContent = `Broker: ${data.broker} (${broker}) · ${data.nodes.length} node${data.nodes.length === 1 ? '' : 's'}`;
    const cards = data.nodes.map((node) => {
      const rate = rateOf(node);
      const perSec = (key, fmt) => (rate ? `${fmt(rate[key])}/s` : '…');
      const stat = (label, value, key) => [el('dt', { text: label }), el('dd', { text: value, 'data-stat': key })];
      return el('article', { class: 'card node', 'data-uid': node.uid },
        el('h2', { text: node.name + (node.uid === data.this ? ' (this node)' : '') }),
        el('div', { class: 'meta mono', text: `${node.uid} · v${node.version} · up ${duration(node.uptime)}` }),
        el('dl', {},
          ...stat('Connections', num(node.num_clients), 'connections'),
          ...stat('Users', num(node.num_users), 'users'),
          ...stat('Channels', num(node.num_channels), 'channels'),
          ...stat('Subscriptions', num(node.num_subs), 'subscriptions'),
          ...stat('Messages in', perSec('messages_in', (v) => num(Math.round(v))), 'messages_in'),
          ...stat('Messages out', perSec('messages_out', (v) => num(Math.round(v))), 'messages_out'),
          ...stat('Bytes in', perSec('bytes_in', bytes), 'bytes_in'),
          ...stat('Bytes out', perSec('bytes_out', bytes), 'bytes_out')));
    });
    $('#nodes').replaceChildren(...cards);
  }

  // ---- connections ---------------------------------------------------------------------------

  function armed(label, action) {
    // Two clicks: the first arms the button for a few seconds, the second acts.
    const button = el('button', { class: 'danger', type: 'button', text: label });
    button.addEventListener('click', async () => {
      if (!button.classList.contains('armed')) {
        button.classList.add('armed');
        button.textContent = 'Confirm';
        setTimeout(() => { button.classList.remove('armed'); button.textContent = label; }, 4000);
        return;
      }
      button.disabled = true;
      button.classList.remove('armed');
      try {
        await action();
        refresh();
      } catch (err) {
        toast(err.message);
        button.disabled = false;
      }
    });
    return button;
  }

  function connectionRow(c) {
    const cell = (label, value, cls = '') => el('td', { 'data-label': label, class: cls, text: value });
    const actions = el('td', { class: 'actions' },
      armed('Disconnect', async () => {
        await api('/admin/api/disconnect', { conn: c.id });
        toast(`Connection ${c.id} disconnected`);
      }));
    if (c.user) {
      actions.append(armed('Disconnect user', async () => {
        await api('/admin/api/disconnect', { user: c.user });
        toast(`User ${c.user} disconnected on every node`);
      }));
    }
    return el('tr', { 'data-conn': String(c.id), 'data-user': c.user },
      cell('ID', String(c.id), 'mono num'),
      cell('User', c.user || (c.connected ? '(anonymous)' : '(connecting)')),
      cell('Door', c.door),
      cell('Client', c.client || '–', 'mono'),
      cell('Channels', String(c.subscriptions), 'num'),
      cell('Age', duration(c.age_secs), 'num'),
      cell('Queued', bytes(c.queued_bytes), 'num'),
      actions);
  }

  async function loadConnections() {
    const params = new URLSearchParams({ q: ui.conn.q, after: String(ui.conn.after), limit: String(PAGE) });
    const data = await api(`/admin/api/connections?${params}`);
    ui.conn.next = data.next_after;
    $('#conn-total').textContent = `(${num(data.total)})`;
    $('#conn-table tbody').replaceChildren(...data.connections.map(connectionRow));
    $('#conn-empty').hidden = data.connections.length > 0;
    $('#conn-prev').disabled = ui.conn.back.length === 0;
    $('#conn-next').disabled = data.next_after === null || data.next_after === undefined;
  }

  // ---- channels ------------------------------------------------------------------------------

  async function loadChannels() {
    const params = new URLSearchParams({ q: ui.chan.q, offset: String(ui.chan.offset), limit: String(PAGE) });
    const data = await api(`/admin/api/channels?${params}`);
    ui.chan.total = data.total;
    $('#chan-total').textContent = `(${num(data.total)})`;
    const rows = data.channels.map((c) => el('tr', { 'data-channel': c.channel },
      el('td', { 'data-label': 'Channel', class: 'mono' },
        el('a', { href: `#/channel/${encodeURIComponent(c.channel)}`, text: c.channel })),
      el('td', { 'data-label': 'Subscribers', class: 'num', text: num(c.num_clients) })));
    $('#chan-table tbody').replaceChildren(...rows);
    $('#chan-empty').hidden = rows.length > 0;
    $('#chan-prev').disabled = ui.chan.offset === 0;
    $('#chan-next').disabled = ui.chan.offset + PAGE >= data.total;
  }

  function payload(data) {
    return typeof data === 'string' ? data : JSON.stringify(data);
  }

  async function loadChannel() {
    const name = ui.channel;
    const data = await api(`/admin/api/channel?${new URLSearchParams({ name })}`);
    if (ui.view !== 'channel' || ui.channel !== name) return;
    const subs = data.subscribers;
    $('#sub-count').textContent = `(${num(subs.count)})`;
    $('#sub-table tbody').replaceChildren(...subs.list.map(connectionRow));

    const presence = data.presence;
    if (presence.error) {
      $('#presence').replaceChildren(el('p', { class: 'muted', text: `Not available: ${presence.error}` }));
    } else {
      const entries = Object.entries(presence.presence || {});
      $('#presence').replaceChildren(entries.length === 0
        ? el('p', { class: 'muted', text: 'Nobody present.' })
        : el('div', { class: 'presence' }, ...entries.map(([client, info]) => el('div', { class: 'item' },
          el('span', { text: info.user || '(anonymous)' }),
          el('span', { class: 'muted mono', text: ` · ${client}` })))));
    }

    const history = data.history;
    if (history.error) {
      $('#history').replaceChildren(el('p', { class: 'muted', text: `Not available: ${history.error}` }));
    } else {
      const pubs = history.publications || [];
      $('#history').replaceChildren(pubs.length === 0
        ? el('p', { class: 'muted', text: 'No publications kept.' })
        : el('div', { class: 'history' }, ...pubs.map((p) => el('div', { class: 'item' },
          el('span', { class: 'muted', text: `offset ${p.offset ?? '–'}` }),
          el('code', { text: payload(p.data) })))));
    }
  }

  async function loadConfig() {
    const data = await api('/admin/api/config');
    $('#config').textContent = data.text;
  }

  // ---- live updates --------------------------------------------------------------------------

  function startLive() {
    stopLive();
    const source = new EventSource('/admin/api/events');
    ui.source = source;
    const live = $('#live');
    live.hidden = false;
    source.addEventListener('open', () => live.classList.remove('off'));
    source.addEventListener('error', () => live.classList.add('off'));
    source.addEventListener('nodes', (event) => {
      live.classList.remove('off');
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      renderNodes(data);
      if (ui.view !== 'nodes' && ui.view !== 'config') refresh();
    });
    source.addEventListener('expired', () => loggedOut('Your session ended: log in again.'));
  }

  function stopLive() {
    if (ui.source) ui.source.close();
    ui.source = null;
    $('#live').hidden = true;
  }

  // ---- login ---------------------------------------------------------------------------------

  function loggedIn() {
    ui.loggedIn = true;
    $('#nav').hidden = false;
    $('#logout').hidden = false;
    startLive();
    route();
  }

  function loggedOut(message) {
    const was = ui.loggedIn;
    ui.loggedIn = false;
    stopLive();
    $('#nav').hidden = true;
    $('#logout').hidden = true;
    show('login');
    if (message && was) $('#login-error').textContent = message;
    $('#password').focus();
  }

  $('#login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = $('#login-error');
    error.textContent = '';
    const button = $('#login-form button');
    button.disabled = true;
    try {
      const res = await fetch('/admin/login', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ password: $('#password').value }),
      });
      if (res.ok) {
        $('#password').value = '';
        loggedIn();
      } else {
        let data = null;
        try { data = await res.json(); } catch { /* not JSON */ }
        error.textContent = (data && data.error && data.error.message) || `Login failed (HTTP ${res.status})`;
      }
    } catch (err) {
      error.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });

  $('#logout').addEventListener('click', async () => {
    try { await fetch('/admin/logout', { method: 'POST', credentials: 'same-origin' }); } catch { /* gone anyway */ }
    loggedOut();
  });

  // ---- forms and paging ----------------------------------------------------------------------

  $('#conn-search').addEventListener('submit', (event) => {
    event.preventDefault();
    ui.conn = { q: $('#conn-q').value.trim(), after: 0, back: [], next: null };
    refresh();
  });
  $('#conn-next').addEventListener('click', () => {
    if (ui.conn.next === null || ui.conn.next === undefined) return;
    ui.conn.back.push(ui.conn.after);
    ui.conn.after = ui.conn.next;
    refresh();
  });
  $('#conn-prev').addEventListener('click', () => {
    if (ui.conn.back.length === 0) return;
    ui.conn.after = ui.conn.back.pop();
    refresh();
  });
  $('#chan-search').addEventListener('submit', (event) => {
    event.preventDefault();
    ui.chan.q = $('#chan-q').value.trim();
    ui.chan.offset = 0;
    refresh();
  });
  $('#chan-next').addEventListener('click', () => {
    if (ui.chan.offset + PAGE < ui.chan.total) ui.chan.offset += PAGE;
    refresh();
  });
  $('#chan-prev').addEventListener('click', () => {
    ui.chan.offset = Math.max(0, ui.chan.offset - PAGE);
    refresh();
  });

  $('#publish-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = $('#publish-data').value;
    let data;
    try { data = JSON.parse(text); } catch { data = text; }
    const result = $('#publish-result');
    result.textContent = '';
    try {
      const reply = await api('/admin/api/publish', { channel: ui.channel, data });
      result.textContent = reply.offset !== undefined ? `Published (offset ${reply.offset})` : 'Published';
      refresh();
    } catch (err) {
      result.textContent = `Refused: ${err.message}`;
    }
  });

  window.addEventListener('hashchange', route);

  // A session cookie from before (the page was reloaded) is still good if the server says so.
  fetch('/admin/api/session', { credentials: 'same-origin' })
    .then((res) => (res.ok ? loggedIn() : loggedOut()))
    .catch(() => loggedOut());
})();
