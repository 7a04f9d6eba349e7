// Type declarations of mojavox-notify.js, kept by hand beside it. tests/test_js_types.py checks
// them against the module in `make test`: every export, public method and property, option and
// event of the JavaScript must be declared here and every declaration must exist there
// (test/types/drift.mjs); their types must fit those of the module's JSDoc
// (test/types/compat.ts); and test/types/usage.ts must compile with `tsc --noEmit --strict`.

export type Priority = 'low' | 'medium' | 'high' | 'critical';

/** Where an escalation stands: `open` until someone acknowledges it, the call ends (`resolved`)
 * or its last step passes unanswered (`unanswered`). */
export type EscalationState = 'open' | 'acknowledged' | 'resolved' | 'unanswered';

/** An escalation (a `call_escalation` that must be taken by someone): every notification of one
 * escalation, across steps and recipients, shares its `id`. Times are ISO 8601. */
export interface Escalation {
  id: string;
  /** A business key, `call:<callId>` for calls. */
  key: string;
  state: EscalationState;
  /** The last step of its policy that ran (0: the first recipients only). */
  step: number;
  /** Who took it. */
  acknowledgedBy: string | null;
  acknowledgedAt: string | null;
  resolvedAt: string | null;
  /** Why it was resolved, e.g. "call ended". */
  resolution: string | null;
  /** When it was opened (its waiting time counts from here). */
  createdAt: string;
}

/** One of `escalations()`: with the caller's newest notification of it, to `ack` with. */
export type ListedEscalation = Escalation & { notificationId: string };

/** What `escalations()` lists: one state, or `unresolved` (every state but resolved). */
export type EscalationFilter = EscalationState | 'unresolved';

/** A notification as the server sends it (`timestamp` is ISO 8601 with milliseconds, UTC). */
export interface Notification {
  id: string;
  type: string;
  title: string;
  message: string;
  timestamp: string;
  priority: Priority;
  read: boolean;
  data: Record<string, unknown>;
  actionUrl: string | null;
  /** Only on a notification of a type with an escalation policy. */
  escalation?: Escalation;
}

/** An announcement to every user (of the tenant, or of every tenant), shown until `expiresAt`. */
export interface Broadcast {
  id: string;
  title: string;
  message: string;
  priority: Priority;
  timestamp: string;
  expiresAt: string;
  data: Record<string, unknown>;
  actionUrl: string | null;
}

export interface UnreadCount {
  count: number;
  byPriority: Record<Priority, number>;
}

export interface HistoryPage {
  /** Newest first. */
  notifications: Notification[];
  total: number;
  hasMore: boolean;
  unreadCount: number;
}

export interface HistoryOptions {
  limit?: number;
  offset?: number;
  unreadOnly?: boolean;
}

export type ChannelSettings = Record<string, { enabled: boolean; push: boolean }>;
export type ChannelSettingsChange = Record<string, { enabled?: boolean; push?: boolean }>;

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'unauthorized' | 'closed';

export interface StateChange {
  state: ConnectionState;
  /** Reconnection attempt (1 for the first retry). */
  attempt?: number;
  /** When reconnecting: the wait before the next attempt. */
  delayMs?: number;
  /** The close code that caused the change. */
  code?: number;
  reason?: string;
}

/** What each event passes to its listeners. */
export interface ClientEvents {
  /** A new notification (never the same id twice). */
  notification: Notification;
  /** An announcement (each id once, also across reconnections; the active ones arrive right
   * after connecting). */
  broadcast: Broadcast;
  /** After every change, and on connect. */
  unread_count: UnreadCount;
  /** Read in any tab of the user; `all` for mark all read (then `notificationId` is null). */
  read: { notificationId: string | null; all: boolean };
  deleted: { notificationId: string };
  state: StateChange;
  /** `tenant`: the user's tenant (the token's `tenant` claim, or `default`). */
  connected: { clientId: string; resumed: boolean; tenant: string };
  resumed: { count: number; hasMore: boolean; lastId: string | null };
  /** Reload the list from `history`. */
  resync: { reason: string };
  token_refreshed: { expiresAt: string };
  subscribed: { channels: string[] };
  pong: { timestamp: string };
  /** One of the user's escalations changed (taken, escalated a step, resolved, unanswered), on
   * every socket whatever its channels. A reconnection replays notifications, not these
   * changes: read `escalations()` after one. */
  escalation: Escalation;
  /** A server `error` frame, or `token_unavailable`, `token_expiring`, `anchor_failed`. */
  error: { code: string; message: string };
}

export type ClientEvent = keyof ClientEvents;

/** The `WebSocket` constructor to use (the browser's, Node's, or a subclass). */
export type WebSocketConstructor = typeof WebSocket;

export interface ClientOptions {
  /** The server's base URL, e.g. "https://notify.mojavox.ai" (the socket URL is derived). */
  url: string;
  /** A JWT; or give `getToken`. */
  token?: string;
  /** Called before every connection, on `token_expiring` and when a request answers 401. */
  getToken?: () => string | Promise<string>;
  /** Default "/ws/notifications". */
  wsPath?: string;
  /** Id of the newest notification the app already has: the first connection replays what came after it. */
  since?: string;
  /** Receive only these types (default: all). */
  channels?: string[];
  /** First reconnection delay (default 500). */
  minDelayMs?: number;
  /** Largest reconnection delay (default 30000). */
  maxDelayMs?: number;
  /** Ping when nothing arrived for this long (default 20000). */
  pingIntervalMs?: number;
  /** Reconnect when a ping gets no answer in time (default 10000). */
  pongTimeoutMs?: number;
  /** Give up on a connection attempt not answered with `connected` in time, and retry (default 10000). */
  connectTimeoutMs?: number;
  /** Default: globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Default: globalThis.fetch. */
  fetch?: typeof fetch;
  /** For the jitter (default Math.random). */
  random?: () => number;
}

/** A push subscription as `PushSubscription.toJSON()` gives it. */
export interface PushSubscriptionData {
  endpoint: string;
  keys: { p256dh: string; auth: string };
}

/** An error answer of the REST API: `status` and the server's `code`; for a refused `ack`
 * (409 `already_acknowledged` or `escalation_resolved`), `escalation` as it is now. */
export class NotifyApiError extends Error {
  constructor(status: number, code: string, message: string, retryAfter?: number | null,
    escalation?: Escalation | null);
  status: number;
  code: string;
  /** Seconds, for 429. */
  retryAfter: number | null;
  /** What a refused `ack` answered with (who took it), else null. */
  escalation: Escalation | null;
}

/** The delay before reconnection attempt `attempt` (1, 2, ...): exponential, capped, jittered
 * to between half and all of it. */
export function backoffDelay(attempt: number, bounds: { minDelayMs: number; maxDelayMs: number },
  random?: () => number): number;

export class NotifyClient {
  constructor(options: ClientOptions);

  /** The options as given, over the defaults. */
  readonly options: Readonly<Required<Pick<ClientOptions, 'wsPath' | 'minDelayMs' | 'maxDelayMs'
    | 'pingIntervalMs' | 'pongTimeoutMs' | 'connectTimeoutMs'>> & ClientOptions>;
  /** `url` without trailing slashes. */
  readonly baseUrl: string;
  readonly state: ConnectionState;
  /** Id of the newest notification received, sent as `since` on every reconnection. */
  lastId: string | null;
  readonly unread: UnreadCount | null;
  readonly clientId: string | null;
  /** The user's tenant, from `connected` (`default` without a claim); null before. */
  readonly tenant: string | null;
  /** The announcements received that have not expired, by id. */
  readonly broadcasts: Map<string, Broadcast>;

  /** Listen to an event; returns a function that removes the listener. */
  on<K extends ClientEvent>(event: K, listener: (value: ClientEvents[K]) => void): () => void;
  off<K extends ClientEvent>(event: K, listener: (value: ClientEvents[K]) => void): void;

  /** Open the socket and keep it open until `close()`. Resolves at the first `connected`;
   * rejects (NotifyApiError 401) only when the token is refused and no `getToken` can give another. */
  connect(): Promise<void>;
  /** Close the socket for good (no reconnection). */
  close(): void;
  /** Reconnect now instead of waiting for the backoff (e.g. on the browser's `online` event). */
  reconnectNow(): void;
  /** Use another token from now on. */
  setToken(token: string): void;

  /** Receive these types too ('all' for every type); resolves with the channels now active. */
  subscribe(channels: string[]): Promise<string[]>;
  /** Stop receiving these types ('all' for every type); resolves with the channels now active. */
  unsubscribe(channels: string[]): Promise<string[]>;

  /** One REST call with the current token (one retry with a fresh token on 401 with `getToken`). */
  request<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  history(options?: HistoryOptions): Promise<HistoryPage>;
  getNotification(id: string): Promise<Notification>;
  /** Every tab of the user hears `read` and a new `unread_count`. */
  markRead(id: string): Promise<void>;
  markAllRead(): Promise<void>;
  deleteNotification(id: string): Promise<void>;
  /** The announcements still active, newest first. */
  getBroadcasts(): Promise<Broadcast[]>;
  getUnreadCount(): Promise<UnreadCount>;
  getSettings(): Promise<ChannelSettings>;
  /** Change some types; answers every type as now stored. */
  updateSettings(channels: ChannelSettingsChange): Promise<ChannelSettings>;
  /** The VAPID key for `pushManager.subscribe`, or null when push is not configured. */
  getVapidPublicKey(): Promise<string | null>;
  /** Register this browser for web push (409 `push_subscription_taken`: the endpoint is another user's). */
  savePushSubscription(subscription: PushSubscription | PushSubscriptionData): Promise<void>;
  removePushSubscription(endpoint: string): Promise<void>;

  /** Take the escalation of one of the user's notifications; resolves with it as it is now
   * (every recipient's sockets hear `escalation`). Rejects with a NotifyApiError: 409
   * `already_acknowledged` (`error.escalation.acknowledgedBy` says who) or `escalation_resolved`,
   * 404 when the notification is not the user's or belongs to no escalation. */
  ack(notificationId: string): Promise<Escalation>;
  /** Report notifications the user has on screen (their escalations' timelines record `seen`;
   * read state is unchanged). Over the socket when it is open, else over REST. */
  markSeen(notificationIds: string[]): Promise<void>;
  /** The escalations the user received, newest first: the open ones by default. */
  escalations(options?: { state?: EscalationFilter }): Promise<ListedEscalation[]>;
}

export default NotifyClient;
