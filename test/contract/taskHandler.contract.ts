import { expect } from 'chai';
import { Ajv2020 } from 'ajv/dist/2020.js';
import formatsPlugin from 'ajv-formats';
import { randomUUID } from 'node:crypto';
import { silentLogger } from '../../src/infra/logger.js';
import {
  HandlerRegistry,
  isAbortError,
  type TaskHandler,
  type TaskHandlerContext,
} from '../../src/workers/handlers/handler.js';
import { rejection } from '../support/fixtures.js';

export interface ProgressReport {
  fraction: number;
  message: string | undefined;
}

/** A context as the worker would pass it; `reports` collects progress calls. */
export function handlerContext(signal: AbortSignal = new AbortController().signal): TaskHandlerContext & {
  reports: ProgressReport[];
} {
  const reports: ProgressReport[] = [];
  return {
    taskId: randomUUID(),
    attempt: 1,
    signal,
    progress: (fraction, message) => reports.push({ fraction, message }),
    logger: silentLogger(),
    dependencies: async () => [],
    reports,
  };
}

export interface HandlerSample {
  handler: TaskHandler;
  /** A payload the schema accepts. */
  payload: unknown;
  /** `rejects` for a handler whose job is to fail (fail); its rejection must still be a proper Error. */
  outcome?: 'resolves' | 'rejects';
}

/** Settles like `promise`, or rejects if it has not settled within `ms`. */
function within<T>(ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** What the worker runtime relies on from every handler, whatever it does. */
export function taskHandlerContract(
  name: string,
  setUp: () => Promise<HandlerSample> | HandlerSample,
  tearDown: () => Promise<void> | void = () => {},
) {
  describe(`task handler contract: ${name}`, function () {
    let sample: HandlerSample;
    before(async () => {
      sample = await setUp();
    });
    after(async () => {
      await tearDown();
    });

    it('has a type and a description', () => {
      expect(sample.handler.type).to.match(/^[a-z][a-z0-9_.-]*$/);
      expect(sample.handler.description.trim()).to.not.equal('');
    });

    it('has a payload schema that compiles in ajv strict mode and accepts the sample payload', () => {
      const ajv = new Ajv2020({ strict: true, allowUnionTypes: true, allErrors: true });
      (formatsPlugin as unknown as (ajv: Ajv2020) => void)(ajv);
      const validate = ajv.compile(sample.handler.payloadSchema);
      expect(validate(sample.payload), ajv.errorsText(validate.errors)).to.equal(true);
      expect(
        new HandlerRegistry([sample.handler]).catalogue.validatePayload(sample.handler.type, sample.payload),
      ).to.deep.equal([]);
    });

    it('rejects promptly with an abort error when its signal is already aborted', async () => {
      const controller = new AbortController();
      controller.abort(new Error('worker stopping'));
      const error = await within(
        1000,
        rejection(sample.handler.run(sample.payload, handlerContext(controller.signal))),
      );
      expect(isAbortError(error), String(error)).to.equal(true);
    });

    it('resolves with a result that survives JSON serialisation unchanged (or rejects with an Error)', async () => {
      const context = handlerContext();
      if (sample.outcome === 'rejects') {
        const error = await rejection(sample.handler.run(sample.payload, context));
        expect(error).to.be.instanceOf(Error);
        expect((error as Error).message)
          .to.be.a('string')
          .and.not.equal('');
        expect(isAbortError(error)).to.equal(false);
      } else {
        const result = await sample.handler.run(sample.payload, context);
        expect(JSON.parse(JSON.stringify(result))).to.deep.equal(result);
      }
      for (const { fraction } of context.reports) expect(fraction).to.be.within(0, 1);
    });
  });
}
