// The server the tests run against (started by tests/test_react_client.py), and the
// JavaScript client's test helpers: tokens, REST creation, a flaky TCP proxy.
import { NotifyClient } from '@mojavox/notify-client';

export { FlakyProxy, URL_BASE, createBroadcast, createNotification, newUser, token, until } from '../../js/test/helpers.js';
import { URL_BASE, token } from '../../js/test/helpers.js';

/** Open sockets on the server, from `/healthz`. */
export async function openSockets(): Promise<number> {
  const response = await fetch(`${URL_BASE}/healthz`);
  return (await response.json()).connections;
}

/** Waits until the server holds `count` sockets (closing ones take a moment to arrive). */
export async function untilSockets(count: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let now = await openSockets();
  while (now !== count) {
    if (Date.now() > deadline) throw new Error(`the server holds ${now} sockets, not ${count}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
    now = await openSockets();
  }
}

/** A plain client of `user`, outside React: another tab or device of the same user. */
export function otherTab(user: string): NotifyClient {
  return new NotifyClient({ url: URL_BASE, token: token(user) });
}

/** A `WebSocket` that counts the sockets the code under test constructs. */
export function countingWebSocket(): { WebSocket: typeof WebSocket; opened: () => number } {
  let opened = 0;
  class Counted extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols);
      opened += 1;
    }
  }
  return { WebSocket: Counted, opened: () => opened };
}
