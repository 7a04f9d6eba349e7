// The package's build: tsc emits dist/*.js (ESM) and dist/*.d.ts from src/, and the default
// stylesheet is copied beside them.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

process.chdir(fileURLToPath(new URL('..', import.meta.url))); // from wherever it is run (the example's prebuild)

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
rmSync('dist', { recursive: true, force: true });
execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { stdio: 'inherit' });
mkdirSync('dist', { recursive: true });
copyFileSync('src/styles.css', 'dist/styles.css');
