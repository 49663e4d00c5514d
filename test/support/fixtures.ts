import { randomBytes } from 'node:crypto';

/** A fresh address per call, labelled by the suite that made it, so suites sharing a database never collide. */
export const newEmail = (label: string): string => `${label}-${randomBytes(5).toString('hex')}@example.com`;

/** The error `promise` rejects with; fails the test if it resolves instead. */
export async function rejection(promise: Promise<unknown>): Promise<any> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection, but it resolved');
}
