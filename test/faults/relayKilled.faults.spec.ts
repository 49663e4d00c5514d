import { expect } from 'chai';
import { LOAD_FACTOR, expectNothingLost, startLoad, useFaultStack } from './support/stack.js';
import { sleep, waitFor } from '../support/wait.js';
import { faultedBatch, ROLE_START_TIMEOUT_MS, startSelfKillingRelay } from './support/processes.js';
import { startRoleProcess, type Child } from '../support/processes.js';
import type { Config } from '../../src/config.js';

describe('fault: the relay killed with SIGKILL between produce and checkpoint', function () {
  this.timeout(180000);
  // The relay only in its own processes.
  const stack = useFaultStack(['api', 'projector', 'worker']);

  it('publishes every event after three crashes, the re-sent batches absorbed as duplicates', async () => {
    const relayConfig: Config = structuredClone(stack.config);
    const load = startLoad(stack, { count: 300 * LOAD_FACTOR, concurrency: 8, perSecond: 30 * LOAD_FACTOR });

    // Three relays in a row, each SIGKILLed right after Kafka acknowledged its 1st, 2nd, 3rd batch: the first
    // holds the backlog that piled up while no relay ran, the others whatever was appended since.
    const faulted: Array<{ eventIds: string[] }> = [];
    for (const dieAtBatch of [1, 2, 3]) {
      await sleep(1000); // let events pile up
      const relay = await startSelfKillingRelay(relayConfig, dieAtBatch);
      const exit = await waitFor(
        'the relay to kill itself',
        async () => (relay.running() ? undefined : relay.exited),
        { timeoutMs: 60000, intervalMs: 100, ignoreErrors: true },
      );
      expect(exit.signal, relay.output().slice(-2000)).to.equal('SIGKILL');
      const batch = faultedBatch(relay.output());
      expect(batch, 'the relay died holding a produced, unrecorded batch').not.to.equal(null);
      faulted.push(batch!);
    }
    // And the real role process, killed at an arbitrary moment of its work.
    const arbitrary: Child = await startRoleProcess(relayConfig, ['relay'], ROLE_START_TIMEOUT_MS);
    await waitFor(
      'it to publish',
      async () => (arbitrary.output().includes('relay holds the lock') ? true : undefined),
      { timeoutMs: 20000, intervalMs: 100, ignoreErrors: true },
    );
    await sleep(700);
    await arbitrary.kill('SIGKILL');
    await sleep(1000);
    await startRoleProcess(relayConfig, ['relay'], ROLE_START_TIMEOUT_MS);

    const { events, kafka } = await expectNothingLost(stack, load, {
      done: 300 * LOAD_FACTOR,
      timeoutMs: 90000,
    });
    // The batches the dead relays had produced were published again by their successors: the crash really fell
    // between produce and checkpoint, and the duplicates changed nothing above.
    for (const batch of faulted)
      for (const id of batch.eventIds) expect(kafka.copies.get(id), `copies of ${id}`).to.be.at.least(2);
    console.log(
      `      [relay kill] ${events.length} events, ${kafka.messages} Kafka messages, ${kafka.duplicated} published more than once; ` +
        `died holding batches of ${faulted.map((b) => b.eventIds.length).join(', ')} events`,
    );
  });
});
