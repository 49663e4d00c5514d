import { expect } from 'chai';
import { UnauthorizedError } from '../../src/errors.js';
import {
  accessTokenVerifier,
  issueAccessToken,
  type TokenSettings,
} from '../../src/commands/identity/tokens.js';

const settings: TokenSettings = {
  secret: 'a-test-secret-of-at-least-thirty-two-characters',
  accessTtlSeconds: 300,
  refreshTtlSeconds: 604800,
  issuer: 'task-manager',
  audience: 'task-manager',
};
const issuedAt = new Date('2026-12-07T10:00:00.000Z');
const subject = { userId: 'user-1', role: 'user' as const, sessionId: 'session-1' };

/** A clock the test moves by hand. */
function handClock(start: Date) {
  let now = start.getTime();
  return { now: () => new Date(now), set: (at: number) => (now = at) };
}

describe('access token verifier', () => {
  it('accepts a remembered token until the second it expires, as a fresh verification would', () => {
    const clock = handClock(issuedAt);
    const verify = accessTokenVerifier(settings, clock.now);
    const token = issueAccessToken(settings, subject, issuedAt, 'jti-1');
    const first = verify(token);
    expect(first).to.include({ userId: 'user-1', role: 'user', sessionId: 'session-1', jti: 'jti-1' });
    expect(Object.isFrozen(first), 'claims shared between requests are frozen').to.equal(true);
    const expiresAt = issuedAt.getTime() + settings.accessTtlSeconds * 1000;
    // A caller that moves the Date it was handed does not move the remembered expiry.
    first.expiresAt.setTime(expiresAt + 3_600_000);
    clock.set(expiresAt - 1);
    expect(verify(token), 'remembered').to.equal(first);
    clock.set(expiresAt);
    expect(() => verify(token)).to.throw(UnauthorizedError, 'expired');
    expect(() => accessTokenVerifier(settings, clock.now)(token), 'a fresh verifier agrees').to.throw(
      UnauthorizedError,
      'expired',
    );
  });

  it('refuses a changed signature and another secret, also after a valid token was remembered', () => {
    const clock = handClock(issuedAt);
    const verify = accessTokenVerifier(settings, clock.now);
    const token = issueAccessToken(settings, subject, issuedAt, 'jti-2');
    verify(token);
    const [header, payload, signature] = token.split('.');
    const tampered = `${header}.${payload}.${signature!.slice(0, -2)}${signature!.endsWith('AA') ? 'BB' : 'AA'}`;
    for (let i = 0; i < 2; i++) expect(() => verify(tampered)).to.throw(UnauthorizedError, 'not valid');
    const otherSecret = issueAccessToken(
      { ...settings, secret: `${settings.secret}-other` },
      subject,
      issuedAt,
      'jti-3',
    );
    for (let i = 0; i < 2; i++) expect(() => verify(otherSecret)).to.throw(UnauthorizedError, 'not valid');
  });

  it('keeps at most `remember` tokens, the oldest forgotten first, and verifies a forgotten one again', () => {
    const clock = handClock(issuedAt);
    const verify = accessTokenVerifier(settings, clock.now, 2);
    const tokens = ['a', 'b', 'c'].map((jti) => issueAccessToken(settings, subject, issuedAt, jti));
    const claims = tokens.map((token) => verify(token));
    expect(verify(tokens[2]!), 'the newest is remembered').to.equal(claims[2]);
    const again = verify(tokens[0]!);
    expect(again, 'the oldest was forgotten, so verified anew').not.to.equal(claims[0]);
    expect(again).to.deep.equal(claims[0]);
  });
});
