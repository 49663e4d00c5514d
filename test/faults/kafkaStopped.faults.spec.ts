import { expect } from 'chai';
import { skipSuiteUnless } from '../support/skips.js';
import { unavailableReason } from '../support/service.js';
import {
  LOAD_FACTOR,
  expectNothingLost,
  startFaultStack,
  startLoad,
  type FaultStack,
} from './support/stack.js';
import { sleep, waitFor } from '../support/wait.js';
import { OwnKafka } from './support/processes.js';

describe('fault: the Kafka broker stopped for 10 seconds', function () {
  this.timeout(240000);
  let kafka: OwnKafka | null = null;
  let stack: FaultStack | null = null;

  before(async function () {
    const missing = unavailableReason('full');
    skipSuiteUnless(this, missing === null, missing ?? '');
    // A broker of this suite's own: stopping the shared one would break every other suite running beside it.
    this.timeout(180000);
    kafka = await OwnKafka.start();
    stack = await startFaultStack(['api', 'relay', 'projector', 'worker'], (config) => {
      config.kafka.brokers = kafka!.brokers;
    });
  });
  after(async () => {
    await stack?.stop();
    await kafka?.down();
  });

  it('keeps accepting tasks while the broker is down, and catches up once it is back', async () => {
    const s = stack!;
    const load = startLoad(s, { count: 300 * LOAD_FACTOR, concurrency: 8, perSecond: 15 * LOAD_FACTOR });
    await waitFor('a quarter of the load', async () => load.submitted >= 75 * LOAD_FACTOR || undefined, {
      timeoutMs: 60000,
      intervalMs: 100,
      ignoreErrors: true,
    });
    await kafka!.stopBroker();
    const stoppedAt = Date.now();
    const submittedAtStop = load.submitted;
    await sleep(10000);
    const acceptedWhileDown = load.submitted - submittedAtStop;
    await kafka!.startBroker();
    const downForMs = Date.now() - stoppedAt;
    // The API never needed Kafka: commands only append to the log.
    expect(acceptedWhileDown, 'tasks accepted while the broker was down').to.be.greaterThan(50 * LOAD_FACTOR);

    const { events, kafka: report } = await expectNothingLost(s, load, {
      done: 300 * LOAD_FACTOR,
      timeoutMs: 120000,
    });
    console.log(
      `      [kafka stopped] down ${downForMs} ms, ${acceptedWhileDown} tasks accepted meanwhile; ${events.length} events, ` +
        `${report.messages} Kafka messages, ${report.duplicated} re-published`,
    );
  });
});
