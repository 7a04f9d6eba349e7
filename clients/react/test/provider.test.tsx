// NotificationProvider and its hooks in jsdom against a real server: one socket under
// StrictMode, live notifications, optimistic changes and their rollback, other tabs, a dropped
// connection, unmounting.

import { StrictMode, type ReactNode } from 'react';
import { act, cleanup, renderHook, waitFor } from '@testing-library/react';
import { afterEach, describe, expect, test } from 'vitest';

import {
  NotificationProvider, useBroadcasts, useNotifications, useUnreadCount,
  type NotificationProviderProps,
} from '../src/index.js';
import {
  FlakyProxy, URL_BASE, countingWebSocket, createBroadcast, createNotification, newUser, openSockets,
  otherTab, token, untilSockets,
} from './server.js';

afterEach(async () => {
  cleanup();
  await untilSockets(0); // every provider's socket is closed before the next test counts
});

function providerOf(user: string, props: Partial<NotificationProviderProps> = {}, strict = false) {
  return ({ children }: { children: ReactNode }) => {
    const provider = <NotificationProvider url={URL_BASE} token={token(user)} {...props}>{children}</NotificationProvider>;
    return strict ? <StrictMode>{provider}</StrictMode> : provider;
  };
}

function notificationsOf(user: string, props: Partial<NotificationProviderProps> = {}, strict = false) {
  return renderHook(() => useNotifications(), { wrapper: providerOf(user, props, strict) });
}

describe('the socket', () => {
  test('StrictMode\'s double mount opens exactly one socket', async () => {
    const counted = countingWebSocket();
    const { result } = notificationsOf(newUser('strict'), { clientOptions: { WebSocket: counted.WebSocket } }, true);
    await waitFor(() => expect(result.current.connectionState).toBe('open'));
    await new Promise((resolve) => setTimeout(resolve, 300)); // a late second socket would show by now
    expect(await openSockets()).toBe(1);
    expect(counted.opened()).toBe(1);
    expect(result.current.connectionState).toBe('open');
  });

  test('unmounting the provider closes its socket', async () => {
    const { result, unmount } = notificationsOf(newUser('unmount'));
    await waitFor(() => expect(result.current.connectionState).toBe('open'));
    expect(await openSockets()).toBe(1);
    unmount();
    await untilSockets(0);
  });

  test('a hidden tab keeps its socket open (a background supervisor tab still hears escalations)', async () => {
    const { result } = notificationsOf(newUser('hidden'));
    await waitFor(() => expect(result.current.connectionState).toBe('open'));
    Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
    try {
      document.dispatchEvent(new Event('visibilitychange'));
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(result.current.connectionState).toBe('open');
      expect(await openSockets()).toBe(1);
    } finally {
      Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true });
    }
  });

  test('disconnect() closes it and connect() opens it again', async () => {
    const { result } = notificationsOf(newUser('toggle'));
    await waitFor(() => expect(result.current.connectionState).toBe('open'));
    act(() => result.current.disconnect());
    await waitFor(() => expect(result.current.connectionState).toBe('closed'));
    await untilSockets(0);
    await act(() => result.current.connect());
    expect(result.current.connectionState).toBe('open');
    expect(await openSockets()).toBe(1);
  });
});

describe('live notifications', () => {
  test('a notification created over REST appears in the hook, in the spec\'s shape', async () => {
    const user = newUser('live');
    const { result } = notificationsOf(user);
    await waitFor(() => expect(result.current.loaded).toBe(true));
    const created = await createNotification(user, { priority: 'critical', actionUrl: '/live-monitor?call=c-1', data: { callId: 'c-1' } });
    await waitFor(() => expect(result.current.notifications.map((n) => n.id)).toEqual([created.id]));
    const shown = result.current.notifications[0]!;
    expect(shown.timestamp).toBeInstanceOf(Date);
    expect(shown.timestamp.toISOString()).toBe(created.timestamp);
    expect(shown).toMatchObject({ type: 'payment_received', title: 'Payment Received', read: false,
      priority: 'critical', actionUrl: '/live-monitor?call=c-1', data: { callId: 'c-1' } });
    await waitFor(() => expect(result.current.unreadCount).toBe(1));
    expect(result.current.byPriority).toEqual({ low: 0, medium: 0, high: 0, critical: 1 });
  });

  test('history loads newest first, each id once, and loadMore pages back', async () => {
    const user = newUser('history');
    const ids: string[] = [];
    for (let i = 0; i < 5; i += 1) ids.push((await createNotification(user, { title: `n${i}` })).id);
    const { result } = notificationsOf(user, { pageSize: 2 });
    await waitFor(() => expect(result.current.loaded).toBe(true));
    expect(result.current.notifications.map((n) => n.id)).toEqual([ids[4], ids[3]]);
    expect(result.current.hasMore).toBe(true);
    await act(() => result.current.loadMore());
    await act(() => result.current.loadMore());
    expect(result.current.notifications.map((n) => n.id)).toEqual([...ids].reverse());
    expect(result.current.hasMore).toBe(false);
  });

  test('useUnreadCount follows the server\'s counts', async () => {
    const user = newUser('count');
    const { result } = renderHook(() => useUnreadCount(), { wrapper: providerOf(user) });
    await createNotification(user, { priority: 'high' });
    await createNotification(user, { priority: 'low' });
    await waitFor(() => expect(result.current).toEqual({ count: 2, byPriority: { low: 1, medium: 0, high: 1, critical: 0 } }));
  });

  test('useBroadcasts shows an announcement as it arrives', async () => {
    const { result } = renderHook(() => useBroadcasts(), { wrapper: providerOf(newUser('broadcast')) });
    const broadcast = await createBroadcast({ title: 'Dialer restart', message: 'At 22:00' });
    await waitFor(() => expect(result.current.broadcasts.map((b) => b.id)).toContain(broadcast.id));
    act(() => result.current.dismiss(broadcast.id));
    expect(result.current.broadcasts.map((b) => b.id)).not.toContain(broadcast.id);
  });
});

describe('optimistic changes', () => {
  test('mark as read shows at once, and is rolled back with an error on a 404', async () => {
    const user = newUser('rollback');
    const { result } = notificationsOf(user);
    await waitFor(() => expect(result.current.loaded).toBe(true));
    const created = await createNotification(user, { priority: 'high' });
    await waitFor(() => expect(result.current.unreadCount).toBe(1));
    await waitFor(() => expect(result.current.notifications).toHaveLength(1));
    // Gone on the server while this tab did not hear of it (its socket was down).
    act(() => result.current.disconnect());
    const other = otherTab(user);
    await other.deleteNotification(created.id);

    let answer: Promise<boolean> = Promise.resolve(true);
    act(() => { answer = result.current.markAsRead(created.id); });
    expect(result.current.notifications[0]!.read).toBe(true);
    expect(result.current.unreadCount).toBe(0);
    expect(result.current.byPriority.high).toBe(0);

    await act(async () => { expect(await answer).toBe(false); });
    expect(result.current.notifications[0]!.read).toBe(false);
    expect(result.current.unreadCount).toBe(1);
    expect(result.current.byPriority.high).toBe(1);
    expect(result.current.error).toMatchObject({ status: 404, code: 'not_found', action: 'markAsRead', notificationId: created.id });
  });

  test('mark as read, mark all read and delete are taken by the server', async () => {
    const user = newUser('accepted');
    const { result } = notificationsOf(user);
    await waitFor(() => expect(result.current.loaded).toBe(true));
    const [a, b, c] = [await createNotification(user), await createNotification(user), await createNotification(user)];
    await waitFor(() => expect(result.current.unreadCount).toBe(3));
    await act(async () => { expect(await result.current.markAsRead(a!.id)).toBe(true); });
    await waitFor(() => expect(result.current.unreadCount).toBe(2));
    await act(async () => { expect(await result.current.remove(b!.id)).toBe(true); });
    expect(result.current.notifications.map((n) => n.id)).toEqual([c!.id, a!.id]);
    await act(async () => { expect(await result.current.markAllAsRead()).toBe(true); });
    expect(result.current.notifications.every((n) => n.read)).toBe(true);
    const page = await otherTab(user).history();
    expect(page.notifications.map((n) => [n.id, n.read])).toEqual([[c!.id, true], [a!.id, true]]);
    expect(result.current.error).toBeNull();
  });
});

describe('other tabs', () => {
  test('a read and a delete in a second provider update the first', async () => {
    const user = newUser('tabs');
    const first = notificationsOf(user);
    const second = notificationsOf(user);
    await waitFor(() => expect(first.result.current.loaded && second.result.current.loaded).toBe(true));
    const [a, b] = [await createNotification(user), await createNotification(user)];
    await waitFor(() => expect(first.result.current.notifications).toHaveLength(2));
    await waitFor(() => expect(second.result.current.notifications).toHaveLength(2));

    await act(() => second.result.current.markAsRead(a!.id));
    await waitFor(() => expect(first.result.current.notifications.find((n) => n.id === a!.id)?.read).toBe(true));
    await waitFor(() => expect(first.result.current.unreadCount).toBe(1));

    await act(() => second.result.current.remove(b!.id));
    await waitFor(() => expect(first.result.current.notifications.map((n) => n.id)).toEqual([a!.id]));
    await waitFor(() => expect(first.result.current.unreadCount).toBe(0));
  });
});

describe('a dropped connection', () => {
  test('resumes with nothing missing and nothing doubled', async () => {
    const user = newUser('drop');
    const proxy = await new FlakyProxy(URL_BASE).listen();
    try {
      const { result } = notificationsOf(user, { url: proxy.url, clientOptions: { minDelayMs: 50, maxDelayMs: 200 } });
      await waitFor(() => expect(result.current.loaded).toBe(true));
      const created = [await createNotification(user, { title: 'before 1' }), await createNotification(user, { title: 'before 2' })];
      await waitFor(() => expect(result.current.notifications).toHaveLength(2));

      proxy.refuse = true;
      proxy.drop();
      await waitFor(() => expect(result.current.connectionState).toBe('reconnecting'));
      for (let i = 1; i <= 3; i += 1) created.push(await createNotification(user, { title: `while down ${i}` }));
      expect(result.current.notifications).toHaveLength(2);
      proxy.refuse = false;

      await waitFor(() => expect(result.current.connectionState).toBe('open'), { timeout: 5000 });
      await waitFor(() => expect(result.current.notifications).toHaveLength(5));
      await new Promise((resolve) => setTimeout(resolve, 200)); // a doubled replay would show by now
      expect(result.current.notifications.map((n) => n.id)).toEqual(created.map((n) => n.id).reverse());
      expect(result.current.unreadCount).toBe(5);
    } finally {
      cleanup();
      await proxy.close();
    }
  });
});
