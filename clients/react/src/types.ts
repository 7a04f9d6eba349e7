import type {
  Broadcast, ConnectionState, Escalation, Notification as WireNotification, NotifyClient, Priority,
} from '@mojavox/notify-client';

export type { Broadcast, ConnectionState, Escalation, EscalationState, Priority } from '@mojavox/notify-client';

/** The spec's `Notification` (the dashboard's seed): the server's payload with `timestamp` as a
 * `Date`. `escalation` is there on notifications of a type with an escalation policy. */
export interface Notification {
  id: string;
  type: string;
  title: string;
  message: string;
  timestamp: Date;
  read: boolean;
  priority: Priority;
  data?: Record<string, unknown>;
  actionUrl?: string;
  escalation?: Escalation;
}

export type ByPriority = Record<Priority, number>;

/** What went wrong last: a refused REST call (its HTTP `status` and the server's `code`), a
 * socket error frame, or a failed connection. `action` names the hook call that failed. */
export interface NotifyError {
  code: string;
  message: string;
  status?: number;
  action?: 'connect' | 'load' | 'loadMore' | 'markAsRead' | 'markAllAsRead' | 'remove' | 'ack' | 'escalations' | 'socket';
  notificationId?: string;
}

/** An open escalation, with the newest notification of it that this user holds (for `ack`). */
export interface OpenEscalation extends Escalation {
  notificationId?: string;
}

/** Everything the provider keeps; each hook selects its part. */
export interface NotifyState {
  /** Newest first, each id once; `timestamp` is a Date. */
  notifications: Notification[];
  unreadCount: number;
  byPriority: ByPriority;
  connectionState: ConnectionState;
  /** False until the first page of history arrived. */
  loaded: boolean;
  /** Older notifications are on the server: `loadMore()`. */
  hasMore: boolean;
  loadingMore: boolean;
  /** The last failure (a refused REST call rolls its optimistic change back and lands here). */
  error: NotifyError | null;
  /** The user's tenant, from the socket's `connected` (null before). */
  tenant: string | null;
  broadcasts: Broadcast[];
  escalations: OpenEscalation[];
}

export type { NotifyClient, WireNotification };
