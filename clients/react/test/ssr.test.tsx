// @vitest-environment node
// Server rendering: no window, no document, no socket; the markup is the empty state.

import { renderToString } from 'react-dom/server';
import { expect, test } from 'vitest';

import { NotificationCenter, NotificationProvider, useNotifications } from '../src/index.js';

function State() {
  const { connectionState, unreadCount } = useNotifications();
  return <p>{`${connectionState} ${unreadCount}`}</p>;
}

test('renders on a server without touching window or opening a socket', () => {
  expect(typeof window).toBe('undefined');
  let constructed = 0;
  const Counted = class { constructor() { constructed += 1; } } as unknown as typeof WebSocket;
  const html = renderToString(
    <NotificationProvider url="http://127.0.0.1:9" token="jwt" clientOptions={{ WebSocket: Counted }}>
      <State />
      <NotificationCenter defaultOpen />
    </NotificationProvider>,
  );
  expect(html).toContain('idle 0');
  expect(html).toContain('No notifications');
  expect(constructed).toBe(0);
});
