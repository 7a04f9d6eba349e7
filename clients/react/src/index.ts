// @mojavox/notify-react: React bindings of MOJAVOX Notify over @mojavox/notify-client.
export { NotificationProvider, type NotificationProviderProps } from './provider.js';
export {
  useNotifications, useUnreadCount, useBroadcasts, useEscalations, usePushSubscription,
  type UseNotifications, type UsePushSubscription, type PushState,
} from './hooks.js';
export {
  NotificationCenter, topPriority, safeHref, formatRelative,
  type NotificationCenterProps, type NotificationCenterClassNames, type NotificationItemProps,
} from './NotificationCenter.js';
export { toNotification, type NotifyStoreOptions } from './store.js';
export type { Notification, NotifyError, NotifyState, ByPriority, OpenEscalation } from './types.js';
export type { Broadcast, ConnectionState, Escalation, EscalationState, Priority } from '@mojavox/notify-client';
export { NotifyApiError, NotifyClient } from '@mojavox/notify-client';
