import { expect } from 'chai';
import { skipSuiteUnless } from '../support/skips.js';
import { unavailableReason } from '../support/service.js';
import {
  LOAD_FACTOR,
  expectNothingLost,
  metricTotal,
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
    // How long the relay takes to publish what was appended while the broker was down (reported, not asserted: a
    // timed assertion would fail on a slow machine, not on a bug). A relay that needed its send watchdog shows in
    // relay_restarts_total{reason="send_timeout"}.
    const backAt = Date.now();
    const headAtRestart = (await s.service.service.infrastructure.store.headPosition())!;
    await waitFor(
      'the relay to publish what was appended while the broker was down',
      async () => {
        const { rows } = await s.db.query<{ position: string }>(
          `SELECT position FROM log_checkpoints WHERE name = 'relay:kafka'`,
        );
        return rows[0] && rows[0].position >= headAtRestart ? true : undefined;
      },
      { timeoutMs: 120000, intervalMs: 50 },
    );
    const relayCaughtUpMs = Date.now() - backAt;
    // The API never needed Kafka: commands only append to the log.
    expect(acceptedWhileDown, 'tasks accepted while the broker was down').to.be.greaterThan(50 * LOAD_FACTOR);

    const { events, kafka: report } = await expectNothingLost(s, load, {
      done: 300 * LOAD_FACTOR,
      timeoutMs: 120000,
    });
    const watchdog = await metricTotal(s.url, 'relay_restarts_total', 'reason="send_timeout"');
    const errors = await metricTotal(s.url, 'relay_restarts_total', 'reason="error"');
    console.log(
      `      [kafka stopped] down ${downForMs} ms, ${acceptedWhileDown} tasks accepted meanwhile; ${events.length} events, ` +
        `${report.messages} Kafka messages, ${report.duplicated} re-published; relay caught up ${relayCaughtUpMs} ms ` +
        `after the broker was back, restarts: ${watchdog} by the send watchdog, ${errors} on errors`,
    );
  });
});
