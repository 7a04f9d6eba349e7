import { NotifyApiError, NotifyClient } from '@mojavox/notify-client';
import type {
  Broadcast, ClientOptions, Escalation, Notification as WireNotification, Priority, WebSocketConstructor,
} from '@mojavox/notify-client';

import type { ByPriority, Notification, NotifyError, NotifyState, OpenEscalation } from './types.js';

export interface NotifyStoreOptions {
  /** The server's base URL, e.g. `https://notify.mojavox.ai` (REST, and the socket unless `wsUrl`). */
  url: string;
  /** The socket's full URL when it is not `url` + `/ws/notifications`, e.g. `wss://ws.mojavox.ai/ws/notifications`. */
  wsUrl?: string;
  token?: string;
  getToken?: () => string | Promise<string>;
  channels?: string[];
  since?: string;
  /** Notifications per history page (default 30). */
  pageSize?: number;
  onError?: (error: NotifyError) => void;
  /** Anything else for the underlying NotifyClient (timeouts, backoff, a WebSocket or fetch). */
  clientOptions?: Partial<ClientOptions>;
}

const NO_PRIORITIES: ByPriority = Object.freeze({ low: 0, medium: 0, high: 0, critical: 0 });

export const INITIAL_STATE: NotifyState = Object.freeze({
  notifications: [],
  unreadCount: 0,
  byPriority: NO_PRIORITIES,
  connectionState: 'idle',
  loaded: false,
  hasMore: false,
  loadingMore: false,
  error: null,
  tenant: null,
  broadcasts: [],
  escalations: [],
});

/** The wire payload in the spec's shape: `timestamp` a Date, no null `actionUrl`. */
export function toNotification(wire: WireNotification): Notification {
  const notification: Notification = {
    id: wire.id,
    type: wire.type,
    title: wire.title,
    message: wire.message,
    timestamp: new Date(wire.timestamp),
    read: wire.read,
    priority: wire.priority,
    data: wire.data ?? {},
  };
  if (wire.actionUrl) notification.actionUrl = wire.actionUrl;
  if (wire.escalation) notification.escalation = wire.escalation;
  return notification;
}

/** Newest first (ties by id, so the order is stable), each id once; `first` wins a duplicate. */
function merged(first: Notification[], second: Notification[]): Notification[] {
  const byId = new Map<string, Notification>();
  for (const notification of [...first, ...second]) {
    if (!byId.has(notification.id)) byId.set(notification.id, notification);
  }
  return [...byId.values()].sort((a, b) => b.timestamp.getTime() - a.timestamp.getTime()
    || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

function counted(byPriority: ByPriority, priority: Priority, change: number): ByPriority {
  return { ...byPriority, [priority]: Math.max(0, byPriority[priority] + change) };
}

function asError(error: unknown, action: NotifyError['action'], notificationId?: string): NotifyError {
  const found: NotifyError = error instanceof NotifyApiError
    ? { code: error.code, message: error.message, status: error.status }
    : { code: 'network_error', message: error instanceof Error ? error.message : String(error) };
  found.action = action;
  if (notificationId) found.notificationId = notificationId;
  return found;
}

/** A `WebSocket` that opens `wsUrl` (with the client's query: token, since) instead of the URL
 * the client derived from `url`. */
function socketAt(wsUrl: string, Base: WebSocketConstructor): WebSocketConstructor {
  return class extends Base {
    constructor(url: string | URL, protocols?: string | string[]) {
      const target = new URL(wsUrl);
      target.search = new URL(String(url)).search;
      super(target.toString(), protocols);
    }
  };
}

/**
 * The state of one provider and the one NotifyClient behind it, as an external store for
 * `useSyncExternalStore`. Nothing here runs at construction: the client (and so any socket,
 * `window` or `fetch`) is made by `retain()`, which only an effect calls, so rendering on a
 * server touches no browser API. The socket stays open while the tab is hidden (see README).
 */
export class NotifyStore {
  private state: NotifyState = INITIAL_STATE;
  private readonly listeners = new Set<() => void>();
  private client: NotifyClient | null = null;
  private offs: Array<() => void> = [];
  private holders = 0;
  private releaseTimer: ReturnType<typeof setTimeout> | null = null;
  private expiryTimer: ReturnType<typeof setTimeout> | null = null;
  private dismissed = new Set<string>();
  private reportedSeen = new Set<string>();
  private options: NotifyStoreOptions;

  constructor(options: NotifyStoreOptions) {
    this.options = options;
  }

  /** The newest callbacks and token from the provider's props (they may change every render). */
  update(options: Pick<NotifyStoreOptions, 'token' | 'getToken' | 'onError'>): void {
    const tokenChanged = options.token !== undefined && options.token !== this.options.token;
    this.options = { ...this.options, ...options };
    if (tokenChanged && this.client && options.token) this.client.setToken(options.token);
  }

  // -- external store ------------------------------------------------------------------------

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getSnapshot = (): NotifyState => this.state;

  getServerSnapshot = (): NotifyState => INITIAL_STATE;

  private set(change: Partial<NotifyState> | ((state: NotifyState) => Partial<NotifyState>)): void {
    const values = typeof change === 'function' ? change(this.state) : change;
    this.state = { ...this.state, ...values };
    for (const listener of [...this.listeners]) listener();
  }

  private fail(error: NotifyError): void {
    this.set({ error });
    this.options.onError?.(error);
  }

  // -- lifecycle -----------------------------------------------------------------------------

  /**
   * Called by the provider's effect; returns its cleanup. The release is deferred by a task, so
   * StrictMode's unmount-and-mount again (and a fast remount) keeps the one socket instead of
   * closing it and opening another.
   */
  retain(autoConnect: boolean): () => void {
    if (this.releaseTimer) clearTimeout(this.releaseTimer);
    this.releaseTimer = null;
    this.holders += 1;
    if (autoConnect && !this.client) void this.connect();
    return () => {
      this.holders -= 1;
      if (this.holders > 0) return;
      this.releaseTimer = setTimeout(() => this.shutdown(), 0);
    };
  }

  private shutdown(): void {
    this.releaseTimer = null;
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    for (const off of this.offs.splice(0)) off();
    this.client?.close();
    this.client = null;
    // A later retain (a remount of the same provider) makes a new client: it loads the first page again.
    this.set({ connectionState: 'closed', loaded: false });
  }

  /** The NotifyClient (made on first use; only ever called from effects and event handlers). */
  getClient(): NotifyClient {
    if (this.client) return this.client;
    const { url, wsUrl, token, getToken, channels, since, clientOptions } = this.options;
    const options: ClientOptions = { ...clientOptions, url };
    if (getToken) options.getToken = () => (this.options.getToken ?? getToken)();
    else if (token) options.token = token;
    if (channels) options.channels = channels;
    if (since) options.since = since;
    if (wsUrl) {
      options.wsPath = '';
      options.WebSocket = socketAt(wsUrl, clientOptions?.WebSocket ?? globalThis.WebSocket);
    }
    const client = new NotifyClient(options);
    this.client = client;
    this.listen(client);
    return client;
  }

  connect = async (): Promise<void> => {
    try {
      await this.getClient().connect();
    } catch (error) {
      this.fail(asError(error, 'connect'));
    }
  };

  /** Close the socket (the list stays); `connect()` opens it again and resumes from the newest id. */
  disconnect = (): void => {
    this.client?.close();
  };

  private listen(client: NotifyClient): void {
    this.offs.push(
      client.on('state', ({ state }) => this.set({ connectionState: state })),
      client.on('connected', ({ tenant }) => {
        this.set({ tenant });
        if (!this.state.loaded) void this.loadFirstPage(false);
        void this.loadEscalations();
      }),
      client.on('notification', (wire) => this.receive(toNotification(wire))),
      client.on('unread_count', ({ count, byPriority }) => this.set({ unreadCount: count, byPriority })),
      client.on('read', ({ notificationId, all }) => this.set((state) => ({
        notifications: state.notifications.map((n) => (all || n.id === notificationId) && !n.read ? { ...n, read: true } : n),
      }))),
      client.on('deleted', ({ notificationId }) => this.set((state) => ({
        notifications: state.notifications.filter((n) => n.id !== notificationId),
      }))),
      // More were missed than the server replays: the first page again, merged.
      client.on('resumed', ({ hasMore }) => { if (hasMore) void this.loadFirstPage(false); }),
      client.on('resync', () => void this.loadFirstPage(true)),
      client.on('broadcast', (broadcast) => this.receiveBroadcast(broadcast)),
      client.on('escalation', (escalation) => this.receiveEscalation(escalation)),
      client.on('error', ({ code, message }) => this.fail({ code, message, action: 'socket' })),
    );
  }

  // -- notifications -------------------------------------------------------------------------

  private receive(notification: Notification): void {
    this.set((state) => ({ notifications: merged([notification], state.notifications) }));
    if (notification.escalation) this.receiveEscalation(notification.escalation, notification.id);
  }

  private async loadFirstPage(replace: boolean): Promise<void> {
    try {
      const page = await this.getClient().history({ limit: this.options.pageSize ?? 30 });
      const loaded = page.notifications.map(toNotification);
      this.set((state) => ({
        notifications: replace ? loaded : merged(state.notifications, loaded),
        hasMore: page.hasMore,
        loaded: true,
      }));
      for (const notification of loaded) {
        if (notification.escalation?.state === 'open') this.receiveEscalation(notification.escalation, notification.id);
      }
    } catch (error) {
      this.fail(asError(error, 'load'));
    }
  }

  /** The next page of history, older than what is shown. */
  loadMore = async (): Promise<void> => {
    if (this.state.loadingMore || !this.state.hasMore) return;
    this.set({ loadingMore: true });
    try {
      const page = await this.getClient().history({
        limit: this.options.pageSize ?? 30, offset: this.state.notifications.length,
      });
      this.set((state) => ({
        notifications: merged(state.notifications, page.notifications.map(toNotification)),
        hasMore: page.hasMore,
        loadingMore: false,
      }));
    } catch (error) {
      this.set({ loadingMore: false });
      this.fail(asError(error, 'loadMore'));
    }
  };

  /** Shown as read at once; rolled back (with `error`) when the server refuses. Resolves with
   * whether the server took it. */
  markAsRead = async (id: string): Promise<boolean> => {
    const target = this.state.notifications.find((n) => n.id === id);
    if (!target || target.read) return true;
    const flip = (read: boolean, change: number) => this.set((state) => ({
      notifications: state.notifications.map((n) => n.id === id ? { ...n, read } : n),
      unreadCount: Math.max(0, state.unreadCount + change),
      byPriority: counted(state.byPriority, target.priority, change),
    }));
    flip(true, -1);
    try {
      await this.getClient().markRead(id);
      return true;
    } catch (error) {
      const still = this.state.notifications.find((n) => n.id === id);
      if (still?.read) flip(false, +1);
      this.fail(asError(error, 'markAsRead', id));
      return false;
    }
  };

  /** Every notification read at once; rolled back when the server refuses. */
  markAllAsRead = async (): Promise<boolean> => {
    const before = this.state;
    const flipped = new Set(before.notifications.filter((n) => !n.read).map((n) => n.id));
    this.set((state) => ({
      notifications: state.notifications.map((n) => n.read ? n : { ...n, read: true }),
      unreadCount: 0,
      byPriority: NO_PRIORITIES,
    }));
    try {
      await this.getClient().markAllRead();
      return true;
    } catch (error) {
      this.set((state) => ({
        notifications: state.notifications.map((n) => flipped.has(n.id) ? { ...n, read: false } : n),
        unreadCount: before.unreadCount,
        byPriority: before.byPriority,
      }));
      this.fail(asError(error, 'markAllAsRead'));
      return false;
    }
  };

  /** Removed at once; put back when the server refuses (a 404 means it is gone already: kept removed). */
  remove = async (id: string): Promise<boolean> => {
    const target = this.state.notifications.find((n) => n.id === id);
    if (!target) return true;
    const unread = target.read ? 0 : 1;
    this.set((state) => ({
      notifications: state.notifications.filter((n) => n.id !== id),
      unreadCount: Math.max(0, state.unreadCount - unread),
      byPriority: counted(state.byPriority, target.priority, -unread),
    }));
    try {
      await this.getClient().deleteNotification(id);
      return true;
    } catch (error) {
      if (error instanceof NotifyApiError && error.status === 404) return true;
      this.set((state) => ({
        notifications: merged(state.notifications, [target]),
        unreadCount: state.unreadCount + unread,
        byPriority: counted(state.byPriority, target.priority, unread),
      }));
      this.fail(asError(error, 'remove', id));
      return false;
    }
  };

  /** Tell the server these escalation notifications were on screen (read state is unchanged). */
  markSeen = (ids: string[]): void => {
    const client = this.client;
    if (!client || typeof client.markSeen !== 'function') return; // a client from before escalations
    const fresh = ids.filter((id) => !this.reportedSeen.has(id));
    if (!fresh.length) return;
    for (const id of fresh) this.reportedSeen.add(id);
    Promise.resolve(client.markSeen(fresh)).catch(() => {
      for (const id of fresh) this.reportedSeen.delete(id);
    });
  };

  clearError = (): void => this.set({ error: null });

  // -- broadcasts ----------------------------------------------------------------------------

  private receiveBroadcast(broadcast: Broadcast): void {
    if (this.dismissed.has(broadcast.id)) return;
    this.set((state) => ({
      broadcasts: [broadcast, ...state.broadcasts.filter((b) => b.id !== broadcast.id)]
        .sort((a, b) => Date.parse(b.timestamp) - Date.parse(a.timestamp)),
    }));
    this.pruneBroadcasts();
  }

  /** Drops expired broadcasts, and wakes up at the next expiry to do it again. */
  private pruneBroadcasts(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    const now = Date.now();
    const active = this.state.broadcasts.filter((b) => Date.parse(b.expiresAt) > now);
    if (active.length !== this.state.broadcasts.length) this.set({ broadcasts: active });
    if (!active.length) return;
    const next = Math.min(...active.map((b) => Date.parse(b.expiresAt)));
    this.expiryTimer = setTimeout(() => this.pruneBroadcasts(), Math.min(next - now + 10, 2 ** 31 - 1));
  }

  /** Hide a broadcast in this provider (the server keeps it for everyone else). */
  dismissBroadcast = (id: string): void => {
    this.dismissed.add(id);
    this.set((state) => ({ broadcasts: state.broadcasts.filter((b) => b.id !== id) }));
  };

  // -- escalations ---------------------------------------------------------------------------

  private receiveEscalation(escalation: Escalation, notificationId?: string): void {
    this.set((state) => {
      const known = state.escalations.find((e) => e.id === escalation.id);
      const holder = notificationId ?? known?.notificationId
        ?? state.notifications.find((n) => n.escalation?.id === escalation.id)?.id;
      const open: OpenEscalation = holder ? { ...escalation, notificationId: holder } : { ...escalation };
      let escalations = state.escalations.filter((e) => e.id !== escalation.id);
      if (escalation.state === 'open') {
        // A change keeps its place; a new one comes first (newest first).
        escalations = known ? state.escalations.map((e) => e.id === escalation.id ? open : e) : [open, ...escalations];
      }
      return {
        escalations,
        notifications: state.notifications.some((n) => n.escalation?.id === escalation.id)
          ? state.notifications.map((n) => n.escalation?.id === escalation.id ? { ...n, escalation } : n)
          : state.notifications,
      };
    });
  }

  /** The open escalations as the server has them now: on every connection, since a
   * reconnection replays notifications but not the escalations' changes. */
  private async loadEscalations(): Promise<void> {
    const client = this.getClient();
    if (typeof client.escalations !== 'function') return; // a client from before escalations
    try {
      const listed = await client.escalations({ state: 'open' });
      this.set((state) => ({
        escalations: listed.filter((e) => e.state === 'open').map((e) => ({
          ...e, notificationId: e.notificationId ?? state.escalations.find((known) => known.id === e.id)?.notificationId,
        })),
      }));
      for (const escalation of listed) this.receiveEscalation(escalation, escalation.notificationId);
    } catch (error) {
      if (error instanceof NotifyApiError && error.status === 404) return; // a server from before escalations
      this.fail(asError(error, 'escalations'));
    }
  }

  /**
   * Take an escalation, by the id of one of its notifications or by its own id. Resolves with the
   * escalation as the server now has it, or null (see `error`: 409 `already_acknowledged`
   * names who was first).
   */
  ack = async (id: string): Promise<Escalation | null> => {
    const { notifications, escalations } = this.state;
    const notificationId = notifications.some((n) => n.id === id) ? id
      : escalations.find((e) => e.id === id)?.notificationId
        ?? notifications.find((n) => n.escalation?.id === id)?.id;
    if (!notificationId) {
      this.fail({ code: 'not_found', message: `no notification of escalation ${id} here`, action: 'ack' });
      return null;
    }
    try {
      const escalation = await this.getClient().ack(notificationId);
      this.receiveEscalation(escalation, notificationId);
      return escalation;
    } catch (error) {
      // A refusal (409) carries the escalation as it is now: who took it shows at once.
      if (error instanceof NotifyApiError && error.escalation) this.receiveEscalation(error.escalation, notificationId);
      this.fail(asError(error, 'ack', notificationId));
      return null;
    }
  };
}
