import { createContext, useContext, useEffect, useMemo, type ReactNode } from 'react';

import { NotifyStore, type NotifyStoreOptions } from './store.js';

const StoreContext = createContext<NotifyStore | null>(null);

export interface NotificationProviderProps extends NotifyStoreOptions {
  children?: ReactNode;
  /** Connect on mount (default true); with false, call `connect()` from `useNotifications()`. */
  autoConnect?: boolean;
}

/**
 * Owns one NotifyClient and its one socket for everything below it. StrictMode's double mount
 * keeps that one socket; nothing touches `window` while rendering (server rendering is safe);
 * the socket stays open while the tab is hidden, so a background supervisor tab still gets
 * escalations, and it reconnects at once when the tab comes back or the browser goes online.
 * `url`, `wsUrl` and `channels` pick the client: changing one starts a new one.
 */
export function NotificationProvider(props: NotificationProviderProps) {
  const { children, autoConnect = true, url, wsUrl, channels, since, pageSize, clientOptions } = props;
  const channelKey = channels ? channels.join(',') : '';
  // The store is plain data until an effect retains it, so a second render's spare is harmless.
  const store = useMemo(
    () => new NotifyStore({ url, wsUrl, channels, since, pageSize, clientOptions,
      token: props.token, getToken: props.getToken, onError: props.onError }),
    // A new client only for a new address or channel list; token and callbacks follow below.
    [url, wsUrl, channelKey],
  );
  useEffect(() => {
    store.update({ token: props.token, getToken: props.getToken, onError: props.onError });
  });
  useEffect(() => store.retain(autoConnect), [store, autoConnect]);
  useEffect(() => reconnectWhenBack(store), [store]);
  return <StoreContext.Provider value={store}>{children}</StoreContext.Provider>;
}

/** Skip the backoff wait when the tab is shown again or the network returns. */
function reconnectWhenBack(store: NotifyStore): () => void {
  if (typeof window === 'undefined' || typeof document === 'undefined') return () => {};
  const now = () => store.getSnapshot().connectionState === 'reconnecting' && store.getClient().reconnectNow();
  const visible = () => { if (document.visibilityState === 'visible') now(); };
  window.addEventListener('online', now);
  document.addEventListener('visibilitychange', visible);
  return () => {
    window.removeEventListener('online', now);
    document.removeEventListener('visibilitychange', visible);
  };
}

/** The provider's store (for the hooks). */
export function useNotifyStore(hook = 'this hook'): NotifyStore {
  const store = useContext(StoreContext);
  if (!store) throw new Error(`${hook} must be used inside <NotificationProvider>`);
  return store;
}
