// Types of helpers.js, for the React package's tests (TypeScript) that use these helpers too.
import type { Broadcast, Notification } from '../mojavox-notify.js';
export const URL_BASE: string;
export function token(user: string, options?: { roles?: string[]; ttlSeconds?: number; tenant?: string }): string;
export function newUser(prefix?: string): string;
export function createNotification(userId: string, fields?: Record<string, unknown>): Promise<Notification>;
export function createBroadcast(fields?: Record<string, unknown>): Promise<Broadcast>;
export function until(predicate: () => boolean, options?: { timeoutMs?: number; what?: string }): Promise<void>;
export class FlakyProxy {
  constructor(target: string);
  url: string;
  refuse: boolean;
  listen(): Promise<FlakyProxy>;
  drop(): void;
  freeze(): void;
  close(): Promise<void>;
}
