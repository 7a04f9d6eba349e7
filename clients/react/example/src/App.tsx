import {
  NotificationCenter, NotificationProvider, useBroadcasts, useEscalations, useNotifications,
  useUnreadCount, type NotifyError,
} from '@mojavox/notify-react';

import { apiUrl, token, wsUrl } from './config';

export function App() {
  if (!token) {
    return (
      <main className="app">
        <h1>MOJAVOX dashboard</h1>
        <p role="alert">No token: open this page with <code>#token=…</code> in the address, or start it with
          {' '}<code>VITE_TOKEN=$(mojavox-notify token --user alice)</code>.</p>
      </main>
    );
  }
  const onError = (error: NotifyError) => console.warn('notify:', error.code, error.message);
  return (
    <NotificationProvider url={apiUrl} wsUrl={wsUrl} token={token} onError={onError}>
      <Dashboard />
    </NotificationProvider>
  );
}

function Dashboard() {
  const { connectionState, tenant } = useNotifications();
  const { count, byPriority } = useUnreadCount();
  return (
    <main className="app">
      <header className="app__bar">
        <h1>MOJAVOX dashboard</h1>
        <span className="app__state" data-testid="connection">{connectionState}</span>
        <NotificationCenter onAction={(n) => window.alert(`Would open ${n.actionUrl}`)} />
      </header>
      <Broadcasts />
      <Escalations />
      <section className="app__summary" aria-label="Unread by priority">
        <p data-testid="unread">{count} unread</p>
        <ul>
          {(['critical', 'high', 'medium', 'low'] as const).map((p) => <li key={p} data-priority={p}>{p}: {byPriority[p]}</li>)}
        </ul>
        {tenant && <p className="app__tenant">call center: {tenant}</p>}
      </section>
    </main>
  );
}

function Broadcasts() {
  const { broadcasts, dismiss } = useBroadcasts();
  if (!broadcasts.length) return null;
  return (
    <section aria-label="Announcements">
      {broadcasts.map((b) => (
        <p key={b.id} className="app__broadcast" data-priority={b.priority}>
          <strong>{b.title}</strong> {b.message}
          <button type="button" onClick={() => dismiss(b.id)}>Dismiss</button>
        </p>
      ))}
    </section>
  );
}

function Escalations() {
  const { escalations, ack, error } = useEscalations();
  if (!escalations.length && !error) return null;
  return (
    <section className="app__escalations" aria-label="Open escalations">
      {error && <p role="alert">{error.message}</p>}
      {escalations.map((e) => (
        <p key={e.id} className="app__escalation">
          Escalation {e.key} (step {e.step})
          <button type="button" onClick={() => void ack(e.id)}>Take it</button>
        </p>
      ))}
    </section>
  );
}
