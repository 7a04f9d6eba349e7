// jsdom's WebSocket is undici's, which builds its events with the global `Event` (jsdom's,
// in this environment) and dispatches them on Node's EventTarget, which refuses them (the
// known realm mismatch: "The event argument must be an instance of Event"). The `ws` package's
// client has its own events: the same protocol, a real socket, no mismatch. The built example
// runs in Chromium with the browser's own WebSocket (tests/test_react_example.py).
import { WebSocket as NodeWebSocket } from 'ws';

globalThis.WebSocket = NodeWebSocket as unknown as typeof WebSocket;
