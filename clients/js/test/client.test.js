// The client against a real server (started by tests/test_js_client.py).

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { NotifyApiError, NotifyClient, backoffDelay } from '../mojavox-notify.js';
import {
  FlakyProxy, URL_BASE, collect, createBroadcast, createNotification, newUser, next, sleep, token,
  until,
} from './helpers.js';

const clients = [];

/** A client for `user` on the server (or `url`), closed after the tests. */
function clientFor(user, options = {}) {
  const client = new NotifyClient({ url: URL_BASE, token: token(user), ...options });
  clients.push(client);
  return client;
}

after(() => {
  for (const client of clients) client.close();
});

describe('backoffDelay', () => {
  test('doubles from minDelayMs, is capped at maxDelayMs, and is jittered between half and all', () => {
    const bounds = { minDelayMs: 500, maxDelayMs: 8000 };
    assert.deepEqual([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, bounds, () => 1)),
      [500, 1000, 2000, 4000, 8000, 8000]);
    assert.deepEqual([1, 2, 3, 6].map((n) => backoffDelay(n, bounds, () => 0)), [250, 500, 1000, 4000]);
    const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(3, bounds)));
    assert.ok(spread.size > 10, 'delays are jittered');
    for (const delay of spread) assert.ok(delay >= 1000 && delay <= 2000, `${delay} within [1000, 2000]`);
  });
});

describe('tenants', () => {
  test('connected names the user\'s tenant, kept as client.tenant', async () => {
    const user = newUser();
    const north = new NotifyClient({ url: URL_BASE, token: token(user, { tenant: 'north' }) });
    const plain = clientFor(user);
    clients.push(north);
    const seen = next(north, 'connected', { timeoutMs: 5000 });
    await north.connect();
    assert.equal((await seen).tenant, 'north');
    assert.equal(north.tenant, 'north');
    await plain.connect();
    assert.equal(plain.tenant, 'default');
  });
});

describe('live notifications', () => {
  test('connects, then receives notifications and unread counts by priority', async () => {
    const user = newUser();
    const client = clientFor(user, { wsPath: undefined }); // an option left undefined keeps its default
    const states = collect(client, 'state');
    await client.connect();
    assert.equal(client.state, 'open');
    assert.deepEqual(states.map((s) => s.state), ['connecting', 'open']);
    assert.deepEqual(client.unread, { count: 0, byPriority: { low: 0, medium: 0, high: 0, critical: 0 } });

    const arriving = next(client, 'notification');
    const counted = next(client, 'unread_count', { where: (u) => u.count === 1 });
    const created = await createNotification(user, { type: 'call_escalation', title: 'Escalation' });
    assert.deepEqual(await arriving, created);
    assert.deepEqual((await counted).byPriority, { low: 0, medium: 0, high: 0, critical: 1 });
    assert.equal(client.lastId, created.id);
  });

  test('only the subscribed types arrive, also after unsubscribing one type while on all', async () => {
    const user = newUser();
    const client = clientFor(user);
    await client.connect();
    const channels = await client.unsubscribe(['call_completed']);
    assert.ok(!channels.includes('call_completed') && channels.includes('payment_received'), String(channels));
    const received = collect(client, 'notification');
    await createNotification(user, { type: 'call_completed' });
    const payment = await createNotification(user, { type: 'payment_received' });
    await until(() => received.length >= 1, { what: 'the payment' });
    await sleep(150);
    assert.deepEqual(received.map((n) => n.id), [payment.id]);
    assert.deepEqual(await client.subscribe(['all']), ['all']);
  });

  test('a client created with channels receives only those types', async () => {
    const user = newUser();
    const client = clientFor(user, { channels: ['call_escalation'] });
    const applied = next(client, 'subscribed', { where: ({ channels }) => channels.length === 1 });
    await client.connect();
    assert.deepEqual((await applied).channels, ['call_escalation']);
    const received = collect(client, 'notification');
    await createNotification(user, { type: 'payment_received' });
    const escalation = await createNotification(user, { type: 'call_escalation' });
    await until(() => received.length >= 1, { what: 'the escalation' });
    await sleep(150);
    assert.deepEqual(received.map((n) => n.id), [escalation.id]);
  });
});

describe('REST helpers', () => {
  test('history, getNotification, markRead, markAllRead, deleteNotification and unread counts', async () => {
    const user = newUser();
    const client = clientFor(user);
    const other = clientFor(user); // a second tab of the same user
    await client.connect();
    await other.connect();
    const first = await createNotification(user, { title: 'first', priority: 'high' });
    const second = await createNotification(user, { title: 'second', priority: 'low' });
    const third = await createNotification(user, { title: 'third', priority: 'critical' });

    const page = await client.history({ limit: 2 });
    assert.deepEqual(page.notifications.map((n) => n.id), [third.id, second.id]);
    assert.equal(page.total, 3);
    assert.equal(page.hasMore, true);
    assert.equal(page.unreadCount, 3);
    assert.deepEqual((await client.history({ limit: 2, offset: 2 })).notifications.map((n) => n.id), [first.id]);
    assert.deepEqual(await client.getNotification(second.id), second);

    const heard = next(other, 'read', { where: (r) => r.notificationId === first.id });
    await client.markRead(first.id);
    assert.deepEqual(await heard, { notificationId: first.id, all: false });
    assert.deepEqual(await client.getUnreadCount(),
      { count: 2, byPriority: { low: 1, medium: 0, high: 0, critical: 1 } });
    assert.deepEqual((await client.history({ unreadOnly: true })).notifications.map((n) => n.id), [third.id, second.id]);

    const deleted = next(other, 'deleted');
    await client.deleteNotification(second.id);
    assert.deepEqual(await deleted, { notificationId: second.id });

    const allRead = next(other, 'read', { where: (r) => r.all });
    const zero = next(other, 'unread_count', { where: (u) => u.count === 0 });
    await client.markAllRead();
    await allRead;
    await zero;
    assert.equal(other.unread.count, 0);
  });

  test('settings and push subscriptions', async () => {
    const client = clientFor(newUser());
    const settings = await client.getSettings();
    assert.ok(Object.keys(settings).length >= 7);
    assert.deepEqual(settings.call_escalation, { enabled: true, push: true });
    const changed = await client.updateSettings({ call_completed: { enabled: false }, payment_received: { push: true } });
    assert.equal(changed.call_completed.enabled, false);
    assert.equal(changed.payment_received.push, true);
    assert.deepEqual(await client.getSettings(), changed);

    assert.equal(await client.getVapidPublicKey(), null, 'push is not configured on the test server');
    await assert.rejects(client.savePushSubscription({ endpoint: 'https://127.0.0.1/push/x', keys: { p256dh: 'x', auth: 'y' } }),
      (error) => error instanceof NotifyApiError && error.status === 400);
    await assert.rejects(client.removePushSubscription('https://push.example.com/send/never-saved'),
      (error) => error.status === 404);
  });

  test('errors are NotifyApiError with the status and the server code', async () => {
    const client = clientFor(newUser());
    await assert.rejects(client.markRead('0123456789abcdef01234567'),
      (error) => error instanceof NotifyApiError && error.status === 404 && error.code === 'not_found');
    const stranger = new NotifyClient({ url: URL_BASE, token: 'not-a-jwt' });
    await assert.rejects(stranger.history(), (error) => error.status === 401);
  });

  test('a request answered 401 is retried once with a fresh token from getToken', async () => {
    const user = newUser();
    const tokens = ['expired-or-garbage', token(user)];
    const client = new NotifyClient({ url: URL_BASE, getToken: () => tokens.shift() });
    const page = await client.history();
    assert.equal(page.total, 0);
    assert.equal(tokens.length, 0);
  });
});

describe('broadcasts', () => {
  test('one arrives live once, is not repeated after a reconnection, and a later client gets it on connect', async () => {
    const proxy = await new FlakyProxy(URL_BASE).listen();
    try {
      const client = clientFor(newUser(), { url: proxy.url, minDelayMs: 50, maxDelayMs: 200 });
      const received = collect(client, 'broadcast');
      await client.connect();
      const sent = await createBroadcast({ title: `js ${Date.now()}`, priority: 'critical' });
      await until(() => received.some((b) => b.id === sent.id), { what: 'the broadcast' });
      assert.deepEqual(received.find((b) => b.id === sent.id), sent);
      assert.deepEqual(client.broadcasts.get(sent.id), sent);

      proxy.drop();
      await next(client, 'connected', { timeoutMs: 5000 });
      await sleep(200); // the server shows the active ones again right after connected
      assert.equal(received.filter((b) => b.id === sent.id).length, 1);

      const later = clientFor(newUser());
      const shown = next(later, 'broadcast', { where: (b) => b.id === sent.id });
      await later.connect();
      assert.deepEqual(await shown, sent);
      assert.ok((await later.getBroadcasts()).some((b) => b.id === sent.id));
    } finally {
      await proxy.close();
    }
  });
});

describe('reconnection and resume', () => {
  test('after the network drops, it reconnects with since and gets what it missed exactly once', async () => {
    const proxy = await new FlakyProxy(URL_BASE).listen();
    try {
      const user = newUser();
      const before = await createNotification(user, { title: 'before' });
      const client = clientFor(user, { url: proxy.url, minDelayMs: 50, maxDelayMs: 200, connectTimeoutMs: 500, since: before.id });
      const received = collect(client, 'notification');
      const states = collect(client, 'state');
      await client.connect();
      const live = await createNotification(user, { title: 'live' });
      await until(() => received.length === 1, { what: 'the live one' });

      proxy.refuse = true;
      proxy.drop();
      await until(() => client.state === 'reconnecting', { what: 'reconnecting' });
      const missed = [];
      for (let i = 0; i < 3; i += 1) missed.push(await createNotification(user, { title: `missed ${i}` }));
      await sleep(300); // a few refused attempts
      proxy.refuse = false;
      const resumed = await next(client, 'resumed', { timeoutMs: 5000 });
      assert.equal(resumed.count, 3);
      const after = await createNotification(user, { title: 'after' });
      await until(() => received.length === 5, { what: 'all five' });
      await sleep(150);
      assert.deepEqual(received.map((n) => n.id), [live.id, ...missed.map((n) => n.id), after.id]);
      const retries = states.filter((s) => s.state === 'reconnecting' && s.delayMs !== undefined);
      assert.ok(retries.length >= 2, `retried ${retries.length} times`);
      for (const retry of retries) assert.ok(retry.delayMs >= 25 && retry.delayMs <= 200, `delay ${retry.delayMs}`);
      assert.equal(client.state, 'open');
    } finally {
      await proxy.close();
    }
  });

  test('without since, it anchors on the newest stored notification so a drop loses nothing', async () => {
    const proxy = await new FlakyProxy(URL_BASE).listen();
    try {
      const user = newUser();
      const old = await createNotification(user, { title: 'old' });
      const client = clientFor(user, { url: proxy.url, minDelayMs: 50, maxDelayMs: 100, connectTimeoutMs: 500 });
      const received = collect(client, 'notification');
      await client.connect();
      await until(() => client.lastId === old.id, { what: 'the anchor' });
      proxy.refuse = true;
      proxy.drop();
      const missed = await createNotification(user, { title: 'missed' });
      proxy.refuse = false;
      await until(() => received.length === 1, { what: 'the missed one' });
      await sleep(150);
      assert.deepEqual(received.map((n) => n.id), [missed.id]);
    } finally {
      await proxy.close();
    }
  });

  test("the app's first history page anchors the resume even when the anchor's own request fails", async () => {
    const proxy = await new FlakyProxy(URL_BASE).listen();
    try {
      const user = newUser();
      const old = await createNotification(user, { title: 'old' });
      const client = clientFor(user, { url: proxy.url, minDelayMs: 50, maxDelayMs: 100, connectTimeoutMs: 500 });
      const anchor = client._anchor;
      client._anchor = async () => {}; // the server went away before the anchor's request answered
      const received = collect(client, 'notification');
      await client.connect();
      client._anchor = anchor;
      const page = await client.history({ limit: 10 }); // what the page shows first
      assert.deepEqual(page.notifications.map((n) => n.id), [old.id]);
      assert.equal(client.lastId, old.id);
      proxy.refuse = true;
      proxy.drop();
      const missed = await createNotification(user, { title: 'missed' });
      proxy.refuse = false;
      await until(() => received.length === 1, { what: 'the missed one' });
      assert.deepEqual(received.map((n) => n.id), [missed.id]);
    } finally {
      await proxy.close();
    }
  });

  test('a ping that gets no answer (a half-open connection) makes it reconnect and resume', async () => {
    const proxy = await new FlakyProxy(URL_BASE).listen();
    try {
      const user = newUser();
      const client = clientFor(user, { url: proxy.url, pingIntervalMs: 100, pongTimeoutMs: 200, minDelayMs: 20, maxDelayMs: 50, connectTimeoutMs: 500 });
      await client.connect();
      await next(client, 'pong', { timeoutMs: 1000 });
      proxy.freeze();
      const lost = await next(client, 'state', { where: (s) => s.state === 'reconnecting', timeoutMs: 2000 });
      assert.equal(lost.code, 4000);
      assert.equal(lost.reason, 'no answer to ping');
      await next(client, 'connected', { timeoutMs: 3000 });
      const arriving = next(client, 'notification');
      const created = await createNotification(user);
      assert.equal((await arriving).id, created.id);
    } finally {
      await proxy.close();
    }
  });

  test('an unknown since asks the app to resync and resumes from now on', async () => {
    const user = newUser();
    const client = clientFor(user, { since: '0123456789abcdef01234567' });
    const resync = next(client, 'resync');
    await client.connect();
    assert.deepEqual(await resync, { reason: 'since_not_found' });
    const arriving = next(client, 'notification');
    const created = await createNotification(user);
    assert.equal((await arriving).id, created.id);
  });
});

describe('refusals', () => {
  test('a socket over the per-user cap waits at least the longest backoff before trying again', async () => {
    const user = newUser();
    const open = [clientFor(user), clientFor(user), clientFor(user)]; // the test server allows 3
    await Promise.all(open.map((client) => client.connect()));
    const extra = clientFor(user, { minDelayMs: 10, maxDelayMs: 2000 });
    const refused = next(extra, 'state', { where: (s) => s.state === 'reconnecting' && s.delayMs !== undefined });
    extra.connect().catch(() => {});
    const { code, delayMs } = await refused;
    assert.equal(code, 4009);
    assert.ok(delayMs >= 2000 && delayMs <= 3000, `delay ${delayMs}`);
    extra.close();
  });
});

describe('tokens', () => {
  test('token_expiring is answered with a token from getToken and refresh_token', async () => {
    const user = newUser();
    let calls = 0;
    // The server warns 30 s before expiry: a 31 s token is warned about after about 1 s.
    const client = new NotifyClient({ url: URL_BASE, getToken: () => { calls += 1; return token(user, { ttlSeconds: calls === 1 ? 31 : 3600 }); } });
    clients.push(client);
    await client.connect();
    const refreshed = await next(client, 'token_refreshed', { timeoutMs: 5000 });
    assert.equal(calls, 2);
    assert.ok(Date.parse(refreshed.expiresAt) > Date.now() + 3000 * 1000, refreshed.expiresAt);
  });

  test('a refused token without getToken stops (no reconnection loop) and connect() rejects', async () => {
    const client = new NotifyClient({ url: URL_BASE, token: 'not-a-jwt', minDelayMs: 10 });
    clients.push(client);
    const states = collect(client, 'state');
    await assert.rejects(client.connect(), (error) => error.status === 401);
    await sleep(100);
    assert.deepEqual(states.map((s) => s.state), ['connecting', 'unauthorized']);
    assert.equal(states[1].code, 4002);
  });

  test('with getToken, a refused token is replaced on the next attempt', async () => {
    const user = newUser();
    const tokens = ['not-a-jwt', token(user)];
    const client = new NotifyClient({ url: URL_BASE, getToken: () => tokens.shift(), minDelayMs: 10, maxDelayMs: 20 });
    clients.push(client);
    await client.connect();
    assert.equal(client.state, 'open');
    assert.equal(tokens.length, 0);
  });
});
