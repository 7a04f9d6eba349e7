// The example dashboard. In development (`npm run dev`) the page's own origin forwards /api and
// /ws to the server (MOJAVOX_URL, default http://127.0.0.1:3001, i.e. `make run`), so no CORS
// setting is needed; a build points at VITE_API_URL / VITE_WS_URL instead.
import { defineConfig } from 'vite';

const target = process.env.MOJAVOX_URL ?? 'http://127.0.0.1:3001';
const proxy = {
  '/api': { target, changeOrigin: true },
  '/ws': { target, ws: true, changeOrigin: true },
};

export default defineConfig({
  oxc: { jsx: { runtime: 'automatic' } },
  server: { port: 5173, strictPort: false, proxy },
  preview: { port: 4173, proxy },
});
