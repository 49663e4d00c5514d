/**
 * src/queries/audit: the auditors' reads of the log itself (paged, filtered, secrets redacted, as of a time).
 */
import { REDACTED } from '../../domain/identity/credentials.js';
import type { Api } from '../../infra/http/api.js';
import { requireRole } from '../../infra/http/auth.js';
import type { JSONSchema } from '../../infra/jsonSchema.js';
import {
  isPosition,
  type EventStore,
  type JsonValue,
  type RecordedEvent,
} from '../../infra/eventStore/eventStore.js';
import { ValidationError } from '../../errors.js';

/**
 * Data keys that hold secrets or their hashes. Hashes of passwords and refresh tokens are still secrets to an
 * auditor: a leaked password hash can be attacked offline. Auditors who must re-verify the hash chain byte for
 * byte use `task-manager audit export`, an operator's tool.
 */
const SECRET_KEYS =
  /^(passwordHash|refreshTokenHash|previousTokenHash|presentedTokenHash|password|refreshToken|accessToken)$/;

export function redactSecrets(value: JsonValue): JsonValue {
  if (Array.isArray(value)) return value.map(redactSecrets);
  if (value && typeof value === 'object')
    return Object.fromEntries(
      Object.entries(value).map(([key, inner]) => [
        key,
        SECRET_KEYS.test(key) ? REDACTED : redactSecrets(inner),
      ]),
    );
  return value;
}

/** One event as auditors see it: what happened, when, caused by whom, and its place in the hash chain. */
export function auditView(event: RecordedEvent) {
  const { metadata } = event;
  return {
    stream_id: event.streamId,
    revision: event.revision,
    position: event.position,
    type: event.type,
    data: redactSecrets(event.data),
    metadata: {
      event_id: metadata.eventId,
      correlation_id: metadata.correlationId,
      causation_id: metadata.causationId,
      user_id: metadata.userId,
      timestamp: metadata.timestamp,
      hash: metadata.hash,
    },
    recorded_at: event.recordedAt,
  };
}

export const auditEventSchema: JSONSchema = {
  type: 'object',
  required: ['stream_id', 'revision', 'position', 'type', 'data', 'metadata', 'recorded_at'],
  properties: {
    stream_id: { type: 'string' },
    revision: { type: 'integer' },
    position: { type: 'string', description: 'Opaque; pass it as `after` to read on.' },
    type: { type: 'string' },
    data: { type: 'object', description: 'As recorded, with password and token hashes redacted.' },
    metadata: {
      type: 'object',
      properties: {
        event_id: { type: 'string' },
        correlation_id: { type: 'string' },
        causation_id: { type: ['string', 'null'] },
        user_id: { type: ['string', 'null'] },
        timestamp: { type: 'string', format: 'date-time' },
        hash: { type: 'string', description: 'SHA-256 chain hash (see README, "For auditors")' },
      },
    },
    recorded_at: { type: 'string', format: 'date-time' },
  },
};

interface AuditQuery {
  after?: string;
  limit?: number;
  stream?: string;
  type?: string;
  user_id?: string;
  from?: string;
  to?: string;
}

/** How much of the log one request may read looking for matches; the answer says where to go on from. */
const SCAN_BUDGET = 5000;

export function registerAuditRoutes(api: Api, deps: { store: EventStore }): void {
  const event = api.addSchema('AuditEvent', auditEventSchema);
  api.route<unknown, AuditQuery>(
    {
      method: 'get',
      path: '/audit/events',
      operationId: 'auditEvents',
      summary: 'The global event log, in order, for auditors',
      description:
        'Paged by position: pass `next_after` back as `after`. Filters narrow what is returned; a page may be short ' +
        '(or empty) when few events match, so keep going until `at_end` is true.',
      tags: ['audit'],
      auth: 'bearer',
      query: {
        type: 'object',
        additionalProperties: false,
        properties: {
          after: {
            type: 'string',
            maxLength: 64,
            description: 'Exclusive position; absent = from the start',
          },
          limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
          stream: { type: 'string', maxLength: 300 },
          type: { type: 'string', maxLength: 200 },
          user_id: { type: 'string', maxLength: 64 },
          from: {
            type: 'string',
            format: 'date-time',
            description: 'Events at or after this time (their command clock)',
          },
          to: { type: 'string', format: 'date-time', description: 'Events at or before this time' },
        },
      },
      responses: {
        200: {
          description: 'A page of the log',
          schema: {
            type: 'object',
            required: ['items', 'next_after', 'at_end'],
            properties: {
              items: { type: 'array', items: event },
              next_after: { type: ['string', 'null'] },
              at_end: { type: 'boolean' },
            },
          },
        },
        400: { description: 'Malformed filter' },
        401: { description: 'No valid access token' },
        403: { description: 'Needs the auditor or admin role' },
      },
    },
    async (req, res) => {
      requireRole(req, 'auditor', 'admin');
      const query = req.query;
      if (query.after !== undefined && !isPosition(query.after))
        throw new ValidationError([
          { path: '/query/after', message: 'must be a position from an earlier page' },
        ]);
      const limit = query.limit ?? 100;
      const from = query.from ? Date.parse(query.from) : -Infinity;
      const to = query.to ? Date.parse(query.to) : Infinity;
      const matches = (e: RecordedEvent) =>
        (!query.type || e.type === query.type) &&
        (!query.user_id || e.metadata.userId === query.user_id) &&
        Date.parse(e.metadata.timestamp) >= from &&
        Date.parse(e.metadata.timestamp) <= to;

      const items: RecordedEvent[] = [];
      let cursor: string | null = query.after ?? null;
      let atEnd = false;
      if (query.stream) {
        // One stream is small enough to read whole; positions still page it.
        const events = (await deps.store.readStream(query.stream)).filter(
          (e) => cursor === null || e.position > cursor,
        );
        for (const e of events) {
          if (items.length >= limit) break;
          cursor = e.position;
          if (matches(e)) items.push(e);
        }
        atEnd = items.length < limit || cursor === events[events.length - 1]?.position;
      } else {
        for (let scanned = 0; items.length < limit && scanned < SCAN_BUDGET;) {
          const page = await deps.store.readAll({
            after: cursor,
            limit: Math.min(1000, SCAN_BUDGET - scanned),
          });
          if (page.length === 0) {
            atEnd = true;
            break;
          }
          for (const e of page) {
            scanned++;
            cursor = e.position;
            if (matches(e)) items.push(e);
            if (items.length >= limit) break;
          }
        }
      }
      res
        .set('Cache-Control', 'no-store')
        .json({ items: items.map(auditView), next_after: cursor, at_end: atEnd });
    },
  );
}
