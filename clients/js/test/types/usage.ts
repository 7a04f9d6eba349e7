// A typed use of every option, event and method of the client: `tsc --noEmit --strict` over
// this file runs in `make test` (tests/test_js_types.py). The `@ts-expect-error` lines must
// stay errors: they pin what the declarations refuse.

import NotifyClientDefault, {
  NotifyApiError, NotifyClient, backoffDelay,
  type Broadcast, type ChannelSettings, type ClientOptions, type ConnectionState, type Escalation,
  type EscalationFilter, type EscalationState, type HistoryPage, type ListedEscalation, type Notification, type Priority, type UnreadCount,
} from '../../mojavox-notify.js';

const options: ClientOptions = {
  url: 'https://notify.mojavox.example',
  token: 'jwt',
  getToken: async () => 'fresh-jwt',
  wsPath: '/ws/notifications',
  since: 'n-1',
  channels: ['payment_received', 'call_escalation'],
  minDelayMs: 500,
  maxDelayMs: 30_000,
  pingIntervalMs: 20_000,
  pongTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  WebSocket: globalThis.WebSocket,
  fetch: globalThis.fetch,
  random: Math.random,
};
const client = new NotifyClient(options);
const same: NotifyClient = new NotifyClientDefault({ url: 'http://127.0.0.1:3001', getToken: () => 'jwt' });
// @ts-expect-error url is required
new NotifyClient({ token: 'jwt' });

const state: ConnectionState = client.state;
const lastId: string | null = client.lastId;
const tenant: string | null = client.tenant;
const unread: UnreadCount | null = client.unread;
const clientId: string | null = client.clientId;
const baseUrl: string = client.baseUrl;
const wsPath: string = client.options.wsPath;
const active: Map<string, Broadcast> = client.broadcasts;
void [same, state, lastId, tenant, unread, clientId, baseUrl, wsPath, active];

function show(notification: Notification): void {
  const priority: Priority = notification.priority;
  const when: Date = new Date(notification.timestamp);
  const link: string | null = notification.actionUrl;
  const escalation: Escalation | undefined = notification.escalation;
  const taken: string | null | undefined = escalation?.acknowledgedBy;
  const amount: unknown = notification.data['amount'];
  void [priority, when, link, taken, amount, notification.id, notification.type, notification.title,
    notification.message, notification.read];
}

const offs: Array<() => void> = [
  client.on('notification', show),
  client.on('broadcast', (b: Broadcast) => void [b.id, b.title, b.message, b.priority, b.timestamp, b.expiresAt, b.data, b.actionUrl]),
  client.on('unread_count', ({ count, byPriority }) => void [count + byPriority.critical + byPriority.high + byPriority.medium + byPriority.low]),
  client.on('read', ({ notificationId, all }) => void [notificationId?.length, all]),
  client.on('deleted', ({ notificationId }) => void notificationId.length),
  client.on('state', ({ state: now, attempt, delayMs, code, reason }) => void [now, attempt, delayMs, code, reason]),
  client.on('connected', ({ clientId: id, resumed, tenant: t }) => void [id.length, resumed, t.length]),
  client.on('resumed', ({ count, hasMore, lastId: last }) => void [count, hasMore, last]),
  client.on('resync', ({ reason }) => void reason.length),
  client.on('token_refreshed', ({ expiresAt }) => void expiresAt.length),
  client.on('subscribed', ({ channels }) => void channels.length),
  client.on('pong', ({ timestamp }) => void timestamp.length),
  client.on('escalation', (e: Escalation) => {
    const s: EscalationState = e.state;
    void [s, e.id, e.key, e.step, e.acknowledgedBy, e.acknowledgedAt, e.resolvedAt, e.resolution];
  }),
  client.on('error', ({ code, message }) => void [code, message]),
];
// @ts-expect-error not an event of the client
client.on('notifications', () => {});
// @ts-expect-error a notification listener gets a Notification, not a Broadcast with expiresAt
client.on('notification', (n: Broadcast) => void n.expiresAt);
client.off('pong', () => {});

async function everyMethod(): Promise<void> {
  await client.connect();
  client.reconnectNow();
  client.setToken('another-jwt');
  const channels: string[] = await client.subscribe(['agent_alert']);
  await client.unsubscribe(['all']);
  const page: HistoryPage = await client.history({ limit: 20, offset: 0, unreadOnly: true });
  const first: Notification | undefined = page.notifications[0];
  void [channels, page.total, page.hasMore, page.unreadCount, first];
  await client.history();
  const one: Notification = await client.getNotification('n-1');
  await client.markRead(one.id);
  await client.markAllRead();
  await client.deleteNotification(one.id);
  const broadcasts: Broadcast[] = await client.getBroadcasts();
  const count: UnreadCount = await client.getUnreadCount();
  const settings: ChannelSettings = await client.getSettings();
  const stored: ChannelSettings = await client.updateSettings({ payment_received: { push: false } });
  const key: string | null = await client.getVapidPublicKey();
  await client.savePushSubscription({ endpoint: 'https://push.example/1', keys: { p256dh: 'p', auth: 'a' } });
  await client.removePushSubscription('https://push.example/1');
  const health = await client.request<{ status: string }>('GET', '/healthz');
  const escalation: Escalation = await client.ack(one.id);
  const opened: Date = new Date(escalation.createdAt);
  await client.markSeen([one.id]);
  const filter: EscalationFilter = 'unresolved';
  const open: ListedEscalation[] = await client.escalations({ state: 'open' });
  const toAck: string | undefined = open[0]?.notificationId;
  await client.escalations({ state: filter });
  await client.escalations();
  void [opened, toAck];
  void [broadcasts, count, settings, stored, key, health.status, escalation, open];
  for (const off of offs) off();
  client.close();
}

async function errors(): Promise<void> {
  try {
    await everyMethod();
  } catch (error) {
    if (error instanceof NotifyApiError) {
      const status: number = error.status;
      const code: string = error.code;
      const retryAfter: number | null = error.retryAfter;
      const takenBy: string | null | undefined = error.escalation?.acknowledgedBy;
      void [status, code, retryAfter, takenBy, error.message];
    }
  }
  const made = new NotifyApiError(404, 'not_found', 'no such notification');
  const delay: number = backoffDelay(3, { minDelayMs: 500, maxDelayMs: 8000 }, () => 0.5);
  void [made, delay];
}
void errors;
