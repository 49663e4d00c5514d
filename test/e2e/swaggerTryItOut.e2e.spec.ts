import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import type { Browser, Page } from 'playwright-core';
import { chromiumMissing, launchChromium } from '../support/browser.js';
import { skipSuiteUnless } from '../support/skips.js';
import { startTestService, type TestService } from '../support/service.js';

/** Swagger's "Try it out" against the real service: what a person exploring the API would do. */
describe('Swagger UI "Try it out" on the running service', function () {
  this.timeout(90_000);
  let service: TestService | undefined;
  let browser: Browser | undefined;

  before(async function () {
    const missing = chromiumMissing();
    skipSuiteUnless(this, missing === null, missing ?? '');
    service = await startTestService('embedded');
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await service?.stop();
  });

  async function tryItOut(
    page: Page,
    operation: string,
    body: unknown,
  ): Promise<{ status: string; response: string }> {
    const block = page.locator(`#operations-identity-${operation}`);
    await block.locator('.opblock-summary').click();
    await block.locator('.try-out__btn').click();
    await block.locator('textarea.body-param__text').fill(JSON.stringify(body));
    await block.locator('.execute').click();
    const status = block.locator('.live-responses-table .response .response-col_status');
    await status.waitFor({ timeout: 15_000 });
    return {
      status: (await status.textContent())!.trim(),
      response:
        (await block.locator('.live-responses-table .response .response-col_description').textContent()) ??
        '',
    };
  }

  it('registers and logs in from the Swagger page', async () => {
    const page = await browser!.newPage();
    try {
      await page.goto(`${service!.url}/swagger/index.html`);
      await page.waitForSelector('#operations-identity-register', { timeout: 15_000 });
      const email = `swagger-${randomBytes(4).toString('hex')}@example.com`;
      const registered = await tryItOut(page, 'register', { email, password: 'password from swagger' });
      expect(registered.status).to.equal('201');
      expect(registered.response).to.include(email);
      const loggedIn = await tryItOut(page, 'login', { email, password: 'password from swagger' });
      expect(loggedIn.status).to.equal('200');
      expect(loggedIn.response).to.include('access_token').and.include('refresh_token');
    } finally {
      await page.close();
    }
  });
});
