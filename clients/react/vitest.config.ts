// The package's tests, in jsdom, against a real server: MOJAVOX_URL and MOJAVOX_JWT_SECRET are
// set by tests/test_react_client.py, which starts `mojavox-notify serve` on a free port.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  oxc: { jsx: { runtime: 'automatic' } },
  test: {
    environment: 'jsdom',
    include: ['test/**/*.test.{ts,tsx}'],
    setupFiles: ['test/setup.ts'],
    // One server for every file, and some tests count its sockets: one file at a time.
    fileParallelism: false,
    testTimeout: 20_000,
    hookTimeout: 20_000,
  },
});
