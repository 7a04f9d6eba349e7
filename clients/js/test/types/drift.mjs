// Compares mojavox-notify.d.ts with mojavox-notify.js itself, so neither drifts from the other:
// the module's exports, NotifyClient's public methods and properties, the options it reads and
// the events it emits must be exactly the declared ones. Prints one JSON report; exits 1 on a
// difference. Run by tests/test_js_types.py, with `tsc --noEmit --strict` over usage.ts and
// compat.ts (the declared types against those of the module's JSDoc).

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = (name) => fileURLToPath(new URL(`../../${name}`, import.meta.url));
const source = readFileSync(here('mojavox-notify.js'), 'utf8');
const declarations = ts.createSourceFile('mojavox-notify.d.ts', readFileSync(here('mojavox-notify.d.ts'), 'utf8'),
  ts.ScriptTarget.Latest, true);

// Names declared ahead of the JavaScript, tolerated while the module lacks them (reported as
// `pending`): none now.
const AHEAD = new Set();

function declared() {
  const found = { exports: new Set(), members: new Set(), options: new Set(), events: new Set() };
  const name = (node) => node.name && node.name.getText(declarations).replace(/['"]/g, '');
  for (const statement of declarations.statements) {
    const exported = statement.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
    const isType = ts.isInterfaceDeclaration(statement) || ts.isTypeAliasDeclaration(statement);
    if (exported && !isType && name(statement)) found.exports.add(name(statement));
    if (ts.isExportAssignment(statement)) found.exports.add('default');
    if (ts.isClassDeclaration(statement) && name(statement) === 'NotifyClient') {
      for (const member of statement.members) {
        if (ts.isMethodDeclaration(member)) found.members.add(`method ${name(member)}`);
        if (ts.isPropertyDeclaration(member)) found.members.add(`property ${name(member)}`);
      }
    }
    if (ts.isInterfaceDeclaration(statement) && name(statement) === 'ClientOptions') {
      for (const member of statement.members) found.options.add(`option ${name(member)}`);
    }
    if (ts.isInterfaceDeclaration(statement) && name(statement) === 'ClientEvents') {
      for (const member of statement.members) found.events.add(`event ${name(member)}`);
    }
  }
  return found;
}

async function implemented() {
  const module = await import(here('mojavox-notify.js'));
  const found = { exports: new Set(Object.keys(module)), members: new Set(), options: new Set(), events: new Set() };
  const { NotifyClient } = module;
  for (const key of Object.getOwnPropertyNames(NotifyClient.prototype)) {
    if (key !== 'constructor' && !key.startsWith('_')) found.members.add(`method ${key}`);
  }
  const client = new NotifyClient({ url: 'http://127.0.0.1:9', token: 'x', fetch: () => Promise.reject(new Error('no')) });
  for (const key of Object.keys(client)) {
    if (!key.startsWith('_')) found.members.add(`property ${key}`);
  }
  for (const match of source.matchAll(/\boptions\.(\w+)/g)) found.options.add(`option ${match[1]}`);
  for (const key of Object.keys(client.options)) found.options.add(`option ${key}`);
  for (const match of source.matchAll(/_emit\('(\w+)'/g)) found.events.add(`event ${match[1]}`);
  if (/_setState\(/.test(source)) found.events.add('event state');
  return found;
}

const types = declared();
const code = await implemented();
const report = { undeclared: [], missing: [], pending: [] };
for (const kind of ['exports', 'members', 'options', 'events']) {
  for (const item of code[kind]) if (!types[kind].has(item)) report.undeclared.push(kind === 'exports' ? `export ${item}` : item);
  for (const item of types[kind]) {
    if (code[kind].has(item)) continue;
    (AHEAD.has(item) ? report.pending : report.missing).push(kind === 'exports' ? `export ${item}` : item);
  }
}
console.log(JSON.stringify(report));
process.exit(report.undeclared.length || report.missing.length ? 1 : 0);
