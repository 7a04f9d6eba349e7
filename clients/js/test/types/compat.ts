// The hand-written declarations against those tsc derives from the module's own JSDoc
// (generated/, made by tests/test_js_types.py with `tsc --allowJs --declaration`): what each
// method resolves with must fit its declared return type, what a caller may pass must be
// accepted, each event's payload and each public property must fit their declared types.
// A mismatch is a compile error naming the member: `false` where `true` is required.

import type * as Code from './generated/mojavox-notify.js';
import type * as Types from '../../mojavox-notify.js';

type Fits<From, To> = [From] extends [To] ? true : false;
type AllTrue<T> = { [K in keyof T]: true };

type Client = Types.NotifyClient;
type Generic = 'on' | 'off' | 'request'; // generic in both: their events are compared below
type Methods = Exclude<{ [K in keyof Client]: Client[K] extends (...args: never[]) => unknown ? K : never }[keyof Client], Generic>;
// `options` is inferred from the defaults alone there (the spread of the given ones is lost).
type Fields = Exclude<keyof Client, Methods | Generic | 'options'>;

type Returns = { [K in Methods]: Fits<Awaited<ReturnType<Code.NotifyClient[K]>>, Awaited<ReturnType<Client[K]>>> };
type Accepts = { [K in Methods]: Fits<Parameters<Client[K]>, Parameters<Code.NotifyClient[K]>> };
type Properties = { [K in Fields]: Fits<Code.NotifyClient[K], Client[K]> };
type Events = { [K in keyof Types.ClientEvents]: Fits<Code.ClientEvents[K], Types.ClientEvents[K]> };
type ErrorFields = { [K in Exclude<keyof Types.NotifyApiError, keyof Error>]: Fits<Code.NotifyApiError[K], Types.NotifyApiError[K]> };
type Payloads = {
  Notification: Fits<Code.Notification, Types.Notification>;
  Escalation: Fits<Code.Escalation, Types.Escalation>;
  ListedEscalation: Fits<Code.ListedEscalation, Types.ListedEscalation>;
  Broadcast: Fits<Code.Broadcast, Types.Broadcast>;
  HistoryPage: Fits<Code.HistoryPage, Types.HistoryPage>;
  UnreadCount: Fits<Code.UnreadCount, Types.UnreadCount>;
  Options: Fits<Types.ClientOptions, Code.ClientOptions>;
};

export const returns: AllTrue<Returns> = {} as Returns;
export const accepts: AllTrue<Accepts> = {} as Accepts;
export const properties: AllTrue<Properties> = {} as Properties;
export const events: AllTrue<Events> = {} as Events;
export const errorFields: AllTrue<ErrorFields> = {} as ErrorFields;
export const payloads: AllTrue<Payloads> = {} as Payloads;
