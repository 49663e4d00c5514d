import { expect } from 'chai';
import { REDACTED } from '../../src/domain/identity/credentials.js';
import { readWholeLog } from '../support/log.js';
import { call, registerAndLogin, useTestService } from '../support/service.js';
import { readTopicAsOutsider } from '../support/kafka.js';

describe('no credential material leaves the event store (full stack: PostgreSQL, Kafka, Redis)', function () {
  this.timeout(90000);
  const service = useTestService('full');

  it('publishes register, login, refresh, token reuse and logout with every password and token hash redacted', async () => {
    const base = service.url;
    const account = await registerAndLogin(base, { label: 'bus-secrets' });
    const refreshed = await call(base, 'POST', '/refresh', {
      body: { refresh_token: `Bearer ${account.refreshToken}` },
    });
    expect(refreshed.status).to.equal(200);
    // The first token again: reuse, which revokes the session (RefreshTokenReuseDetected, SessionRevoked).
    const reused = await call(base, 'POST', '/refresh', {
      body: { refresh_token: `Bearer ${account.refreshToken}` },
    });
    expect(reused.status).to.equal(401);
    const second = await call(base, 'POST', '/login', {
      body: { email: account.email, password: account.password },
    });
    expect(second.status).to.equal(200);
    const loggedOut = await call(base, 'POST', '/logout', {
      body: { refresh_token: `Bearer ${second.body.refresh_token}` },
      token: second.body.access_token,
    });
    expect(loggedOut.status).to.be.oneOf([200, 204]);

    const store = service.service.infrastructure.store;
    const log = await readWholeLog(store);
    const types = new Set(log.map((event) => event.type));
    for (const type of [
      'UserRegistered',
      'SessionStarted',
      'RefreshTokenRotated',
      'RefreshTokenReuseDetected',
      'SessionRevoked',
    ])
      expect(types, type).to.include(type);
    // What the store keeps (the command side folds it; the hash chain covers it), and must not be on the topic.
    const secrets = log.flatMap((event) =>
      ['passwordHash', 'refreshTokenHash', 'previousTokenHash', 'presentedTokenHash'].flatMap((field) => {
        const value = (event.data as Record<string, unknown>)[field];
        return typeof value === 'string' ? [value] : [];
      }),
    );
    expect(secrets.length).to.be.at.least(6);

    const messages = await readTopicAsOutsider(
      service.config.kafka.brokers,
      service.config.kafka.topic,
      log.length,
    );
    // Every event of the log is there, keyed by its stream; only the credential fields differ.
    expect(messages.map((m) => m.headers.position).sort()).to.deep.equal(
      log.map((event) => event.position).sort(),
    );
    for (const message of messages) {
      for (const secret of secrets) expect(message.value, message.headers.type).not.to.include(secret);
      // Nor the email in clear: it is sealed with the user's key in the log already (personal data, issue 12).
      expect(message.value, message.headers.type).not.to.include(account.email);
    }
    const published = new Map(messages.map((m) => [m.headers.position, m]));
    for (const event of log) {
      const message = published.get(event.position)!;
      expect(message.key).to.equal(event.streamId);
      const data = JSON.parse((JSON.parse(message.value) as { rawData: string }).rawData) as Record<
        string,
        unknown
      >;
      const changed = Object.keys(event.data).filter((field) => data[field] !== event.data[field]);
      if (changed.length === 0) {
        expect(message.headers.redacted, event.type).to.equal(undefined);
        continue;
      }
      expect(message.headers.redacted, event.type).to.equal('1');
      for (const field of changed) expect(data[field], `${event.type}.${field}`).to.equal(REDACTED);
      expect(
        changed.every((field) => field.endsWith('Hash')),
        event.type,
      ).to.equal(true);
    }
    const registered = messages.find((m) => m.headers.type === 'UserRegistered')!;
    expect(JSON.parse(JSON.parse(registered.value).rawData).passwordHash).to.equal(REDACTED);

    // And the service still works from what it kept: a login with the password, a refresh with the new token.
    const third = await call(base, 'POST', '/login', {
      body: { email: account.email, password: account.password },
    });
    expect(third.status).to.equal(200);
    const again = await call(base, 'POST', '/refresh', {
      body: { refresh_token: `Bearer ${third.body.refresh_token}` },
    });
    expect(again.status).to.equal(200);
  });
});
