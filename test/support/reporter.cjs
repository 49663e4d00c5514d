// Mocha's spec reporter plus a closing line CI can read ("N passed, N failed, N skipped") and a loud list of
// suites that skipped themselves for want of a service.
const Mocha = require('mocha');
const { EVENT_RUN_END } = Mocha.Runner.constants;

class TaskManagerReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    runner.once(EVENT_RUN_END, () => {
      const { passes, failures, pending } = runner.stats ?? this.stats;
      const skips = globalThis.__tmSkips ? [...globalThis.__tmSkips] : [];
      if (skips.length > 0) {
        console.log('\n  !!! Not run, for want of a service:');
        for (const line of skips) console.log(`  !!! ${line}`);
      }
      console.log(`\n${passes} passed, ${failures} failed, ${pending} skipped`);
    });
  }
}
module.exports = TaskManagerReporter;
