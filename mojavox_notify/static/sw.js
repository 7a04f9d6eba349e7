// MOJAVOX Notify service worker: shows a web push while the page is closed and opens the
// notification's actionUrl when it is clicked.
//
// A push is either full, {title, body, icon?, tag, data: {id, type, priority, actionUrl?}}, or
// minimal, {id, type, priority} (push.payload: minimal), in which case the notification is read
// over REST with the signed-in page's token, so no debtor data passes through the push service.
//
// The token lives in this worker's memory only (never CacheStorage, IndexedDB or anything else
// on disk): on a shared call-center machine, nothing of a signed-out agent stays behind. The
// browser stops an idle worker, and the memory with it; then an open page is asked again. With
// no signed-in page, a minimal push shows only its type and priority.
//
// A push of an escalation's notification carries `escalation: {id, state, ...}` (in `data` when
// full) and the tag `escalation-<id>`, so each escalation is one notification on screen, across
// its steps. When someone took it or it was resolved (state `acknowledged` or `resolved`), the
// worker closes the notifications with that tag and shows a quiet one in their place ("Taken by
// bob", "Resolved: call ended"): a push must show something (Chrome's userVisibleOnly), and
// that text is what a supervisor glancing at the desktop needs to know.

const LEGACY_STORE = 'mojavox-notify-sw'; // where earlier versions kept the token: deleted
const TOKEN_ASK_MS = 1000;
const TYPE_LABELS = {
  payment_received: 'Payment received',
  call_completed: 'Call completed',
  call_escalation: 'Call escalation',
  high_value_call: 'High-value call',
  agent_alert: 'Agent alert',
  campaign_milestone: 'Campaign milestone',
  system_alert: 'System alert',
};

const PRIORITY_LABELS = { critical: 'Critical', high: 'High', medium: 'Medium', low: 'Low' };
/** An escalation in these states needs nobody any more. */
const SETTLED = new Set(['acknowledged', 'resolved']);

/** The signed-in page's token, in memory only; null when signed out. */
let token = null;

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => {
  event.waitUntil(Promise.all([self.clients.claim(), caches.delete(LEGACY_STORE)]));
});

self.addEventListener('message', (event) => {
  if (event.data && event.data.type === 'token') token = event.data.token || null;
});

self.addEventListener('push', (event) => {
  event.waitUntil(showPush(event.data));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  event.waitUntil(Promise.all([openPage(data.actionUrl), markRead(data.id)]));
});

/** The token in memory, else the one an open signed-in page answers with (null: none). */
async function currentToken() {
  if (token) return token;
  const pages = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  const answers = await Promise.all(pages.map(askForToken));
  token = answers.find(Boolean) || null;
  return token;
}

function askForToken(page) {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    const timer = setTimeout(() => resolve(null), TOKEN_ASK_MS);
    channel.port1.onmessage = (event) => {
      clearTimeout(timer);
      resolve((event.data && event.data.token) || null);
    };
    page.postMessage({ type: 'token-request' }, [channel.port2]);
  });
}

function parse(data) {
  if (!data) return {};
  try {
    return data.json();
  } catch {
    return { body: data.text() };
  }
}

async function showPush(data) {
  const push = parse(data);
  const escalation = push.title ? (push.data || {}).escalation : push.escalation;
  if (escalation && SETTLED.has(escalation.state)) return settle(push, escalation);
  const shown = push.title ? fromFullPayload(push) : await fromMinimalPayload(push);
  const critical = shown.data.priority === 'critical';
  return self.registration.showNotification(shown.title, {
    body: shown.body,
    icon: shown.icon,
    tag: shown.tag,
    data: shown.data,
    // An escalation stays on screen until the supervisor acts on it.
    requireInteraction: critical,
    renotify: critical && Boolean(shown.tag),
  });
}

function fromFullPayload(push) {
  const data = push.data || {};
  return {
    title: String(push.title),
    body: push.body === undefined ? '' : String(push.body),
    icon: push.icon,
    tag: push.tag || (data.id ? `mojavox-${data.id}` : undefined),
    data: { id: data.id, type: data.type, priority: data.priority, actionUrl: data.actionUrl },
  };
}

function tagOf(push) {
  if (push.escalation && push.escalation.id) return `escalation-${push.escalation.id}`;
  return push.id ? `mojavox-${push.id}` : undefined;
}

/** Someone took the escalation or it was resolved: its notifications leave the screen, and a
 * quiet one (no sound, no vibration, not pinned) says how it ended. */
async function settle(push, escalation) {
  const tag = `escalation-${escalation.id}`;
  for (const shown of await self.registration.getNotifications({ tag })) shown.close();
  let title;
  let body;
  if (push.title) {
    title = String(push.title);
    body = push.body === undefined ? '' : String(push.body);
  } else {
    // Minimal: the notification (read with the page's token) says who took it and why it ended.
    const notification = push.id ? await fetchNotification(push.id) : null;
    title = settledTitle((notification && notification.escalation) || escalation);
    body = notification ? notification.title : TYPE_LABELS[push.type] || '';
  }
  const data = push.title ? push.data : { id: push.id, type: push.type, priority: push.priority };
  return self.registration.showNotification(title, {
    body, tag, icon: push.icon, silent: true, requireInteraction: false, renotify: false,
    data: { id: data.id, type: data.type, priority: data.priority, actionUrl: '/' },
  });
}

function settledTitle(escalation) {
  if (escalation.state === 'resolved') {
    return escalation.resolution ? `Resolved: ${escalation.resolution}` : 'Resolved';
  }
  return escalation.acknowledgedBy ? `Taken by ${escalation.acknowledgedBy}` : 'Taken';
}

async function fromMinimalPayload(push) {
  const reference = { id: push.id, type: push.type, priority: push.priority };
  const tag = tagOf(push);
  const notification = push.id ? await fetchNotification(push.id) : null;
  if (notification) {
    return {
      title: notification.title,
      body: notification.message,
      tag,
      data: { ...reference, actionUrl: notification.actionUrl || undefined },
    };
  }
  // Signed out, or the server is unreachable: say what kind of thing is waiting, nothing more,
  // and open the dashboard, where whoever signs in sees what it is.
  const priority = PRIORITY_LABELS[push.priority];
  return {
    title: TYPE_LABELS[push.type] || 'New notification',
    body: `${priority ? `${priority} priority. ` : ''}Open MOJAVOX to see it.`,
    tag,
    data: { ...reference, actionUrl: '/' },
  };
}

async function fetchNotification(id) {
  const bearer = await currentToken();
  if (!bearer) return null;
  try {
    const response = await fetch(`/api/notifications/${encodeURIComponent(id)}`, {
      headers: { Authorization: `Bearer ${bearer}` },
    });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

/** Where relative action URLs lead: the dashboard (web.action_base_url), else this origin. */
async function actionBase() {
  try {
    const config = await (await fetch('/config.json')).json();
    return config.actionBaseUrl || self.location.origin;
  } catch {
    return self.location.origin;
  }
}

/** Focus a tab already showing the URL, or open one. Only http(s) URLs are opened; without an
 * actionUrl, the notification center itself. */
async function openPage(actionUrl) {
  let url;
  try {
    url = actionUrl ? new URL(actionUrl, await actionBase()) : new URL('/', self.location.origin);
  } catch {
    url = new URL('/', self.location.origin);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') url = new URL('/', self.location.origin);
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  const open = windows.find((client) => client.url === url.href);
  if (open && 'focus' in open) return open.focus();
  return self.clients.openWindow(url.href);
}

async function markRead(id) {
  const bearer = id ? await currentToken() : null;
  if (!bearer) return;
  try {
    await fetch(`/api/notifications/${encodeURIComponent(id)}/read`, {
      method: 'POST', headers: { Authorization: `Bearer ${bearer}` },
    });
  } catch {
    // Offline: the page shows it unread, and the user can mark it there.
  }
}
