// useEscalations against a server with an escalation policy for call_escalation (issue 24's
// endpoints): the supervisor named in the event first, after 1 s FLOOR_MANAGER too. tests/test_react_client.py starts that server, and sets MOJAVOX_ESCALATIONS_URL,
// only when the server package has escalations; without it (or without the client's `ack`)
// these tests are skipped, and say so.

import { act, cleanup, renderHook, waitFor } from '@testing-library/react';
import { randomUUID } from 'node:crypto';
import type { ReactNode } from 'react';
import { afterEach, describe, expect, test } from 'vitest';

import { NotificationProvider, NotifyClient, useEscalations, useNotifications } from '../src/index.js';
import { newUser, token } from './server.js';

const SERVER = process.env.MOJAVOX_ESCALATIONS_URL;
const FLOOR_MANAGER = 'react-floor-manager'; // step 1's target in tests/test_react_client.py
const READY = Boolean(SERVER) && typeof (NotifyClient.prototype as { ack?: unknown }).ack === 'function';

afterEach(() => cleanup());

/** `call.escalation` for `supervisor`, as the dialer posts it; returns the call id. */
async function escalate(supervisor: string): Promise<string> {
  const callId = `call-${randomUUID().slice(0, 8)}`;
  const response = await fetch(`${SERVER}/api/events`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token('react-test-dialer', { roles: ['service'] })}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ type: 'call.escalation', data: { supervisorId: supervisor, agentId: 'agent-7', callId, debtorName: 'John Smith' } }),
  });
  if (!response.ok) throw new Error(`call.escalation: ${response.status} ${await response.text()}`);
  return callId;
}

function tabOf(user: string) {
  const wrapper = ({ children }: { children: ReactNode }) => (
    <NotificationProvider url={SERVER!} token={token(user)}>{children}</NotificationProvider>
  );
  return renderHook(() => ({ ...useEscalations(), list: useNotifications() }), { wrapper });
}

describe.runIf(READY)('useEscalations (needs the server\'s escalations and the client\'s ack: issue 24)', () => {
  test('an open escalation is listed in every tab, and taking it in one clears it in all', async () => {
    const supervisor = newUser('supervisor');
    const first = tabOf(supervisor);
    const second = tabOf(supervisor);
    await waitFor(() => expect(first.result.current.list.connectionState).toBe('open'));
    await waitFor(() => expect(second.result.current.list.connectionState).toBe('open'));
    const callId = await escalate(supervisor);

    await waitFor(() => expect(first.result.current.escalations).toHaveLength(1));
    await waitFor(() => expect(second.result.current.escalations).toHaveLength(1));
    const open = first.result.current.escalations[0]!;
    expect(open).toMatchObject({ key: `call:${callId}`, state: 'open', acknowledgedBy: null });
    expect(open.notificationId).toBe(first.result.current.list.notifications[0]!.id);

    let taken: Awaited<ReturnType<typeof first.result.current.ack>> = null;
    await act(async () => { taken = await first.result.current.ack(open.id); });
    expect(taken).toMatchObject({ id: open.id, state: 'acknowledged', acknowledgedBy: supervisor });
    expect(first.result.current.escalations).toEqual([]);
    await waitFor(() => expect(second.result.current.escalations).toEqual([]));
    await waitFor(() => expect(second.result.current.list.notifications[0]!.escalation?.state).toBe('acknowledged'));
    await waitFor(() => expect(first.result.current.list.notifications[0]!.escalation?.acknowledgedBy).toBe(supervisor));
  });

  test('the next step\'s recipient sees it, and is refused with 409 once someone took it', async () => {
    const supervisor = newUser('supervisor');
    const floor = tabOf(FLOOR_MANAGER);
    await waitFor(() => expect(floor.result.current.list.connectionState).toBe('open'));
    const callId = await escalate(supervisor);
    const mine = () => floor.result.current.escalations.find((e) => e.key === `call:${callId}`);
    await waitFor(() => expect(mine()).toBeDefined(), { timeout: 5000 }); // step 1, after 1 s
    const open = mine()!;
    expect(open.step).toBe(1);
    expect(open.notificationId).toBeDefined();

    const boss = tabOf(supervisor);
    await waitFor(() => expect(boss.result.current.escalations.map((e) => e.id)).toContain(open.id));
    await act(async () => { await boss.result.current.ack(open.id); });
    await waitFor(() => expect(mine()).toBeUndefined());
    await act(async () => { expect(await floor.result.current.ack(open.notificationId!)).toBeNull(); });
    expect(floor.result.current.error).toMatchObject({ status: 409, code: 'already_acknowledged', action: 'ack' });
  });

  test('open escalations are loaded on connect', async () => {
    const supervisor = newUser('supervisor');
    const callId = await escalate(supervisor);
    const tab = tabOf(supervisor);
    await waitFor(() => expect(tab.result.current.escalations.map((e) => e.key)).toEqual([`call:${callId}`]));
  });
});
