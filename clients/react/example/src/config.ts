// Where the server is and who the user is. VITE_API_URL: the server's base URL (default: this
// page's origin, which the dev server forwards to the server). VITE_WS_URL: the socket's URL
// when it is elsewhere (default: derived from the API URL). The token: `#token=<JWT>` in the
// address (taken out of the address bar at once), else VITE_TOKEN, e.g. from
// `mojavox-notify token --user alice`.

export const apiUrl: string = import.meta.env.VITE_API_URL || window.location.origin;
export const wsUrl: string | undefined = import.meta.env.VITE_WS_URL || undefined;

function tokenFromAddress(): string | null {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (!match) return null;
  window.history.replaceState(null, '', window.location.pathname + window.location.search);
  sessionStorage.setItem('mojavox-token', decodeURIComponent(match[1]!));
  return decodeURIComponent(match[1]!);
}

export const token: string | null = tokenFromAddress() ?? sessionStorage.getItem('mojavox-token')
  ?? (import.meta.env.VITE_TOKEN || null);
