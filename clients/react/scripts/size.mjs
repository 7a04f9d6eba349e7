// The built package's size, as a dashboard pays for it: dist/ bundled into one module with
// rolldown (Vite's bundler; React and @mojavox/notify-client left out, as an app shares them),
// minified, and gzipped; the declarations as shipped, and gzipped; the client the same way.
// Prints one JSON line. Run after `build`.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { build } from 'rolldown';

async function minified(input) {
  const { output } = await build({
    input, write: false, logLevel: 'silent',
    external: [/^react($|\/)/, /^react-dom($|\/)/, /^@mojavox\/notify-client$/],
    output: { format: 'es', minify: true },
  });
  return Buffer.from(output[0].code);
}

const kib = (bytes) => Math.round(bytes / 102.4) / 10;
const sizes = (buffer) => [kib(buffer.length), kib(gzipSync(buffer, { level: 9 }).length)];
const declarations = Buffer.concat(readdirSync('dist').filter((name) => name.endsWith('.d.ts'))
  .sort().map((name) => readFileSync(join('dist', name))));
const [jsMinifiedKiB, jsGzipKiB] = sizes(await minified('dist/index.js'));
const [declarationsKiB, declarationsGzipKiB] = sizes(declarations);
const [cssKiB, cssGzipKiB] = sizes(readFileSync('dist/styles.css'));
const [clientMinifiedKiB, clientGzipKiB] = sizes(await minified('../js/mojavox-notify.js'));
const [clientDeclarationsKiB, clientDeclarationsGzipKiB] = sizes(readFileSync('../js/mojavox-notify.d.ts'));
console.log(JSON.stringify({
  jsMinifiedKiB, jsGzipKiB, declarationsKiB, declarationsGzipKiB, cssKiB, cssGzipKiB,
  clientMinifiedKiB, clientGzipKiB, clientDeclarationsKiB, clientDeclarationsGzipKiB,
}));
