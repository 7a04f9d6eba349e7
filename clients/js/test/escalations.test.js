// Escalations through the client against a real server (tests/test_js_client.py gives it a
// policy for call_escalation: one step, after 1 s, to the user `js-floor-manager`).

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { NotifyApiError, NotifyClient } from '../mojavox-notify.js';
import { URL_BASE, collect, createNotification, newUser, next, token, until } from './helpers.js';

const SERVICE_TOKEN = token('js-test-service', { roles: ['service'] });
const clients = [];

function clientFor(user) {
  const client = new NotifyClient({ url: URL_BASE, token: token(user) });
  clients.push(client);
  return client;
}

after(() => {
  for (const client of clients) client.close();
});

async function asService(method, path, body) {
  const response = await fetch(`${URL_BASE}${path}`, {
    method,
    headers: { Authorization: `Bearer ${SERVICE_TOKEN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

/** One escalation for each of `users` (one key): their notifications, by user. */
async function escalate(users, callId) {
  const topic = `js-floor-${callId}`;
  const members = await asService('PUT', `/api/topics/${topic}/members`, { add: users });
  assert.equal(members.status, 200, JSON.stringify(members.body));
  const created = await asService('POST', '/api/notifications', {
    topic, type: 'call_escalation', title: 'Call Escalation Required',
    message: 'agent-7 requests supervisor intervention on call with John Smith',
    escalationKey: `call:${callId}`,
  });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  assert.equal(created.body.created, users.length);
}

describe('escalations', () => {
  test('ack takes it: every recipient hears the escalation event, a second ack is refused with who took it', async () => {
    const bob = newUser('bob');
    const carol = newUser('carol');
    const bobClient = clientFor(bob);
    const carolClient = clientFor(carol);
    await bobClient.connect();
    await carolClient.connect();
    const bobArrives = next(bobClient, 'notification');
    const carolArrives = next(carolClient, 'notification');
    await escalate([bob, carol], newUser('call'));
    const bobNotification = await bobArrives;
    const carolNotification = await carolArrives;
    assert.equal(bobNotification.escalation.state, 'open');
    assert.equal(bobNotification.escalation.id, carolNotification.escalation.id);

    const carolHears = next(carolClient, 'escalation', { where: (e) => e.state === 'acknowledged' });
    const taken = await bobClient.ack(bobNotification.id);
    assert.equal(taken.state, 'acknowledged');
    assert.equal(taken.acknowledgedBy, bob);
    assert.equal(taken.id, bobNotification.escalation.id);
    const heard = await carolHears;
    assert.equal(heard.acknowledgedBy, bob);
    assert.equal(heard.id, taken.id);

    await assert.rejects(carolClient.ack(carolNotification.id), (error) => {
      assert.ok(error instanceof NotifyApiError);
      assert.equal(error.status, 409);
      assert.equal(error.code, 'already_acknowledged');
      assert.match(error.message, new RegExp(bob));
      assert.equal(error.escalation.acknowledgedBy, bob);
      return true;
    });
    // Taking your own again answers it as it is.
    assert.equal((await bobClient.ack(bobNotification.id)).acknowledgedBy, bob);
  });

  test('a resolved escalation is heard as resolved, and acking it is refused with escalation_resolved', async () => {
    const user = newUser('sup');
    const client = clientFor(user);
    await client.connect();
    const callId = newUser('call');
    const arrives = next(client, 'notification');
    await escalate([user], callId);
    const notification = await arrives;
    const resolvedHeard = next(client, 'escalation', { where: (e) => e.state === 'resolved' });
    const resolved = await asService('POST', '/api/escalations/resolve', { key: `call:${callId}`, resolution: 'call ended' });
    assert.equal(resolved.status, 200, JSON.stringify(resolved.body));
    const heard = await resolvedHeard;
    assert.equal(heard.resolution, 'call ended');
    assert.ok(heard.resolvedAt);
    await assert.rejects(client.ack(notification.id), (error) => {
      assert.equal(error.status, 409);
      assert.equal(error.code, 'escalation_resolved');
      assert.equal(error.escalation.state, 'resolved');
      return true;
    });
  });

  test('ack of a notification that is not the user\'s, or of no escalation, is a 404', async () => {
    const user = newUser();
    const client = clientFor(user);
    const plain = await createNotification(user);
    await assert.rejects(client.ack(plain.id), (error) => error.status === 404);
    const other = await createNotification(newUser(), { type: 'call_escalation', priority: 'critical' });
    await assert.rejects(client.ack(other.id), (error) => error.status === 404);
  });

  test('escalations() lists the open ones newest first, and by state', async () => {
    const user = newUser('sup');
    const client = clientFor(user);
    const first = newUser('call');
    const second = newUser('call');
    await escalate([user], first);
    await escalate([user], second);
    const open = await client.escalations();
    assert.deepEqual(open.map((e) => e.key), [`call:${second}`, `call:${first}`]);
    await asService('POST', '/api/escalations/resolve', { key: `call:${first}` });
    assert.deepEqual((await client.escalations()).map((e) => e.key), [`call:${second}`]);
    assert.deepEqual((await client.escalations({ state: 'resolved' })).map((e) => e.key), [`call:${first}`]);
    assert.deepEqual((await client.escalations({ state: 'unresolved' })).map((e) => e.key), [`call:${second}`]);
    await assert.rejects(client.escalations({ state: 'later' }), (error) => error.status === 400);
  });

  test('markSeen records seen in the timeline, over the socket when open and over REST when not', async () => {
    const user = newUser('sup');
    const client = clientFor(user);
    await escalate([user], newUser('call'));
    const [escalation] = await client.escalations();
    const { notifications } = await client.history({ limit: 1 });
    await client.markSeen([notifications[0].id]); // not connected: REST
    const timeline = async () => (await client.request('GET', `/api/escalations/${escalation.id}`)).timeline;
    const seenLines = async () => (await timeline()).filter((line) => line.event === 'seen');
    assert.deepEqual((await seenLines()).map((line) => line.userId), [user]);

    // Over the socket: the next step's notification, seen once it arrives.
    await client.connect();
    const sent = [];
    const send = client._socket.send.bind(client._socket);
    client._socket.send = (text) => { sent.push(JSON.parse(text)); send(text); };
    await client.markSeen([notifications[0].id, notifications[0].id]);
    assert.deepEqual(sent, [{ type: 'seen', notificationIds: [notifications[0].id] }]);
    await client.markSeen([]);
    assert.equal(sent.length, 1, 'nothing to report, nothing sent');
  });

  test('a step that fires is heard as an escalation event with its step', async () => {
    const user = newUser('sup');
    const client = clientFor(user);
    await client.connect();
    const events = collect(client, 'escalation');
    await escalate([user], newUser('call'));
    await until(() => events.some((e) => e.step === 1), { timeoutMs: 6000, what: 'step 1' });
    const stepped = events.find((e) => e.step === 1);
    assert.ok(['open', 'unanswered'].includes(stepped.state), stepped.state);
  });
});
