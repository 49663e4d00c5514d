import { expect } from 'chai';
import { skipSuiteUnless } from '../support/skips.js';
import { call, startTestService, unavailableReason, type TestService } from '../support/service.js';
import { newEmail } from '../support/fixtures.js';
import { readWholeLog } from '../support/log.js';

/** Failed logins by address, with X-Forwarded-For set: counted by the TCP peer unless the proxy is trusted. */
describe('rate limits by client address, and http.trustProxy (embedded default)', function () {
  this.timeout(60000);
  const services: TestService[] = [];
  after(async () => {
    await Promise.all(services.map((service) => service.stop()));
  });

  const start = async (trustProxy: string[]) => {
    const service = await startTestService('embedded', (config) => {
      config.auth.maxFailedLoginsPerAddress = 3;
      config.auth.maxFailedLoginsPerEmail = 1000;
      config.http.trustProxy = trustProxy;
    });
    services.push(service);
    return service;
  };
  const failedLogin = (service: TestService, forwardedFor: string) =>
    call(service.url, 'POST', '/login', {
      body: { email: newEmail('proxy'), password: 'wrong-password' },
      headers: { 'x-forwarded-for': forwardedFor },
    });

  before(function () {
    const missing = unavailableReason('embedded');
    skipSuiteUnless(this, missing === null, missing ?? '');
  });

  it('by default ignores X-Forwarded-For: a new forged address per attempt still hits the limit', async () => {
    const service = await start([]);
    const statuses: number[] = [];
    for (let attempt = 1; attempt <= 4; attempt++)
      statuses.push((await failedLogin(service, `203.0.113.${attempt}`)).status);
    expect(statuses).to.deep.equal([401, 401, 401, 429]);
  });

  it("behind a trusted proxy counts each forwarded client apart, and records the client's address", async () => {
    const service = await start(['loopback']);
    const apart: number[] = [];
    for (let attempt = 1; attempt <= 5; attempt++)
      apart.push((await failedLogin(service, `203.0.113.${attempt}`)).status);
    expect(apart).to.deep.equal([401, 401, 401, 401, 401]);
    const same: number[] = [];
    for (let attempt = 1; attempt <= 4; attempt++)
      same.push((await failedLogin(service, '198.51.100.7')).status);
    expect(same).to.deep.equal([401, 401, 401, 429]);

    const addresses = (await readWholeLog(service.service.infrastructure.store))
      .filter((event) => event.type === 'LoginFailed')
      .map((event) => (event.data as { clientAddress: string }).clientAddress);
    expect(addresses).to.include('198.51.100.7').and.include('203.0.113.5');
  });
});
