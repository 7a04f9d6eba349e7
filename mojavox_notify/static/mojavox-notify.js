// MOJAVOX Notify client: the dashboard socket with reconnection and lossless resume, plus the
// REST API. An ES module with no dependencies and no build step; runs in browsers and in
// Node.js 20.10+ (pass `WebSocket` there, or run Node with --experimental-websocket).

/**
 * @typedef {'low'|'medium'|'high'|'critical'} Priority
 *
 * @typedef {object} Notification
 * @property {string} id
 * @property {string} type
 * @property {string} title
 * @property {string} message
 * @property {string} timestamp ISO 8601 with milliseconds, UTC
 * @property {Priority} priority
 * @property {boolean} read
 * @property {Record<string, unknown>} data
 * @property {string|null} actionUrl
 * @property {Escalation} [escalation] only on a notification of a type with an escalation
 *   policy: the escalation as it is now (every notification of one escalation shares its id)
 *
 * @typedef {'open'|'acknowledged'|'resolved'|'unanswered'} EscalationState
 *
 * @typedef {object} Escalation a critical matter that someone must take (see `ack`)
 * @property {string} id shared by every notification of the escalation, across steps and users
 * @property {string} key the business key, `call:<callId>` for calls
 * @property {EscalationState} state
 * @property {number} step the last step of its policy that ran (0: the first recipients only)
 * @property {string|null} acknowledgedBy who took it
 * @property {string|null} acknowledgedAt ISO 8601
 * @property {string|null} resolvedAt ISO 8601
 * @property {string|null} resolution why it was resolved, e.g. "call ended"
 * @property {string} createdAt ISO 8601: when it was opened (its waiting time counts from here)
 *
 * @typedef {Escalation & {notificationId: string}} ListedEscalation one of `escalations()`:
 *   with the caller's newest notification of it, to `ack` with
 *
 * @typedef {Escalation['state']|'unresolved'} EscalationFilter `unresolved`: every state but
 *   resolved
 *
 * @typedef {object} Broadcast an announcement to every user, shown until `expiresAt`
 * @property {string} id
 * @property {string} title
 * @property {string} message
 * @property {Priority} priority
 * @property {string} timestamp
 * @property {string} expiresAt
 * @property {Record<string, unknown>} data
 * @property {string|null} actionUrl
 *
 * @typedef {object} UnreadCount
 * @property {number} count
 * @property {Record<Priority, number>} byPriority
 *
 * @typedef {object} HistoryPage
 * @property {Notification[]} notifications newest first
 * @property {number} total
 * @property {boolean} hasMore
 * @property {number} unreadCount
 *
 * @typedef {Record<string, {enabled: boolean, push: boolean}>} ChannelSettings
 *
 * @typedef {'idle'|'connecting'|'open'|'reconnecting'|'unauthorized'|'closed'} ConnectionState
 *
 * @typedef {object} StateChange
 * @property {ConnectionState} state
 * @property {number} [attempt] reconnection attempt (1 for the first retry)
 * @property {number} [delayMs] when reconnecting: the wait before the next attempt
 * @property {number} [code] the close code that caused the change
 * @property {string} [reason]
 *
 * @typedef {object} ClientEvents what each event passes to its listeners
 * @property {Notification} notification a new notification (never the same id twice)
 * @property {Broadcast} broadcast an announcement to every user (each id once, also across
 *   reconnections; the active ones arrive right after connecting)
 * @property {UnreadCount} unread_count after every change, and on connect
 * @property {{notificationId: string|null, all: boolean}} read read in any tab of the user
 * @property {{notificationId: string}} deleted
 * @property {Escalation} escalation one of the user's escalations changed (taken by someone,
 *   escalated a step, resolved, unanswered), on every socket whatever its channels; after the
 *   server resynced the socket, the user's newest escalations as they are now (a reconnection
 *   replays missed notifications, not changes: read `escalations()` after one)
 * @property {StateChange} state
 * @property {{clientId: string, resumed: boolean, tenant: string}} connected `tenant`: the
 *   user's tenant (the token's `tenant` claim, or `default`)
 * @property {{count: number, hasMore: boolean, lastId: string|null}} resumed
 * @property {{reason: string}} resync reload the list from `history`
 * @property {{expiresAt: string}} token_refreshed
 * @property {{channels: string[]}} subscribed
 * @property {{timestamp: string}} pong
 * @property {{code: string, message: string}} error
 *
 * @typedef {object} ClientOptions
 * @property {string} url the server's base URL, e.g. "https://notify.mojavox.ai"
 * @property {string} [token] a JWT; or give `getToken`
 * @property {() => string|Promise<string>} [getToken] called before every connection, on
 *   `token_expiring` and when a request answers 401; return a fresh token
 * @property {string} [wsPath] default "/ws/notifications"
 * @property {string} [since] id of the last notification the app already has (e.g. the newest
 *   of the history it showed): the first connection replays what came after it
 * @property {string[]} [channels] receive only these types (default: all)
 * @property {number} [minDelayMs] first reconnection delay (default 500)
 * @property {number} [maxDelayMs] largest reconnection delay (default 30000)
 * @property {number} [pingIntervalMs] ping when nothing arrived for this long (default 20000)
 * @property {number} [pongTimeoutMs] reconnect when a ping gets no answer in time (default 10000)
 * @property {number} [connectTimeoutMs] give up on a connection attempt that is not answered
 *   with `connected` in time, and retry (default 10000)
 * @property {typeof WebSocket} [WebSocket] constructor (default: globalThis.WebSocket)
 * @property {typeof fetch} [fetch] (default: globalThis.fetch)
 * @property {() => number} [random] for the jitter (default Math.random)
 */

const DEFAULTS = {
  wsPath: '/ws/notifications',
  minDelayMs: 500,
  maxDelayMs: 30000,
  pingIntervalMs: 20000,
  pongTimeoutMs: 10000,
  connectTimeoutMs: 10000,
};

/** Close codes after which the same token cannot succeed. */
const AUTH_CLOSE_CODES = new Set([4001, 4002, 4003]);
/** Refusals that an immediate retry would only meet again: too many sockets of this user
 * (wait the longest backoff) and too many failed authentications from this address (a minute). */
const CLOSE_TOO_MANY_SOCKETS = 4009;
const CLOSE_AUTH_THROTTLED = 4029;
const AUTH_THROTTLE_MS = 60000;
/** The close code the client reports itself when the server stopped answering (a ping or a
 * connection attempt timed out). */
const CLOSE_NO_ANSWER = 4000;
const SEEN_IDS_KEPT = 1000;

/** Ids per `seen` message at most (the server's limit). */
const SEEN_BATCH = 100;

/** An error answer of the REST API: `status` and the server's `code`; for a refused `ack`
 * (409 `already_acknowledged` or `escalation_resolved`), `escalation` as it is now. */
export class NotifyApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {number|null} [retryAfter] seconds, for 429
   * @param {Escalation|null} [escalation] what a refused `ack` answered with
   */
  constructor(status, code, message, retryAfter = null, escalation = null) {
    super(message);
    this.name = 'NotifyApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    /** @type {Escalation|null} */
    this.escalation = escalation;
  }
}

/**
 * The delay before reconnection attempt `attempt` (1, 2, ...): exponential from `minDelayMs`,
 * capped at `maxDelayMs`, then jittered to between half and all of it so that a thousand
 * dashboards that lost one server do not all come back in the same millisecond.
 * @param {number} attempt
 * @param {{minDelayMs: number, maxDelayMs: number}} bounds
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, { minDelayMs, maxDelayMs }, random = Math.random) {
  const ceiling = Math.min(maxDelayMs, minDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}

export class NotifyClient {
  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options || !options.url) throw new TypeError('NotifyClient: options.url is required');
    if (!options.token && !options.getToken) {
      throw new TypeError('NotifyClient: give options.token or options.getToken');
    }
    const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
    this.options = { ...DEFAULTS, ...given };
    this.baseUrl = options.url.replace(/\/+$/, '');
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this._random = options.random || Math.random;
    /** @type {string|null} */
    this._token = options.token || null;
    /** @type {ConnectionState} */
    this.state = 'idle';
    /** @type {string|null} Id of the newest notification received, sent as `since` on every reconnection. */
    this.lastId = options.since || null;
    /** @type {UnreadCount|null} */
    this.unread = null;
    /** @type {string|null} */
    this.clientId = null;
    /** @type {string|null} The user's tenant, from `connected` (`default` without a claim). */
    this.tenant = null;
    this._channels = options.channels ? [...options.channels] : null;
    this._listeners = new Map();
    this._socket = null;
    this._attempt = 0;
    this._timers = { reconnect: null, ping: null, pong: null, connect: null };
    this._seen = new Set();
    /** @type {Map<string, Broadcast>} The announcements received that have not expired. */
    this.broadcasts = new Map();
    this._pendingSubscriptions = [];
    this._wanted = false;
  }

  // -- events ------------------------------------------------------------------------------

  /**
   * Listen to an event (see `ClientEvents` for what each passes). Returns a function that
   * removes the listener.
   * @template {keyof ClientEvents} K
   * @param {K} event
   * @param {(value: ClientEvents[K]) => void} listener
   * @returns {() => void}
   */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} event
   * @param {(value: ClientEvents[K]) => void} listener
   */
  off(event, listener) {
    const listeners = this._listeners.get(event);
    if (listeners) listeners.delete(listener);
  }

  _emit(event, value) {
    const listeners = this._listeners.get(event);
    if (!listeners) return;
    for (const listener of [...listeners]) {
      try {
        listener(value);
      } catch (error) {
        // One failing listener must not stop delivery to the others, nor the client.
        if (typeof globalThis.reportError === 'function') globalThis.reportError(error);
        else console.error(error);
      }
    }
  }

  _setState(state, details = {}) {
    this.state = state;
    this._emit('state', { state, ...details });
  }

  // -- connection --------------------------------------------------------------------------

  /**
   * Open the socket (and keep it open until `close()`). Resolves at the first `connected`;
   * rejects only when the token is refused and no `getToken` can give another.
   * @returns {Promise<void>}
   */
  connect() {
    this._wanted = true;
    if (this.state === 'open') return Promise.resolve();
    const opened = new Promise((resolve, reject) => {
      const offConnected = this.on('connected', () => { stop(); resolve(); });
      const offState = this.on('state', ({ state, code, reason }) => {
        if (state === 'unauthorized' || state === 'closed') {
          stop();
          reject(new NotifyApiError(401, 'unauthorized', reason || `socket closed (${code})`));
        }
      });
      const stop = () => { offConnected(); offState(); };
    });
    if (this.state === 'idle' || this.state === 'closed' || this.state === 'unauthorized') {
      this._attempt = 0;
      this._open();
    }
    return opened;
  }

  /** Close the socket for good (no reconnection). */
  close() {
    this._wanted = false;
    this._clearTimers();
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      this._detach(socket);
      socket.close(1000, 'client closed');
    }
    for (const pending of this._pendingSubscriptions.splice(0)) {
      pending.reject(new Error('client closed'));
    }
    if (this.state !== 'closed') this._setState('closed', { code: 1000 });
  }

  async _open() {
    this._clearTimers();
    this._setState(this._attempt ? 'reconnecting' : 'connecting', { attempt: this._attempt });
    let token;
    try {
      token = await this._currentToken(this._attempt > 0 && Boolean(this.options.getToken));
    } catch (error) {
      this._emit('error', { code: 'token_unavailable', message: String(error && error.message || error) });
      this._scheduleReconnect(0, 'getToken failed');
      return;
    }
    if (!this._wanted) return;
    const query = new URLSearchParams({ token });
    if (this.lastId) query.set('since', this.lastId);
    const wsBase = this.baseUrl.replace(/^http/, 'ws');
    let socket;
    try {
      socket = new this._WebSocket(`${wsBase}${this.options.wsPath}?${query}`);
    } catch (error) {
      this._scheduleReconnect(0, String(error && error.message || error));
      return;
    }
    this._socket = socket;
    this._timers.connect = setTimeout(() => this._abandon(socket, 'no answer to the connection attempt'),
      this.options.connectTimeoutMs);
    socket.onmessage = (event) => this._onFrame(event.data);
    socket.onclose = (event) => this._onClose(socket, event.code, event.reason);
    socket.onerror = () => {}; // a close event follows with the code
  }

  _detach(socket) {
    socket.onmessage = null;
    socket.onclose = null;
    socket.onerror = null;
  }

  _onClose(socket, code, reason) {
    if (socket !== this._socket) return;
    this._socket = null;
    this._clearTimers();
    // Channel changes not yet answered are re-applied by the next connection.
    for (const pending of this._pendingSubscriptions.splice(0)) pending.resolve(this._channels || ['all']);
    if (!this._wanted) return;
    if (AUTH_CLOSE_CODES.has(code) && !this.options.getToken) {
      this._wanted = false;
      this._setState('unauthorized', { code, reason });
      return;
    }
    this._scheduleReconnect(code, reason);
  }

  _scheduleReconnect(code, reason) {
    if (!this._wanted) return;
    this._attempt += 1;
    const floor = code === CLOSE_AUTH_THROTTLED ? AUTH_THROTTLE_MS
      : code === CLOSE_TOO_MANY_SOCKETS ? this.options.maxDelayMs : 0;
    const delayMs = Math.max(backoffDelay(this._attempt, this.options, this._random),
      Math.round(floor * (1 + this._random() / 2)));
    this._setState('reconnecting', { attempt: this._attempt, delayMs, code, reason });
    this._timers.reconnect = setTimeout(() => this._open(), delayMs);
  }

  /** Reconnect now instead of waiting for the backoff (e.g. when the browser goes online). */
  reconnectNow() {
    if (!this._wanted || this.state !== 'reconnecting' || this._socket) return;
    clearTimeout(this._timers.reconnect);
    this._open();
  }

  _clearTimers() {
    for (const name of Object.keys(this._timers)) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _send(frame) {
    if (!this._socket || this._socket.readyState !== 1) return false;
    this._socket.send(JSON.stringify(frame));
    return true;
  }

  // -- idle ping: a half-open connection is noticed within pingInterval + pongTimeout ---------

  _armPing() {
    clearTimeout(this._timers.ping);
    clearTimeout(this._timers.pong);
    this._timers.pong = null;
    this._timers.ping = setTimeout(() => {
      if (!this._send({ type: 'ping' })) return;
      this._timers.pong = setTimeout(() => this._abandon(this._socket, 'no answer to ping'),
        this.options.pongTimeoutMs);
    }, this.options.pingIntervalMs);
  }

  /** Give up on a connection that stopped answering: its close event may take minutes. */
  _abandon(socket, reason) {
    if (!socket || socket !== this._socket) return;
    this._detach(socket);
    try { socket.close(CLOSE_NO_ANSWER, reason); } catch { /* already closing */ }
    this._onClose(socket, CLOSE_NO_ANSWER, reason);
  }

  // -- frames --------------------------------------------------------------------------------

  _onFrame(text) {
    this._armPing();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'connected': return this._onConnected(frame);
      case 'notification': return this._onNotification(frame.payload);
      case 'broadcast': return this._onBroadcast(frame.payload);
      case 'unread_count':
        this.unread = { count: frame.count, byPriority: frame.byPriority };
        return this._emit('unread_count', this.unread);
      case 'notification_read':
        return this._emit('read', { notificationId: frame.notificationId, all: Boolean(frame.all) });
      case 'notification_deleted':
        return this._emit('deleted', { notificationId: frame.notificationId });
      case 'escalation': return frame.payload ? this._emit('escalation', frame.payload) : undefined;
      case 'resumed':
        if (frame.lastId) this.lastId = frame.lastId;
        return this._emit('resumed', { count: frame.count, hasMore: frame.hasMore, lastId: frame.lastId });
      case 'subscribed': return this._onSubscribed(frame.channels);
      case 'token_expiring': return this._refreshToken();
      case 'token_refreshed': return this._emit('token_refreshed', { expiresAt: frame.expiresAt });
      case 'pong': return this._emit('pong', { timestamp: frame.timestamp });
      case 'error': return this._onError(frame);
      default: return undefined;
    }
  }

  _onConnected(frame) {
    clearTimeout(this._timers.connect);
    const resumed = Boolean(this.lastId);
    this._attempt = 0;
    this.clientId = frame.clientId;
    this.tenant = frame.tenant || 'default';
    if (frame.unreadCount) this.unread = frame.unreadCount;
    this._setState('open');
    this._emit('connected', { clientId: frame.clientId, resumed, tenant: this.tenant });
    if (frame.unreadCount) this._emit('unread_count', this.unread);
    if (this._channels) {
      const ignore = { resolve() {}, reject() {} };
      this._send({ type: 'unsubscribe', channels: ['all'] });
      this._pendingSubscriptions.unshift(ignore);
      if (this._channels.length) {
        this._send({ type: 'subscribe', channels: this._channels });
        this._pendingSubscriptions.splice(1, 0, ignore);
      }
    }
    if (!this.lastId) this._anchor();
  }

  /** Without a `since` yet, the newest stored notification is where a reconnection resumes
   * from: otherwise what is created while the socket is down would be missed. */
  async _anchor() {
    try {
      await this.history({ limit: 1 }); // (a history page anchors `lastId`)
    } catch (error) {
      this._emit('error', { code: 'anchor_failed', message: String(error && error.message || error) });
    }
  }

  _onBroadcast(payload) {
    const now = Date.now();
    for (const [id, known] of this.broadcasts) {
      if (Date.parse(known.expiresAt) <= now) this.broadcasts.delete(id);
    }
    if (!payload || this.broadcasts.has(payload.id) || Date.parse(payload.expiresAt) <= now) return;
    this.broadcasts.set(payload.id, payload);
    this._emit('broadcast', payload);
  }

  _onNotification(payload) {
    if (!payload || this._seen.has(payload.id)) return;
    this._seen.add(payload.id);
    if (this._seen.size > SEEN_IDS_KEPT) this._seen.delete(this._seen.values().next().value);
    this.lastId = payload.id;
    this._emit('notification', payload);
  }

  _onError(frame) {
    if (frame.code === 'since_not_found') {
      // The notification we resumed from is gone (deleted or expired): start over from now.
      this.lastId = null;
      this._emit('resync', { reason: 'since_not_found' });
      this._anchor();
    }
    this._emit('error', { code: frame.code, message: frame.message });
  }

  async _refreshToken() {
    if (!this.options.getToken) {
      this._emit('error', { code: 'token_expiring', message: 'the token expires soon and no getToken was given' });
      return;
    }
    try {
      const token = await this._currentToken(true);
      this._send({ type: 'refresh_token', token });
    } catch (error) {
      this._emit('error', { code: 'token_unavailable', message: String(error && error.message || error) });
    }
  }

  async _currentToken(fresh = false) {
    if (this.options.getToken && (fresh || !this._token)) {
      const token = await this.options.getToken();
      if (!token) throw new Error('getToken returned no token');
      this._token = token;
    }
    return this._token;
  }

  /** Use another token from now on (e.g. after the user signed in again). @param {string} token */
  setToken(token) {
    this._token = token;
    if (this.state === 'unauthorized') this.connect();
    else this._send({ type: 'refresh_token', token });
  }

  // -- channels ------------------------------------------------------------------------------

  _onSubscribed(channels) {
    const pending = this._pendingSubscriptions.shift();
    if (pending) pending.resolve(channels);
    this._emit('subscribed', { channels });
  }

  _channelRequest(type, channels) {
    const names = [...channels];
    const all = this._channels ? new Set(this._channels) : null;
    if (type === 'subscribe') {
      this._channels = names.includes('all') ? null : [...new Set([...(all || []), ...names])];
    } else if (names.includes('all')) {
      this._channels = [];
    } else if (all) {
      this._channels = [...all].filter((name) => !names.includes(name));
    } else {
      return this._unsubscribeFromAll(names);
    }
    return this._sendChannels(type, names);
  }

  async _unsubscribeFromAll(names) {
    const everyType = Object.keys(await this.getSettings());
    this._channels = everyType.filter((name) => !names.includes(name));
    return this._sendChannels('unsubscribe', names);
  }

  _sendChannels(type, channels) {
    return new Promise((resolve, reject) => {
      if (!this._send({ type, channels })) {
        // Applied when the socket (re)connects.
        resolve(this._channels || ['all']);
        return;
      }
      this._pendingSubscriptions.push({ resolve, reject });
    });
  }

  /**
   * Receive these notification types too ('all' for every type). Kept across reconnections.
   * Resolves with the channels now active, as the server answered.
   * @param {string[]} channels
   * @returns {Promise<string[]>}
   */
  subscribe(channels) {
    return this._channelRequest('subscribe', channels);
  }

  /**
   * Stop receiving these types ('all' for every type). Kept across reconnections.
   * @param {string[]} channels
   * @returns {Promise<string[]>}
   */
  unsubscribe(channels) {
    return this._channelRequest('unsubscribe', channels);
  }

  // -- REST ------------------------------------------------------------------------------------

  /**
   * One REST call with the current token; on 401 with `getToken`, one retry with a fresh token.
   * @param {string} method
   * @param {string} path under the base URL, e.g. "/api/notifications"
   * @param {unknown} [body]
   * @returns {Promise<any>} the parsed JSON answer
   */
  async request(method, path, body) {
    let response = await this._call(method, path, body, false);
    if (response.status === 401 && this.options.getToken) {
      response = await this._call(method, path, body, true);
    }
    const text = await response.text();
    const value = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = (value && value.error) || {};
      const retryAfter = response.headers.get('Retry-After');
      throw new NotifyApiError(response.status, error.code || 'http_error',
        error.message || `HTTP ${response.status}`, retryAfter === null ? null : Number(retryAfter),
        (value && value.escalation) || null);
    }
    return value;
  }

  async _call(method, path, body, freshToken) {
    const headers = { Authorization: `Bearer ${await this._currentToken(freshToken)}` };
    const init = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return this._fetch(`${this.baseUrl}${path}`, init);
  }

  /**
   * A page of history, newest first.
   * @param {{limit?: number, offset?: number, unreadOnly?: boolean}} [options]
   * @returns {Promise<HistoryPage>}
   */
  async history({ limit = 50, offset = 0, unreadOnly = false } = {}) {
    const query = new URLSearchParams({ limit: String(limit), offset: String(offset), unreadOnly: String(unreadOnly) });
    const page = await this.request('GET', `/api/notifications?${query}`);
    // The newest notification is where a reconnection resumes from when nothing has set that
    // yet: an app that shows its first page before the anchor's own request answers (the
    // server may be gone by then) misses nothing created while the socket is down.
    if (!this.lastId && offset === 0 && !unreadOnly && page.notifications && page.notifications.length) {
      this.lastId = page.notifications[0].id;
    }
    return page;
  }

  /** @param {string} id @returns {Promise<Notification>} */
  getNotification(id) {
    return this.request('GET', `/api/notifications/${encodeURIComponent(id)}`);
  }

  /** Every tab of the user hears `read` and a new `unread_count`. @param {string} id */
  async markRead(id) {
    await this.request('POST', `/api/notifications/${encodeURIComponent(id)}/read`);
  }

  async markAllRead() {
    await this.request('POST', '/api/notifications/read-all');
  }

  /** @param {string} id */
  async deleteNotification(id) {
    await this.request('DELETE', `/api/notifications/${encodeURIComponent(id)}`);
  }

  // -- escalations ---------------------------------------------------------------------------

  /**
   * Take the escalation of one of the user's notifications. Resolves with the escalation as
   * it is now (every recipient's sockets hear `escalation`). Rejects with a NotifyApiError:
   * 409 `already_acknowledged` (someone else took it; the message names who, and
   * `error.escalation.acknowledgedBy` says it too) or `escalation_resolved`, 404 when the
   * notification is not the user's or belongs to no escalation.
   * @param {string} notificationId
   * @returns {Promise<Escalation>}
   */
  async ack(notificationId) {
    const answer = await this.request('POST', `/api/notifications/${encodeURIComponent(notificationId)}/ack`);
    return answer.escalation;
  }

  /**
   * Report notifications the user has on screen (recorded in their escalations' timelines as
   * `seen`; read state does not change; ids of other notifications are ignored). Over the
   * socket when it is open, else over REST.
   * @param {string[]} notificationIds
   * @returns {Promise<void>}
   */
  async markSeen(notificationIds) {
    const ids = [...new Set(notificationIds)];
    for (let start = 0; start < ids.length; start += SEEN_BATCH) {
      const batch = ids.slice(start, start + SEEN_BATCH);
      if (!this._send({ type: 'seen', notificationIds: batch })) {
        await this.request('POST', '/api/notifications/seen', { ids: batch });
      }
    }
  }

  /**
   * The escalations the user received, newest first: the open ones by default; each with
   * `notificationId`, the user's newest notification of it (what `ack` takes).
   * @param {{state?: EscalationFilter}} [options]
   * @returns {Promise<ListedEscalation[]>}
   */
  async escalations({ state = 'open' } = {}) {
    const query = new URLSearchParams({ state });
    return (await this.request('GET', `/api/escalations?${query}`)).escalations;
  }

  /** The announcements still active, newest first. @returns {Promise<Broadcast[]>} */
  async getBroadcasts() {
    return (await this.request('GET', '/api/broadcasts')).broadcasts;
  }

  /** @returns {Promise<UnreadCount>} */
  getUnreadCount() {
    return this.request('GET', '/api/notifications/unread-count');
  }

  /** Every type with `{enabled, push}`. @returns {Promise<ChannelSettings>} */
  async getSettings() {
    return (await this.request('GET', '/api/notifications/settings')).channels;
  }

  /**
   * Change some types; answers every type as now stored.
   * @param {Record<string, {enabled?: boolean, push?: boolean}>} channels
   * @returns {Promise<ChannelSettings>}
   */
  async updateSettings(channels) {
    return (await this.request('PUT', '/api/notifications/settings', { channels })).channels;
  }

  /**
   * The VAPID key for `pushManager.subscribe`, or null when push is not configured.
   * @returns {Promise<string|null>}
   */
  async getVapidPublicKey() {
    try {
      return (await this.request('GET', '/api/notifications/vapid-public-key')).publicKey;
    } catch (error) {
      if (error instanceof NotifyApiError && error.status === 404) return null;
      throw error;
    }
  }

  /**
   * Register this browser for web push. An endpoint registered to another user is refused with
   * a NotifyApiError of status 409 and code `push_subscription_taken`: unsubscribe the browser's
   * subscription and subscribe again (a new endpoint), then save that one.
   * @param {PushSubscription|{endpoint: string, keys: {p256dh: string, auth: string}}} subscription
   */
  async savePushSubscription(subscription) {
    const json = 'toJSON' in subscription ? subscription.toJSON() : subscription;
    await this.request('POST', '/api/notifications/push-subscription', json);
  }

  /** @param {string} endpoint */
  async removePushSubscription(endpoint) {
    await this.request('DELETE', '/api/notifications/push-subscription', { endpoint });
  }
}

export default NotifyClient;
