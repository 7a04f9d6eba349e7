// The notification center page. Plain DOM, no framework, no build step. Every text from the
// server is inserted with textContent (never innerHTML): a debtor's name is data, not markup.

import { NotifyClient } from '/client/mojavox-notify.js';

const PAGE_SIZE = 30;
const TOKEN_KEY = 'mojavox.notify.token';
const PRIORITIES = ['critical', 'high', 'medium', 'low'];
const TOAST_PRIORITIES = new Set(['high', 'critical']);
const HIGH_TOAST_MS = 8000;
/** How long a resolved escalation stays pinned (its outcome shown) before it leaves. */
const RESOLVED_PINNED_MS = 60000;
/** An escalation never goes back: a late answer must not undo a newer change. */
const ESCALATION_ORDER = { open: 0, unanswered: 1, acknowledged: 2, resolved: 3 };
const SETTLED = new Set(['acknowledged', 'resolved']);
const MAX_TOASTS = 5;
const TYPE_LABELS = {
  payment_received: 'Payment received',
  call_completed: 'Call completed',
  call_escalation: 'Call escalation',
  high_value_call: 'High-value call',
  agent_alert: 'Agent alert',
  campaign_milestone: 'Campaign milestone',
  system_alert: 'System alert',
};

const $ = (id) => document.getElementById(id);

/** Everything the page knows; the DOM is drawn from it. */
const view = {
  client: null,
  /** @type {Map<string, {payload: object, element: HTMLElement}>} */
  items: new Map(),
  hasMore: true,
  loading: false,
  /** History is read only once the socket is live (see the 'connected' listener). */
  live: false,
  unreadOnly: false,
  settings: null,
  pushRegistration: null,
  /** The signed-in user's id (the token's `sub`), to say "Taken by you". */
  user: null,
  /** @type {Map<string, {escalation: object, notification: object|null, element: HTMLElement|null}>}
   * by escalation id: the newest state heard, and the pinned card once a notification of it is known. */
  escalations: new Map(),
  /** Notification ids already reported `seen` by this page. */
  seen: new Set(),
};

// -- start-up and sign-in ------------------------------------------------------------------------

function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token) {
    // Out of the address bar (and so out of bookmarks, screenshots and the history).
    history.replaceState(null, '', location.pathname + location.search);
  }
  return token;
}

function start() {
  $('signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token-field').value.trim();
    if (token) signIn(token);
  });
  $('sign-out').addEventListener('click', signOut);
  if ('serviceWorker' in navigator) navigator.serviceWorker.addEventListener('message', answerServiceWorker);
  $('mark-all').addEventListener('click', () => act(() => view.client.markAllRead()));
  $('unread-only').addEventListener('change', (event) => {
    view.unreadOnly = event.target.checked;
    reloadList();
  });
  $('settings-toggle').addEventListener('click', toggleSettings);
  $('push-toggle').addEventListener('click', togglePush);
  $('bell').addEventListener('click', () => window.scrollTo({ top: 0, behavior: 'smooth' }));
  $('retry-now').addEventListener('click', () => view.client && view.client.reconnectNow());
  window.addEventListener('online', () => view.client && view.client.reconnectNow());
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) loadMore();
  }, { rootMargin: '400px' }).observe($('list-end'));

  const token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showSignIn('');
}

function showSignIn(message) {
  $('signin').hidden = false;
  $('center').hidden = true;
  $('signin-error').textContent = message;
  $('token-field').focus();
}

/** This deployment's socket path (server.ws_path) and where relative action URLs lead
 * (web.action_base_url), asked once. */
let config = null;

async function pageConfig() {
  if (!config) {
    const response = await fetch('/config.json');
    config = response.ok ? await response.json() : {};
  }
  return config;
}

async function signIn(token) {
  if (view.client) view.client.close();
  view.client = null;
  view.live = false;
  view.user = subjectOf(token);
  sessionStorage.setItem(TOKEN_KEY, token);
  $('signin').hidden = true;
  $('center').hidden = false;
  clearList();
  clearEscalations();
  $('announcements').replaceChildren(); // the new client shows the active ones again
  let wsPath;
  try {
    ({ wsPath } = await pageConfig());
  } catch {
    wsPath = undefined; // the server is down: the client's default path, retried with backoff
    config = null;
  }
  const client = new NotifyClient({ url: location.origin, token, wsPath });
  view.client = client;
  let firstConnection = true;
  client.on('state', renderConnection);
  client.on('connected', ({ tenant }) => {
    $('banner').hidden = true;
    // Shown beside the title when the token names a call center (not the default tenant).
    $('tenant').textContent = tenant;
    $('tenant').hidden = !tenant || tenant === 'default';
    if (firstConnection) {
      // After the socket is live, so nothing created in between is missed: a notification is
      // either delivered live or already in the first page (shown once either way).
      firstConnection = false;
      view.live = true;
      loadMore();
      loadSettings();
      setUpPush();
    } else {
      refreshEscalations(client);
    }
  });
  client.on('notification', (payload) => {
    if (view.unreadOnly && payload.read) return;
    upsert(payload);
    if (TOAST_PRIORITIES.has(payload.priority) && !payload.read) alertOf(payload);
  });
  client.on('escalation', changedEscalation);
  client.on('broadcast', showAnnouncement);
  client.on('unread_count', renderUnread);
  client.on('read', ({ notificationId, all }) => markedRead(all ? null : notificationId));
  client.on('deleted', ({ notificationId }) => removeItem(notificationId));
  client.on('resync', reloadList);
  // More were missed than the server replays (websocket.resume_limit): redraw from history.
  client.on('resumed', ({ hasMore }) => { if (hasMore) reloadList(); });
  client.on('error', ({ code, message }) => {
    if (code === 'token_expiring') showBanner('Your session ends in 30 seconds: sign in again with a new token.');
    else if (code !== 'anchor_failed') console.warn('MOJAVOX Notify:', code, message);
  });
  client.on('state', ({ state, code }) => {
    if (state !== 'unauthorized') return;
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(code === 4003 ? 'Your session ended (the token expired): sign in again.'
      : 'That token was refused (invalid or expired).');
  });
  client.connect().catch(() => {}); // the 'unauthorized' state above says why
  tellServiceWorker(token);
}

/** Leaves nothing of the user behind on a shared machine: the browser's push subscription is
 * dropped here and on the server (while the token still allows that), then the token is
 * forgotten here and in the service worker. */
async function signOut() {
  const button = $('sign-out');
  button.disabled = true;
  const client = view.client;
  try {
    await unsubscribePush(client);
  } catch (error) {
    console.warn('MOJAVOX Notify: could not turn browser push off:', error);
  }
  if (client) client.close();
  view.client = null;
  sessionStorage.removeItem(TOKEN_KEY);
  await tellServiceWorker(null);
  clearList();
  clearEscalations();
  $('announcements').replaceChildren();
  renderUnread({ count: 0, byPriority: {} });
  showSignIn('');
  button.disabled = false;
}

function showBanner(text) {
  $('banner').textContent = text;
  $('banner').hidden = false;
}

async function act(action) {
  try {
    await action();
  } catch (error) {
    showBanner(`That did not work: ${error.message}`);
  }
}

// -- connection indicator ------------------------------------------------------------------------

let countdown = null;

function renderConnection({ state, delayMs, attempt }) {
  clearInterval(countdown);
  const box = $('connection');
  box.dataset.state = state;
  $('retry-now').hidden = state !== 'reconnecting';
  const text = $('connection-text');
  if (state === 'open') text.textContent = 'Live';
  else if (state === 'connecting') text.textContent = 'Connecting…';
  else if (state === 'unauthorized') text.textContent = 'Signed out: token refused';
  else if (state === 'closed') text.textContent = 'Not connected';
  else if (state === 'reconnecting' && delayMs !== undefined) {
    const until = Date.now() + delayMs;
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      text.textContent = `Connection lost: retrying in ${seconds} s (attempt ${attempt})`;
    };
    tick();
    countdown = setInterval(tick, 500);
  } else if (state === 'reconnecting') text.textContent = `Reconnecting… (attempt ${attempt})`;
}

// -- the unread badge ------------------------------------------------------------------------------

function renderUnread({ count, byPriority }) {
  const badge = $('badge');
  badge.textContent = count > 99 ? '99+' : String(count);
  badge.hidden = count === 0;
  badge.dataset.count = String(count);
  badge.dataset.priority = PRIORITIES.find((priority) => (byPriority[priority] || 0) > 0) || 'none';
  $('bell').setAttribute('aria-label', `${count} unread notifications`);
  for (const chip of $('by-priority').children) {
    const n = byPriority[chip.dataset.priority] || 0;
    chip.querySelector('.count').textContent = String(n);
    chip.classList.toggle('zero', n === 0);
  }
  document.title = count ? `(${count}) MOJAVOX Notify` : 'MOJAVOX Notify';
}

// -- the list --------------------------------------------------------------------------------------

function clearList() {
  view.items.clear();
  $('list').replaceChildren();
  view.hasMore = true;
  view.loading = false;
  $('list-end').textContent = 'Loading…';
}

function reloadList() {
  clearList();
  loadMore();
}

async function loadMore() {
  const client = view.client;
  if (!client || !view.live || view.loading || !view.hasMore) return;
  view.loading = true;
  try {
    // The list is the newest-first prefix of the user's notifications; asking from a few
    // before its end (and skipping what is shown) tolerates one deleted meanwhile elsewhere.
    const offset = Math.max(0, view.items.size - 3);
    const page = await client.history({ limit: PAGE_SIZE, offset, unreadOnly: view.unreadOnly });
    if (client !== view.client) return;
    for (const payload of page.notifications) upsert(payload);
    view.hasMore = page.hasMore;
    renderListEnd();
  } catch (error) {
    $('list-end').textContent = `Could not load notifications: ${error.message}`;
  } finally {
    view.loading = false;
  }
  if (view.hasMore && isVisible($('list-end'))) loadMore();
}

function renderListEnd() {
  if (view.hasMore) $('list-end').textContent = 'Loading…';
  else if (view.items.size) $('list-end').textContent = 'That is all.';
  else $('list-end').textContent = view.unreadOnly ? 'Nothing unread.' : 'No notifications yet.';
}

function isVisible(element) {
  const box = element.getBoundingClientRect();
  return box.top < window.innerHeight + 400;
}

/** Newest first, by timestamp then id (ids grow with time). */
function isNewer(a, b) {
  if (a.timestamp !== b.timestamp) return a.timestamp > b.timestamp;
  return a.id > b.id;
}

function upsert(payload) {
  if (payload.escalation) pinEscalation(payload);
  const known = view.items.get(payload.id);
  if (known) {
    if (payload.read && !known.payload.read) setRead(known, true);
    return;
  }
  const element = renderItem(payload);
  const entry = { payload, element };
  view.items.set(payload.id, entry);
  const list = $('list');
  let before = null;
  for (const child of list.children) {
    if (isNewer(payload, view.items.get(child.dataset.id).payload)) {
      before = child;
      break;
    }
  }
  list.insertBefore(element, before);
  if (!view.loading) renderListEnd();
}

function renderItem(payload) {
  const item = document.createElement('li');
  item.className = `notification priority-${payload.priority}`;
  item.dataset.id = payload.id;
  item.dataset.priority = payload.priority;

  const body = element('div', 'body');
  const meta = element('div', 'meta');
  meta.append(element('span', 'priority', payload.priority), element('span', 'type', typeLabel(payload.type)));
  const time = element('time', 'time', relativeTime(payload.timestamp));
  time.dateTime = payload.timestamp;
  time.title = new Date(payload.timestamp).toLocaleString();
  meta.append(time);
  body.append(meta, element('h3', 'title', payload.title), element('p', 'message', payload.message));

  const details = dataDetails(payload.data);
  if (details) body.append(details);

  const actions = element('div', 'actions');
  const link = actionLink(payload.actionUrl, payload.id);
  if (link) actions.append(link);
  const markRead = element('button', 'mark-read', 'Mark read');
  markRead.type = 'button';
  markRead.addEventListener('click', () => act(() => view.client.markRead(payload.id)));
  const remove = element('button', 'delete link', 'Delete');
  remove.type = 'button';
  remove.addEventListener('click', () => act(() => view.client.deleteNotification(payload.id)));
  actions.append(markRead, remove);
  item.append(body, actions);
  setRead({ payload, element: item }, payload.read);
  return item;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Who it was for: the reader knows. */
const HIDDEN_DATA = new Set(['userId', 'userIds', 'supervisorId']);

/** The notification's data as "key: value" pairs (text only): call, agent and account ids. */
function dataDetails(data) {
  const entries = Object.entries(data || {})
    .filter(([key, value]) => !HIDDEN_DATA.has(key) && value !== null && typeof value !== 'object');
  if (!entries.length) return null;
  const list = element('dl', 'data');
  for (const [key, value] of entries.slice(0, 12)) {
    list.append(element('dt', '', key), element('dd', '', String(value)));
  }
  return list;
}

/** A link for a relative path (on the dashboard, web.action_base_url) or an http(s) URL;
 * anything else (javascript:, data:) is not one. Opening it marks the notification read. */
function actionLink(actionUrl, notificationId) {
  if (typeof actionUrl !== 'string' || !actionUrl) return null;
  let url;
  try {
    url = new URL(actionUrl, (config && config.actionBaseUrl) || location.origin);
  } catch {
    return null;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return null;
  const link = element('a', 'open', 'Open');
  link.href = url.href;
  if (url.origin !== location.origin) {
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
  }
  link.addEventListener('click', () => {
    if (!notificationId) return; // an announcement: nothing to mark read
    const entry = view.items.get(notificationId);
    if (view.client && (!entry || !entry.payload.read)) view.client.markRead(notificationId).catch(() => {});
  });
  return link;
}

// -- escalations: pinned above the list until someone takes them -----------------------------------

/** The token's `sub` (not verified here: the server does that), or null. */
function subjectOf(token) {
  try {
    const claims = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(claims)).sub || null;
  } catch {
    return null;
  }
}

function clearEscalations() {
  view.escalations.clear();
  view.seen.clear();
  $('escalations').replaceChildren();
}

/** Whether `next` is newer than `known` (states only move forward, steps only up). */
function isLater(next, known) {
  if (!known) return true;
  const order = ESCALATION_ORDER[next.state] - ESCALATION_ORDER[known.state];
  return order > 0 || (order === 0 && next.step >= known.step);
}

/** A notification of an escalation (live or from history): its card, unless it was resolved
 * before this page heard of it. */
function pinEscalation(payload) {
  const id = payload.escalation.id;
  let entry = view.escalations.get(id);
  if (!entry) {
    entry = { escalation: payload.escalation, notification: null, element: null };
    view.escalations.set(id, entry);
  } else if (isLater(payload.escalation, entry.escalation)) {
    entry.escalation = payload.escalation;
  }
  // The newest notification of it is the one to take it by (a later step's, for instance).
  if (!entry.notification || isNewer(payload, entry.notification)) entry.notification = payload;
  if (!entry.element) {
    if (!pinnable(entry.escalation)) return;
    entry.element = renderEscalation(entry);
    placeEscalation(entry);
    watchSeen(entry);
  }
  renderEscalationState(entry);
  reportSeen();
}

/** Pinned when it arrives: waiting for someone, or taken by this user. Once pinned, a card
 * shows every change until it is resolved (then for a minute) or dismissed. */
function pinnable(escalation) {
  return escalation.state === 'open' || escalation.state === 'unanswered'
    || (escalation.state === 'acknowledged' && escalation.acknowledgedBy === view.user);
}

/** Newest first, as the list. */
function placeEscalation(entry) {
  const box = $('escalations');
  const before = [...box.children].find((card) => {
    const other = view.escalations.get(card.dataset.escalationId);
    return other && other.notification && isNewer(entry.notification, other.notification);
  });
  box.insertBefore(entry.element, before || null);
}

/** After a reconnection: the changes missed while the socket was down (a reconnection replays
 * notifications, not changes), unresolved and resolved alike, newest first. */
async function refreshEscalations(client) {
  try {
    const lists = await Promise.all([client.escalations({ state: 'unresolved' }), client.escalations({ state: 'resolved' })]);
    if (client !== view.client) return;
    for (const escalation of lists.flat()) {
      if (view.escalations.has(escalation.id)) changedEscalation(escalation);
    }
  } catch (error) {
    console.warn('MOJAVOX Notify: could not refresh the escalations:', error);
  }
}

/** An `escalation` frame, the answer to "Take it", or what a reconnection read. */
function changedEscalation(escalation) {
  const entry = view.escalations.get(escalation.id);
  if (entry && !isLater(escalation, entry.escalation)) return;
  if (!entry) {
    // Heard before any notification of it (or of one this page does not list): kept, so the
    // card shows this state if its notification arrives.
    view.escalations.set(escalation.id, { escalation, notification: null, element: null });
    return;
  }
  entry.escalation = escalation;
  if (entry.notification) entry.notification.escalation = escalation;
  if (SETTLED.has(escalation.state)) {
    closeSystemNotifications(escalation.id);
    if (entry.notification) dismissToast(entry.notification.id);
  }
  if (entry.element) renderEscalationState(entry);
}

function renderEscalation(entry) {
  const { notification } = entry;
  const card = element('li', 'escalation');
  card.dataset.escalationId = entry.escalation.id;
  card.dataset.notificationId = notification.id;
  const text = element('div', 'escalation-text');
  text.append(element('strong', 'title', notification.title), element('span', 'message', notification.message),
    element('span', 'state'));
  const actions = element('div', 'escalation-actions');
  const take = element('button', 'take', 'Take it');
  take.type = 'button';
  take.addEventListener('click', () => takeEscalation(entry, take));
  actions.append(take);
  const link = actionLink(notification.actionUrl, notification.id);
  if (link) actions.append(link);
  const dismiss = element('button', 'dismiss link', 'Dismiss');
  dismiss.type = 'button';
  dismiss.addEventListener('click', () => unpin(entry));
  actions.append(dismiss);
  card.append(text, actions);
  return card;
}

async function takeEscalation(entry, button) {
  button.disabled = true;
  try {
    changedEscalation(await view.client.ack(entry.notification.id));
  } catch (error) {
    // Someone else was quicker, or the call ended: the answer says how it is now.
    if (error.escalation) changedEscalation(error.escalation);
    else showBanner(`That did not work: ${error.message}`);
  } finally {
    button.disabled = false;
    renderEscalationState(entry);
  }
}

/** "12 s", "3 min 5 s", "1 h 2 min". */
function duration(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** What the card says, from the escalation as it is now. The waiting time counts from when
 * the escalation was opened (`createdAt`; the notification's timestamp from an older server). */
function escalationText(escalation, notification) {
  const told = Date.parse(escalation.createdAt || notification.timestamp);
  switch (escalation.state) {
    case 'acknowledged': {
      if (escalation.acknowledgedBy === view.user) return 'Taken by you';
      const after = escalation.acknowledgedAt ? ` after ${duration(Date.parse(escalation.acknowledgedAt) - told)}` : '';
      return `Taken by ${escalation.acknowledgedBy}${after}`;
    }
    case 'resolved': return escalation.resolution ? `Resolved: ${escalation.resolution}` : 'Resolved';
    case 'unanswered': return `Unanswered: nobody took it (${duration(Date.now() - told)})`;
    default: return `Waiting ${duration(Date.now() - told)}`;
  }
}

function renderEscalationState(entry) {
  const { escalation, notification, element: card } = entry;
  if (!card || !notification) return;
  card.dataset.state = escalation.state;
  card.dataset.notificationId = notification.id;
  card.dataset.mine = String(escalation.state === 'acknowledged' && escalation.acknowledgedBy === view.user);
  card.querySelector('.state').textContent = escalationText(escalation, notification);
  card.querySelector('.take').hidden = SETTLED.has(escalation.state);
  if (escalation.state === 'resolved' && !entry.leaving) {
    entry.leaving = setTimeout(() => unpin(entry), RESOLVED_PINNED_MS);
  }
}

function unpin(entry) {
  clearTimeout(entry.leaving);
  if (entry.element) entry.element.remove();
  entry.element = null;
  if (entry.visibility) entry.visibility.disconnect();
}

setInterval(() => {
  for (const entry of view.escalations.values()) {
    if (entry.element && !SETTLED.has(entry.escalation.state)) renderEscalationState(entry);
  }
}, 1000);

// -- seen: what is on screen while the tab is visible ----------------------------------------------

/** Each card's notification is reported `seen` once, the first time the card is on screen
 * while the tab is visible (the escalation's timeline records when the user could see it). */
function watchSeen(entry) {
  entry.visibility = new IntersectionObserver((entries) => {
    entry.onScreen = entries.some((seen) => seen.isIntersecting);
    reportSeen();
  });
  entry.visibility.observe(entry.element);
}

function reportSeen() {
  if (document.visibilityState !== 'visible' || !view.client) return;
  const ids = [];
  for (const entry of view.escalations.values()) {
    const id = entry.notification && entry.notification.id;
    if (entry.element && entry.onScreen && id && !view.seen.has(id)) {
      view.seen.add(id);
      ids.push(id);
    }
  }
  if (ids.length) view.client.markSeen(ids).catch(() => ids.forEach((id) => view.seen.delete(id)));
}

document.addEventListener('visibilitychange', reportSeen);

// -- announcements (broadcasts to every user) ------------------------------------------------------

/** Shown above the list until it expires or is dismissed; the client passes each one once. */
function showAnnouncement(broadcast) {
  const item = element('li', `announcement priority-${broadcast.priority}`);
  item.dataset.id = broadcast.id;
  item.dataset.priority = broadcast.priority;
  const text = element('div', 'announcement-text');
  text.append(element('strong', 'title', broadcast.title), element('span', 'message', broadcast.message));
  const actions = element('div', 'announcement-actions');
  const link = actionLink(broadcast.actionUrl, null);
  if (link) actions.append(link);
  const dismiss = element('button', 'dismiss link', 'Dismiss');
  dismiss.type = 'button';
  dismiss.addEventListener('click', () => item.remove());
  actions.append(dismiss);
  item.append(text, actions);
  $('announcements').append(item);
  const remaining = Date.parse(broadcast.expiresAt) - Date.now();
  setTimeout(() => item.remove(), Math.max(0, Math.min(remaining, 2 ** 31 - 1)));
}

function typeLabel(type) {
  return TYPE_LABELS[type] || type.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
}

function relativeTime(timestamp) {
  const seconds = Math.round((Date.now() - Date.parse(timestamp)) / 1000);
  if (seconds < 45) return 'just now';
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(timestamp).toLocaleDateString();
}

setInterval(() => {
  for (const { payload, element: item } of view.items.values()) {
    item.querySelector('time').textContent = relativeTime(payload.timestamp);
  }
}, 30000);

function setRead(entry, read) {
  entry.payload.read = read;
  entry.element.classList.toggle('unread', !read);
  entry.element.querySelector('.mark-read').hidden = read;
}

function markedRead(notificationId) {
  const entries = notificationId ? [view.items.get(notificationId)].filter(Boolean) : [...view.items.values()];
  for (const entry of entries) {
    if (view.unreadOnly) removeItem(entry.payload.id);
    else setRead(entry, true);
    dismissToast(entry.payload.id);
  }
}

function removeItem(notificationId) {
  const entry = view.items.get(notificationId);
  if (!entry) return;
  entry.element.remove();
  view.items.delete(notificationId);
  dismissToast(notificationId);
  if (!view.loading) renderListEnd();
}

// -- toasts for high and critical ------------------------------------------------------------------

function alertOf(payload) {
  if (payload.escalation && SETTLED.has(payload.escalation.state)) return; // someone has it
  showToast(payload);
  if (document.hidden) showSystemNotification(payload);
}

/** The tag of a notification on screen, the same as a push of it carries: one replaces the
 * other, never both (an escalation's, across its steps, is the escalation's). */
function systemTag(payload) {
  return payload.escalation ? `escalation-${payload.escalation.id}` : `mojavox-${payload.id}`;
}

/** While the tab is hidden, a high or critical notification also shows on the desktop,
 * through the service worker (push or not), when the user has allowed notifications. */
async function showSystemNotification(payload) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  const critical = payload.priority === 'critical';
  const options = {
    body: payload.message,
    tag: systemTag(payload),
    icon: '/icon.svg',
    data: { id: payload.id, type: payload.type, priority: payload.priority,
      actionUrl: payload.actionUrl || undefined },
    requireInteraction: critical,
    renotify: critical,
  };
  try {
    const registration = 'serviceWorker' in navigator ? await navigator.serviceWorker.getRegistration('/') : null;
    if (registration && registration.active) await registration.showNotification(payload.title, options);
    else new Notification(payload.title, options);
  } catch (error) {
    console.warn('MOJAVOX Notify: could not show a system notification:', error);
  }
}

/** Take an escalation's notification off the desktop once someone has it (this tab says so). */
async function closeSystemNotifications(escalationId) {
  if (!('serviceWorker' in navigator)) return;
  try {
    const registration = await navigator.serviceWorker.getRegistration('/');
    if (!registration) return;
    for (const shown of await registration.getNotifications({ tag: `escalation-${escalationId}` })) shown.close();
  } catch {
    // Nothing on screen, or the browser keeps no list: nothing to close.
  }
}

function showToast(payload) {
  const box = $('toasts');
  while (box.children.length >= MAX_TOASTS) box.firstElementChild.remove();
  const toast = element('div', `toast priority-${payload.priority}`);
  toast.dataset.id = payload.id;
  toast.setAttribute('role', payload.priority === 'critical' ? 'alertdialog' : 'status');
  const text = element('div', 'toast-text');
  text.append(element('strong', 'title', payload.title), element('span', 'message', payload.message));
  const buttons = element('div', 'toast-actions');
  const link = actionLink(payload.actionUrl, payload.id);
  if (link) buttons.append(link);
  const read = element('button', 'mark-read', 'Mark read');
  read.type = 'button';
  read.addEventListener('click', () => act(() => view.client.markRead(payload.id)));
  const close = element('button', 'dismiss link', 'Dismiss');
  close.type = 'button';
  close.addEventListener('click', () => toast.remove());
  buttons.append(read, close);
  toast.append(text, buttons);
  box.append(toast);
  // An escalation stays until someone acts on it; a high one fades after a while.
  if (payload.priority !== 'critical') setTimeout(() => toast.remove(), HIGH_TOAST_MS);
}

function dismissToast(notificationId) {
  for (const toast of $('toasts').querySelectorAll('.toast')) {
    if (toast.dataset.id === notificationId) toast.remove();
  }
}

// -- settings ----------------------------------------------------------------------------------------

function toggleSettings() {
  const panel = $('settings');
  panel.hidden = !panel.hidden;
  $('settings-toggle').setAttribute('aria-expanded', String(!panel.hidden));
  if (!panel.hidden) loadSettings();
}

async function loadSettings() {
  try {
    renderSettings(await view.client.getSettings());
  } catch (error) {
    $('settings-error').textContent = `Could not load settings: ${error.message}`;
  }
}

function renderSettings(channels) {
  view.settings = channels;
  $('settings-error').textContent = '';
  const rows = Object.keys(channels).sort().map((type) => {
    const row = element('tr');
    row.dataset.type = type;
    row.append(element('th', '', typeLabel(type)));
    for (const field of ['enabled', 'push']) {
      const cell = element('td');
      const box = element('input');
      box.type = 'checkbox';
      box.checked = channels[type][field];
      box.dataset.type = type;
      box.dataset.field = field;
      box.setAttribute('aria-label', `${typeLabel(type)}: ${field === 'enabled' ? 'receive' : 'browser push'}`);
      box.addEventListener('change', () => changeSetting(box));
      cell.append(box);
      row.append(cell);
    }
    return row;
  });
  $('settings-rows').replaceChildren(...rows);
}

async function changeSetting(box) {
  box.disabled = true;
  try {
    renderSettings(await view.client.updateSettings({ [box.dataset.type]: { [box.dataset.field]: box.checked } }));
  } catch (error) {
    box.checked = !box.checked;
    box.disabled = false;
    $('settings-error').textContent = `Not saved: ${error.message}`;
  }
}

// -- browser push ------------------------------------------------------------------------------------

function pushSupported() {
  return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
}

/** The service worker asks for the token when it has none in memory (the browser stopped it
 * while idle): the signed-in page's, or null. */
function answerServiceWorker(event) {
  if (!event.data || event.data.type !== 'token-request' || !event.ports[0]) return;
  event.ports[0].postMessage({ token: view.client ? sessionStorage.getItem(TOKEN_KEY) : null });
}

async function tellServiceWorker(token) {
  if (!('serviceWorker' in navigator)) return;
  try {
    const registration = await navigator.serviceWorker.register('/sw.js');
    view.pushRegistration = registration;
    const worker = registration.active || registration.waiting || registration.installing;
    // The worker needs the token only to fetch a notification when the push is minimal.
    const send = (target) => target && target.postMessage({ type: 'token', token });
    if (registration.active) send(registration.active);
    else navigator.serviceWorker.ready.then((ready) => send(ready.active));
    return worker;
  } catch (error) {
    console.warn('MOJAVOX Notify: service worker not registered:', error);
    return null;
  }
}

async function setUpPush() {
  const button = $('push-toggle');
  const status = $('push-status');
  if (!pushSupported()) {
    status.textContent = 'This browser cannot receive push notifications.';
    return;
  }
  let key;
  try {
    key = await view.client.getVapidPublicKey();
  } catch (error) {
    status.textContent = `Push unavailable: ${error.message}`;
    return;
  }
  if (!key) {
    status.textContent = 'Push is not configured on this server.';
    return;
  }
  view.vapidKey = key;
  const registration = await navigator.serviceWorker.ready;
  const existing = await registration.pushManager.getSubscription();
  let problem = null;
  if (existing) {
    // This browser may be registered for someone who used it before and did not sign out.
    try {
      await registerPush(registration, existing);
    } catch (error) {
      problem = `Push could not be renewed: ${error.message}`;
    }
  }
  renderPush(Boolean(await registration.pushManager.getSubscription()));
  if (problem) status.textContent = problem;
  button.disabled = false;
}

/** Register the browser's subscription for the signed-in user. One whose endpoint the server
 * has for another user is refused (409 push_subscription_taken): the browser then drops it and
 * subscribes again, which gives it a new endpoint of its own. */
async function registerPush(registration, subscription) {
  try {
    await view.client.savePushSubscription(subscription);
    return;
  } catch (error) {
    if (error.code !== 'push_subscription_taken') throw error;
  }
  await subscription.unsubscribe();
  await view.client.savePushSubscription(await subscribePush(registration));
}

function subscribePush(registration) {
  return registration.pushManager.subscribe({
    userVisibleOnly: true, applicationServerKey: base64UrlToBytes(view.vapidKey),
  });
}

/** The server forgets this browser's subscription (it may already have: a 404 is fine) and
 * the browser drops it, so that no push of this user reaches whoever uses the browser next. */
async function unsubscribePush(client) {
  if (!pushSupported()) return;
  const registration = await navigator.serviceWorker.getRegistration('/');
  const subscription = registration ? await registration.pushManager.getSubscription() : null;
  if (!subscription) return;
  try {
    if (client) await client.removePushSubscription(subscription.endpoint);
  } catch (error) {
    if (error.status !== 404) console.warn('MOJAVOX Notify: the server keeps this browser subscribed:', error);
  } finally {
    await subscription.unsubscribe();
  }
}

function renderPush(on) {
  $('push-toggle').textContent = on ? 'Turn off browser push' : 'Turn on browser push';
  $('push-toggle').dataset.on = String(on);
  $('push-status').textContent = on
    ? 'Push is on: notifications reach this browser when the page is closed.'
    : 'Turn on push to be notified when this page is closed.';
}

async function togglePush() {
  const button = $('push-toggle');
  button.disabled = true;
  try {
    const registration = await navigator.serviceWorker.ready;
    const existing = await registration.pushManager.getSubscription();
    if (existing) {
      await view.client.removePushSubscription(existing.endpoint).catch(() => {});
      await existing.unsubscribe();
      renderPush(false);
      return;
    }
    if (await Notification.requestPermission() !== 'granted') {
      $('push-status').textContent = 'Notifications are blocked for this site in the browser settings.';
      return;
    }
    await registerPush(registration, await subscribePush(registration));
    renderPush(true);
  } catch (error) {
    $('push-status').textContent = `Push could not be changed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

function base64UrlToBytes(text) {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

start();
