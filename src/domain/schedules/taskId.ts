import { createHash } from 'node:crypto';

/** The namespace of scheduled task ids (a random UUID, fixed for ever: changing it would let a tick fire twice). */
const SCHEDULED_TASK_NAMESPACE = Buffer.from('6f1d3c2a8b4e4f0d9a7c5e3b1d2f4a6c', 'hex');

/**
 * The id of the task a schedule's tick queues: a UUID of version 5 (RFC 9562: SHA-1 over a namespace and a name) of
 * `<scheduleId>@<tick as ISO 8601>`. Every scheduler computes the same id for the same tick, so a second firing of
 * it appends TaskQueued to a stream that exists already, which the expected revision refuses: one task per tick.
 */
export function scheduledTaskId(scheduleId: string, tick: string): string {
  const hash = createHash('sha1')
    .update(SCHEDULED_TASK_NAMESPACE)
    .update(`${scheduleId.toLowerCase()}@${new Date(tick).toISOString()}`)
    .digest();
  const bytes = hash.subarray(0, 16);
  bytes[6] = (bytes[6]! & 0x0f) | 0x50;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
