// Helpers for tests against a real running MOJAVOX Notify server.
//
// MOJAVOX_URL (e.g. http://127.0.0.1:3001) and MOJAVOX_JWT_SECRET (the server's HS256 secret)
// must be set: the repository's pytest suite starts a server and sets them (tests/test_js_client.py).

import { createHmac, randomUUID } from 'node:crypto';
import net from 'node:net';

export const URL_BASE = process.env.MOJAVOX_URL;
const SECRET = process.env.MOJAVOX_JWT_SECRET;
if (!URL_BASE || !SECRET) {
  throw new Error('set MOJAVOX_URL and MOJAVOX_JWT_SECRET to a running server and its HS256 secret '
    + '(`make test` does: tests/test_js_client.py)');
}
if (typeof globalThis.WebSocket !== 'function') {
  throw new Error('no global WebSocket: run node >= 20.10 with --experimental-websocket (npm test does)');
}

const base64url = (value) => Buffer.from(value).toString('base64url');

/** An HS256 JWT for `user`, valid for `ttlSeconds`, of `tenant` when given. */
export function token(user, { roles = [], ttlSeconds = 3600, tenant = undefined } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = base64url(JSON.stringify({ sub: user, roles, iat: now, exp: now + ttlSeconds, tenant }));
  const signature = createHmac('sha256', SECRET).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}

/** A user id no other test uses. */
export function newUser(prefix = 'js') {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

const SERVICE_TOKEN = token('js-test-service', { roles: ['service'] });

/** Create a notification over REST as a service; returns its payload. */
export async function createNotification(userId, fields = {}) {
  const response = await fetch(`${URL_BASE}/api/notifications`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${SERVICE_TOKEN}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ userId, type: 'payment_received', title: 'Payment Received', message: 'paid', ...fields }),
  });
  const body = await response.json();
  if (response.status !== 201) throw new Error(`create failed: ${response.status} ${JSON.stringify(body)}`);
  return body;
}

/** Resolves with the next value of `event` on `client` (rejects after `timeoutMs`). */
export function next(client, event, { timeoutMs = 5000, where = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${event} within ${timeoutMs} ms`)); }, timeoutMs);
    const off = client.on(event, (value) => {
      if (!where(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** Collects every value of `event` on `client`. */
export function collect(client, event) {
  const values = [];
  client.on(event, (value) => values.push(value));
  return values;
}

/** Announce to every user over REST as a service; returns the broadcast. */
export async function createBroadcast(fields = {}) {
  const response = await fetch(`${URL_BASE}/api/broadcasts`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${SERVICE_TOKEN}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ title: 'Maintenance', message: 'The dialer restarts at 22:00', ...fields }),
  });
  const body = await response.json();
  if (response.status !== 201) throw new Error(`broadcast failed: ${response.status} ${JSON.stringify(body)}`);
  return body;
}

/** Waits until `predicate()` is true (polling), or fails after `timeoutMs`. */
export async function until(predicate, { timeoutMs = 5000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A TCP proxy in front of the server, to break the network under a client: `drop()` cuts every
 * connection, `refuse` makes new ones fail, `freeze()` stops forwarding without closing
 * (a half-open connection, as after a laptop sleeps or a NAT forgets).
 */
export class FlakyProxy {
  constructor(target) {
    const url = new URL(target);
    this.target = { host: url.hostname, port: Number(url.port) };
    this.refuse = false;
    this.pairs = new Set();
    this.server = net.createServer((client) => this._accept(client));
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  _accept(client) {
    if (this.refuse) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.target);
    const pair = { client, upstream };
    this.pairs.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => { client.destroy(); upstream.destroy(); this.pairs.delete(pair); };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  }

  drop() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  freeze() {
    for (const { client, upstream } of this.pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
  }

  async close() {
    this.drop();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
