import { expect } from 'chai';
import type { Browser, Page } from 'playwright-core';
import { chromiumMissing, launchChromium } from '../support/browser.js';
import { pino } from 'pino';
import { Api } from '../../src/infra/http/api.js';
import { createHttpApp, createMetrics, listen, type RunningServer } from '../../src/infra/http/app.js';
import { skipSuiteUnless } from '../support/skips.js';

async function startDemoApp(): Promise<RunningServer> {
  const api = new Api();
  api.route(
    {
      method: 'post',
      path: '/demo/:id',
      operationId: 'createDemo',
      summary: 'Create a demo thing',
      tags: ['demo'],
      params: { type: 'object', required: ['id'], properties: { id: { type: 'string' } } },
      body: {
        type: 'object',
        required: ['title'],
        additionalProperties: false,
        properties: { title: { type: 'string' } },
        examples: [{ title: 'write the report' }],
      },
      responses: { 201: { description: 'Created' } },
    },
    (req, res) => {
      res.status(201).json(req.body);
    },
  );
  const app = createHttpApp({
    logger: pino({ level: 'silent' }),
    bodyLimit: '10kb',
    api,
    readiness: [],
    metrics: createMetrics(),
    info: { title: 'task-manager', version: '0.0.0-e2e' },
  });
  return listen(app, 0, '127.0.0.1');
}

describe('Swagger UI in a browser', function () {
  this.timeout(60_000);
  let running: RunningServer | undefined;
  let browser: Browser | undefined;

  before(async function () {
    const missing = chromiumMissing();
    skipSuiteUnless(this, missing === null, missing ?? '');
    running = await startDemoApp();
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await running?.close(1000);
  });

  /** Opens `path` and returns the rendered operations plus every CSP violation and page error seen. */
  async function open(path: string): Promise<{ page: Page; operations: string[]; problems: string[] }> {
    const page = await browser!.newPage();
    const problems: string[] = [];
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(`console: ${message.text()}`);
    });
    await page.goto(`${running!.url}${path}`);
    await page.waitForSelector('.opblock', { timeout: 15_000 });
    const operations = await page.$$eval('.opblock', (blocks) =>
      blocks.map(
        (b) =>
          `${b.querySelector('.opblock-summary-method')?.textContent} ${b.querySelector('.opblock-summary-path')?.textContent}`,
      ),
    );
    return { page, operations, problems };
  }

  for (const path of ['/swagger/index.html', '/swagger', '/swagger/']) {
    it(`lists the API's operations at ${path}`, async () => {
      const { page, operations, problems } = await open(path);
      try {
        expect(operations.map((o) => o.replace(/\u200b/g, ''))).to.include.members([
          'POST /demo/{id}',
          'GET /health',
          'GET /ready',
          'GET /metrics',
          'GET /openapi.json',
        ]);
        expect(await page.textContent('.swagger-ui .info .title')).to.include('task-manager');
        // A CSP that blocks swagger-ui's scripts or styles shows up here, not as a missing element.
        expect(problems).to.deep.equal([]);
      } finally {
        await page.close();
      }
    });
  }

  it('shows the documented body example and the schema of the demo route', async () => {
    const { page } = await open('/swagger/index.html');
    try {
      await page.click('#operations-demo-createDemo .opblock-summary');
      // swagger-ui renders the panel first and its example a moment later: wait for the text itself.
      const panel = page.locator('#operations-demo-createDemo .opblock-body', {
        hasText: 'write the report',
      });
      await panel.waitFor({ timeout: 15_000 });
      expect(await panel.textContent()).to.include('write the report');
    } finally {
      await page.close();
    }
  });
});
