// The README's React example (NotificationProvider), run as written against the real server:
// its JSX return is swapped for the value it provides, and React's three hooks for a minimal
// stand-in that renders once, runs the effect, and re-renders on demand.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { NotifyClient } from '../mojavox-notify.js';
import { URL_BASE, createNotification, newUser, token, until } from './helpers.js';

function exampleSource() {
  const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
  const block = readme.match(/```jsx\n([\s\S]*?)```/);
  assert.ok(block, 'the README has a jsx example');
  const jsx = /return <NotificationContext\.Provider value=\{(\{[^}]*\})\}>\{children\}<\/NotificationContext\.Provider>;/;
  assert.match(block[1], jsx);
  return block[1].replace(jsx, 'return $1;').replace(/^export /m, '');
}

function hooks() {
  const states = [];
  const memos = [];
  const effects = [];
  let state = 0;
  let memo = 0;
  return {
    begin() { state = 0; memo = 0; },
    useState(initial) {
      const slot = state++;
      if (!(slot in states)) states[slot] = initial;
      return [states[slot], (value) => { states[slot] = typeof value === 'function' ? value(states[slot]) : value; }];
    },
    useMemo(make) {
      const slot = memo++;
      if (!(slot in memos)) memos[slot] = make();
      return memos[slot];
    },
    useEffect(effect) { effects.push(effect); },
    effects,
  };
}

test('the README React provider shows history, live arrivals, reads and the connection', async () => {
  const user = newUser('react');
  const older = await createNotification(user, { title: 'older', priority: 'high' });
  const react = hooks();
  const NotificationProvider = new Function('useMemo', 'useState', 'useEffect', 'NotifyClient', 'NOTIFY_URL',
    `${exampleSource()}\nreturn NotificationProvider;`)(react.useMemo, react.useState, react.useEffect, NotifyClient, URL_BASE);
  const getToken = () => token(user);
  const render = () => { react.begin(); return NotificationProvider({ getToken, children: null }); };

  render();
  const cleanup = react.effects[0]();
  try {
    await until(() => render().items.length === 1, { what: 'the history' });
    assert.equal(render().connection, 'open');
    const live = await createNotification(user, { title: 'live', priority: 'critical' });
    await until(() => render().items.length === 2, { what: 'the live one' });
    assert.deepEqual(render().items.map((n) => n.id), [live.id, older.id]);
    await until(() => render().unread.count === 2, { what: 'the unread count' });
    assert.equal(render().unread.byPriority.critical, 1);
    await render().client.markRead(older.id);
    await until(() => render().items[1].read, { what: 'the read mark' });
    await until(() => render().unread.count === 1, { what: 'the new count' });
  } finally {
    cleanup();
  }
  assert.equal(render().client.state, 'closed');
});
