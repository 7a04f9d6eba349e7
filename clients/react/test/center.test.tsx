// NotificationCenter against a real server: the badge by priority, the list, mark read, mark all
// read, delete; content shown as text, never as HTML; restyled through classNames.

import { act, cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { afterEach, expect, test } from 'vitest';

import { NotificationCenter, NotificationProvider } from '../src/index.js';
import { URL_BASE, createNotification, newUser, otherTab, token, untilSockets } from './server.js';

afterEach(async () => {
  cleanup();
  await untilSockets(0);
});

function centerOf(user: string, props: Parameters<typeof NotificationCenter>[0] = {}) {
  return render(
    <NotificationProvider url={URL_BASE} token={token(user)}>
      <NotificationCenter defaultOpen {...props} />
    </NotificationProvider>,
  );
}

test('the bell shows the unread count coloured by the most urgent priority, and the list acts', async () => {
  const user = newUser('center');
  centerOf(user);
  await waitFor(() => screen.getByText('No notifications'));
  await createNotification(user, { title: 'Low one', message: 'call done', priority: 'low' });
  const critical = await createNotification(user, { title: 'Escalation', message: 'agent-7 needs you', priority: 'critical' });
  const bell = () => screen.getByRole('button', { name: /^Notifications, / });
  await waitFor(() => expect(bell().getAttribute('aria-label')).toBe('Notifications, 2 unread (1 critical, 1 low)'));
  const badge = bell().querySelector('.mvx-nc__badge')!;
  expect(badge.textContent).toBe('2');
  expect(badge.getAttribute('data-priority')).toBe('critical');

  const items = screen.getAllByRole('listitem');
  expect(items.map((item) => item.querySelector('.mvx-nc__item-title')!.textContent)).toEqual(['Escalation', 'Low one']);
  fireEvent.click(within(items[0]!).getByRole('button', { name: 'Mark read' }));
  await waitFor(() => expect(badge.getAttribute('data-priority')).toBe('low'));
  expect(items[0]!.getAttribute('data-read')).toBe('true');
  // The badge changed optimistically: the server's copy follows when its answer is in.
  await waitFor(async () => expect((await otherTab(user).getNotification(critical.id)).read).toBe(true));

  fireEvent.click(screen.getByRole('button', { name: 'Mark all read' }));
  await waitFor(() => expect(bell().querySelector('.mvx-nc__badge')).toBeNull());
  fireEvent.click(within(screen.getAllByRole('listitem')[1]!).getByRole('button', { name: 'Delete Low one' }));
  await waitFor(() => expect(screen.getAllByRole('listitem')).toHaveLength(1));
  await waitFor(async () => expect((await otherTab(user).history()).notifications.map((n) => n.id)).toEqual([critical.id]));
});

test('titles and messages are text: entities and angle brackets show as typed, never as markup', async () => {
  const user = newUser('text');
  const { container } = centerOf(user);
  await waitFor(() => screen.getByText('No notifications'));
  // The server removes tags; what remains (angle brackets, ampersands) must not be parsed.
  const created = await createNotification(user, { title: 'Balance &lt;i&gt;due&lt;/i&gt;', message: '2 < 5 &amp; 7 > 3' });
  await waitFor(() => screen.getByText(created.title));
  const message = screen.getByText(created.message);
  expect(message.textContent).toBe(created.message);
  expect(message.childElementCount).toBe(0);
  expect(container.querySelector('.mvx-nc__list i')).toBeNull();
});

test('a javascript: action URL is not made a link', async () => {
  const user = newUser('links');
  centerOf(user);
  await waitFor(() => screen.getByText('No notifications'));
  await createNotification(user, { title: 'Safe', actionUrl: '/payment-history' });
  await waitFor(() => screen.getByRole('link', { name: 'Safe' }));
  expect(screen.getByRole('link', { name: 'Safe' }).getAttribute('href')).toBe('/payment-history');
});

test('classNames replace the default classes, renderItem the default item', async () => {
  const user = newUser('styled');
  centerOf(user, {
    classNames: { root: 'my-center', badge: 'my-badge' },
    renderItem: ({ notification, markAsRead }) => <button type="button" onClick={markAsRead}>{`Read: ${notification.title}`}</button>,
  });
  await waitFor(() => screen.getByText('No notifications'));
  await createNotification(user, { title: 'Custom' });
  await waitFor(() => screen.getByRole('button', { name: 'Read: Custom' }));
  expect(document.querySelector('.my-center .my-badge')?.textContent).toBe('1');
  await act(async () => { fireEvent.click(screen.getByRole('button', { name: 'Read: Custom' })); });
  await waitFor(() => expect(document.querySelector('.my-badge')).toBeNull());
});
