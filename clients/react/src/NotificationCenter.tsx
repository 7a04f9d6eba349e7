import { useEffect, useId, useState, type ReactNode } from 'react';

import { useNotifications } from './hooks.js';
import type { ByPriority, Notification, Priority } from './types.js';

/** Every element's class, for restyling: pass some (or `unstyled`) and keep the rest. */
export interface NotificationCenterClassNames {
  root: string;
  bell: string;
  badge: string;
  panel: string;
  header: string;
  title: string;
  markAll: string;
  list: string;
  item: string;
  itemTitle: string;
  itemMessage: string;
  itemTime: string;
  itemActions: string;
  markRead: string;
  remove: string;
  link: string;
  empty: string;
  more: string;
  error: string;
  status: string;
}

const DEFAULT_CLASSES: NotificationCenterClassNames = {
  root: 'mvx-nc', bell: 'mvx-nc__bell', badge: 'mvx-nc__badge', panel: 'mvx-nc__panel',
  header: 'mvx-nc__header', title: 'mvx-nc__title', markAll: 'mvx-nc__mark-all', list: 'mvx-nc__list',
  item: 'mvx-nc__item', itemTitle: 'mvx-nc__item-title', itemMessage: 'mvx-nc__item-message',
  itemTime: 'mvx-nc__item-time', itemActions: 'mvx-nc__item-actions', markRead: 'mvx-nc__mark-read',
  remove: 'mvx-nc__remove', link: 'mvx-nc__link', empty: 'mvx-nc__empty', more: 'mvx-nc__more',
  error: 'mvx-nc__error', status: 'mvx-nc__status',
};

const PRIORITY_ORDER: Priority[] = ['critical', 'high', 'medium', 'low'];

/** The most urgent priority with something unread, for the badge's colour (`data-priority`). */
export function topPriority(byPriority: ByPriority): Priority | null {
  return PRIORITY_ORDER.find((priority) => byPriority[priority] > 0) ?? null;
}

/** A link only to http(s) or a path: never `javascript:` or another scheme. */
export function safeHref(actionUrl: string | undefined): string | null {
  if (!actionUrl) return null;
  if (actionUrl.startsWith('/') && !actionUrl.startsWith('//')) return actionUrl;
  try {
    const url = new URL(actionUrl);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.toString() : null;
  } catch {
    return null;
  }
}

export interface NotificationItemProps {
  notification: Notification;
  markAsRead: () => void;
  remove: () => void;
  classNames: NotificationCenterClassNames;
}

export interface NotificationCenterProps {
  /** Replaces the default classes (merged: give only those you change). */
  classNames?: Partial<NotificationCenterClassNames>;
  /** Render a notification yourself (text, never HTML: React escapes strings). */
  renderItem?: (props: NotificationItemProps) => ReactNode;
  /** Clicked link of a notification with an `actionUrl`; the default follows the link. */
  onAction?: (notification: Notification) => void;
  formatTime?: (timestamp: Date) => string;
  /** Open at first (default false); `open` with `onOpenChange` controls it. */
  defaultOpen?: boolean;
  open?: boolean;
  onOpenChange?: (open: boolean) => void;
  title?: string;
  emptyText?: string;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

export function formatRelative(timestamp: Date, now = Date.now()): string {
  const seconds = Math.round((timestamp.getTime() - now) / 1000);
  if (Math.abs(seconds) < 60) return relative.format(seconds, 'second');
  if (Math.abs(seconds) < 3600) return relative.format(Math.round(seconds / 60), 'minute');
  if (Math.abs(seconds) < 86400) return relative.format(Math.round(seconds / 3600), 'hour');
  return relative.format(Math.round(seconds / 86400), 'day');
}

/**
 * A bell with the unread badge (coloured by the most urgent unread priority), and a panel with
 * the list, mark read, mark all read and delete. Styles: `@mojavox/notify-react/styles.css`, or
 * your own classes through `classNames`; each item can be rendered by `renderItem`.
 */
export function NotificationCenter(props: NotificationCenterProps) {
  const {
    notifications, unreadCount, byPriority, connectionState, hasMore, loadingMore, error,
    loadMore, markAsRead, markAllAsRead, remove, markSeen,
  } = useNotifications();
  const classes = { ...DEFAULT_CLASSES, ...props.classNames };
  const [openState, setOpenState] = useState(props.defaultOpen ?? false);
  const open = props.open ?? openState;
  const setOpen = (next: boolean) => { setOpenState(next); props.onOpenChange?.(next); };
  const panelId = useId();
  const format = props.formatTime ?? formatRelative;
  const top = topPriority(byPriority);

  // An escalation on screen is reported seen (who knew when); read state is left alone.
  useEffect(() => {
    if (!open) return;
    markSeen(notifications.filter((n) => n.escalation && !n.read).map((n) => n.id));
  }, [open, notifications, markSeen]);

  const counts = PRIORITY_ORDER.filter((p) => byPriority[p] > 0).map((p) => `${byPriority[p]} ${p}`).join(', ');
  return (
    <div className={classes.root} data-connection={connectionState}>
      <button type="button" className={classes.bell} aria-expanded={open} aria-controls={panelId}
        aria-label={`Notifications, ${unreadCount} unread${counts ? ` (${counts})` : ''}`}
        onClick={() => setOpen(!open)}>
        <BellIcon />
        {unreadCount > 0 && (
          <span className={classes.badge} data-priority={top ?? undefined} title={counts}>
            {unreadCount > 99 ? '99+' : unreadCount}
          </span>
        )}
      </button>
      {open && (
        <section id={panelId} className={classes.panel} aria-label={props.title ?? 'Notifications'}>
          <header className={classes.header}>
            <h2 className={classes.title}>{props.title ?? 'Notifications'}</h2>
            {connectionState !== 'open' && <span className={classes.status} role="status">{connectionState}</span>}
            <button type="button" className={classes.markAll} disabled={unreadCount === 0}
              onClick={() => void markAllAsRead()}>Mark all read</button>
          </header>
          {error && <p className={classes.error} role="alert">{error.message}</p>}
          {notifications.length === 0
            ? <p className={classes.empty}>{props.emptyText ?? 'No notifications'}</p>
            : (
              <ul className={classes.list}>
                {notifications.map((notification) => {
                  const itemProps: NotificationItemProps = {
                    notification,
                    markAsRead: () => void markAsRead(notification.id),
                    remove: () => void remove(notification.id),
                    classNames: classes,
                  };
                  return (
                    <li key={notification.id} className={classes.item} data-priority={notification.priority}
                      data-read={notification.read} data-type={notification.type}>
                      {props.renderItem ? props.renderItem(itemProps)
                        : <DefaultItem {...itemProps} format={format} onAction={props.onAction} />}
                    </li>
                  );
                })}
              </ul>
            )}
          {hasMore && (
            <button type="button" className={classes.more} disabled={loadingMore} onClick={() => void loadMore()}>
              {loadingMore ? 'Loading…' : 'Load more'}
            </button>
          )}
        </section>
      )}
    </div>
  );
}

function BellIcon() {
  return (
    <svg aria-hidden="true" width="22" height="22" viewBox="0 0 24 24" fill="none" stroke="currentColor"
      strokeWidth="2" strokeLinecap="round" strokeLinejoin="round">
      <path d="M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9" />
      <path d="M13.73 21a2 2 0 0 1-3.46 0" />
    </svg>
  );
}

function DefaultItem({ notification, markAsRead, remove, classNames, format, onAction }: NotificationItemProps & {
  format: (timestamp: Date) => string;
  onAction: ((notification: Notification) => void) | undefined;
}) {
  const href = safeHref(notification.actionUrl);
  const escalation = notification.escalation;
  return (
    <>
      <p className={classNames.itemTitle}>
        {href
          ? <a className={classNames.link} href={href} onClick={onAction ? (event) => { event.preventDefault(); onAction(notification); } : undefined}>{notification.title}</a>
          : notification.title}
      </p>
      <p className={classNames.itemMessage}>{notification.message}</p>
      {escalation && escalation.state !== 'open' && (
        <p className={classNames.itemMessage} data-escalation={escalation.state}>
          {escalation.state === 'acknowledged' ? `Taken by ${escalation.acknowledgedBy ?? 'someone'}`
            : escalation.state === 'resolved' ? `Resolved${escalation.resolution ? `: ${escalation.resolution}` : ''}`
              : 'Unanswered'}
        </p>
      )}
      <time className={classNames.itemTime} dateTime={notification.timestamp.toISOString()}>{format(notification.timestamp)}</time>
      <span className={classNames.itemActions}>
        {!notification.read && <button type="button" className={classNames.markRead} onClick={markAsRead}>Mark read</button>}
        <button type="button" className={classNames.remove} onClick={remove} aria-label={`Delete ${notification.title}`}>Delete</button>
      </span>
    </>
  );
}
