/**
 * Suites that need a service which is not available skip themselves through here, so the run ends with a loud
 * list of what did not run and why (see test/support/reporter.cjs), never a silent pass.
 */
export const SKIP_FILE_ENV = 'TM_SKIP_REPORT';

export function skipSuiteUnless(context: Mocha.Context, available: boolean, reason: string): void {
  if (available) return;
  const line = `SKIPPED ${context.currentTest?.parent?.fullTitle() ?? context.test?.parent?.fullTitle() ?? ''}: ${reason}`;
  (globalThis as { __tmSkips?: Set<string> }).__tmSkips ??= new Set();
  (globalThis as { __tmSkips?: Set<string> }).__tmSkips!.add(line);
  context.skip();
}
