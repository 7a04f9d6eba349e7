import { useCallback, useEffect, useMemo, useState, useSyncExternalStore } from 'react';

import type { Broadcast, Escalation } from '@mojavox/notify-client';

import { useNotifyStore } from './provider.js';
import type { NotifyStore } from './store.js';
import type { ByPriority, NotifyError, NotifyState, OpenEscalation } from './types.js';

function useNotifyState(store: NotifyStore): NotifyState {
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getServerSnapshot);
}

/** A part of the state that keeps its identity while it does not change (so a component
 * re-renders only when its part does). */
function useSelected<T>(store: NotifyStore, select: (state: NotifyState) => T): T {
  return useSyncExternalStore(store.subscribe, () => select(store.getSnapshot()),
    () => select(store.getServerSnapshot()));
}

/** The state `useNotifications` returns (documented on `NotifyState`), and its actions. */
export interface UseNotifications extends Pick<NotifyState, 'notifications' | 'unreadCount'
  | 'byPriority' | 'connectionState' | 'loaded' | 'hasMore' | 'loadingMore' | 'error'
  | 'tenant'> {
  loadMore: () => Promise<void>;
  markAsRead: (id: string) => Promise<boolean>;
  markAllAsRead: () => Promise<boolean>;
  remove: (id: string) => Promise<boolean>;
  /** Report notifications as seen on screen (escalations record it; read state is unchanged). */
  markSeen: (ids: string[]) => void;
  clearError: () => void;
  connect: () => Promise<void>;
  disconnect: () => void;
}

/** The notifications of the provider's user, live, with actions that update at once. */
export function useNotifications(): UseNotifications {
  const store = useNotifyStore('useNotifications');
  const state = useNotifyState(store);
  return useMemo(() => ({
    notifications: state.notifications,
    unreadCount: state.unreadCount,
    byPriority: state.byPriority,
    connectionState: state.connectionState,
    loaded: state.loaded,
    hasMore: state.hasMore,
    loadingMore: state.loadingMore,
    error: state.error,
    tenant: state.tenant,
    loadMore: store.loadMore,
    markAsRead: store.markAsRead,
    markAllAsRead: store.markAllAsRead,
    remove: store.remove,
    markSeen: store.markSeen,
    clearError: store.clearError,
    connect: store.connect,
    disconnect: store.disconnect,
  }), [store, state]);
}

/** Only the counts (a badge re-renders on nothing else). */
export function useUnreadCount(): { count: number; byPriority: ByPriority } {
  const store = useNotifyStore('useUnreadCount');
  const count = useSelected(store, (state) => state.unreadCount);
  const byPriority = useSelected(store, (state) => state.byPriority);
  return useMemo(() => ({ count, byPriority }), [count, byPriority]);
}

/** The announcements still active, newest first; `dismiss(id)` hides one here. */
export function useBroadcasts(): { broadcasts: Broadcast[]; dismiss: (id: string) => void } {
  const store = useNotifyStore('useBroadcasts');
  const broadcasts = useSelected(store, (state) => state.broadcasts);
  return useMemo(() => ({ broadcasts, dismiss: store.dismissBroadcast }), [store, broadcasts]);
}

/** The open escalations the user receives, newest first; `ack(id)` takes one (by the id of one
 * of its notifications, or its own id). Each leaves the list once acknowledged, resolved or
 * unanswered, whoever did it. */
export function useEscalations(): {
  escalations: OpenEscalation[];
  ack: (id: string) => Promise<Escalation | null>;
  error: NotifyError | null;
} {
  const store = useNotifyStore('useEscalations');
  const escalations = useSelected(store, (state) => state.escalations);
  const error = useSelected(store, (state) => state.error?.action === 'ack' || state.error?.action === 'escalations' ? state.error : null);
  return useMemo(() => ({ escalations, ack: store.ack, error }), [store, escalations, error]);
}

export type PushState = 'unsupported' | 'unsubscribed' | 'subscribed' | 'denied' | 'working';

export interface UsePushSubscription {
  state: PushState;
  /** Ask for permission, subscribe with the server's VAPID key and register the subscription. */
  subscribe: () => Promise<boolean>;
  /** Unregister it from the server and the browser. */
  unsubscribe: () => Promise<boolean>;
  error: NotifyError | null;
}

function keyBytes(base64url: string): Uint8Array<ArrayBuffer> {
  const base64 = (base64url + '='.repeat((4 - (base64url.length % 4)) % 4)).replace(/-/g, '+').replace(/_/g, '/');
  const binary = atob(base64);
  const bytes = new Uint8Array(new ArrayBuffer(binary.length));
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * Web push for this browser. `serviceWorker` is the script registered when the page has no
 * service worker yet (it must show the push: see the server's Web push page). The VAPID key
 * comes from `GET /api/notifications/vapid-public-key`.
 */
export function usePushSubscription({ serviceWorker }: { serviceWorker?: string } = {}): UsePushSubscription {
  const store = useNotifyStore('usePushSubscription');
  const [state, setState] = useState<PushState>('unsupported');
  const [error, setError] = useState<NotifyError | null>(null);

  const registration = useCallback(async (): Promise<ServiceWorkerRegistration> => {
    const existing = await navigator.serviceWorker.getRegistration();
    if (existing) return existing;
    if (!serviceWorker) throw new Error('no service worker: register one, or pass usePushSubscription({serviceWorker})');
    await navigator.serviceWorker.register(serviceWorker);
    return navigator.serviceWorker.ready;
  }, [serviceWorker]);

  useEffect(() => {
    if (typeof navigator === 'undefined' || !('serviceWorker' in navigator) || typeof PushManager === 'undefined') return;
    let live = true;
    if (Notification.permission === 'denied') { setState('denied'); return; }
    navigator.serviceWorker.getRegistration()
      .then((found) => found ? found.pushManager.getSubscription() : null)
      .then((subscription) => { if (live) setState(subscription ? 'subscribed' : 'unsubscribed'); })
      .catch(() => { if (live) setState('unsubscribed'); });
    return () => { live = false; };
  }, []);

  const failed = useCallback((reason: unknown, code = 'push_failed'): false => {
    const message = reason instanceof Error ? reason.message : String(reason);
    const status = (reason as { status?: number }).status;
    const found: NotifyError = { code: (reason as { code?: string }).code ?? code, message };
    if (typeof status === 'number') found.status = status;
    setError(found);
    return false;
  }, []);

  const subscribe = useCallback(async (): Promise<boolean> => {
    if (state === 'unsupported') return failed('push is not supported in this browser', 'push_unsupported');
    setState('working');
    setError(null);
    try {
      if (await Notification.requestPermission() !== 'granted') {
        setState('denied');
        return failed('notifications are not allowed for this site', 'push_denied');
      }
      const client = store.getClient();
      const key = await client.getVapidPublicKey();
      if (!key) {
        setState('unsubscribed');
        return failed('the server has no VAPID key: push is not configured', 'push_not_configured');
      }
      const manager = (await registration()).pushManager;
      const options = { userVisibleOnly: true, applicationServerKey: keyBytes(key) };
      let subscription = await manager.getSubscription() ?? await manager.subscribe(options);
      try {
        await client.savePushSubscription(subscription);
      } catch (reason) {
        // The endpoint belongs to another user of this browser: a new endpoint, then save that.
        if ((reason as { code?: string }).code !== 'push_subscription_taken') throw reason;
        await subscription.unsubscribe();
        subscription = await manager.subscribe(options);
        await client.savePushSubscription(subscription);
      }
      setState('subscribed');
      return true;
    } catch (reason) {
      setState('unsubscribed');
      return failed(reason);
    }
  }, [state, store, registration, failed]);

  const unsubscribe = useCallback(async (): Promise<boolean> => {
    if (state === 'unsupported') return true;
    setState('working');
    try {
      const subscription = await (await navigator.serviceWorker.getRegistration())?.pushManager.getSubscription();
      if (subscription) {
        await store.getClient().removePushSubscription(subscription.endpoint);
        await subscription.unsubscribe();
      }
      setState('unsubscribed');
      return true;
    } catch (reason) {
      setState('subscribed');
      return failed(reason);
    }
  }, [state, store, failed]);

  return { state, subscribe, unsubscribe, error };
}
