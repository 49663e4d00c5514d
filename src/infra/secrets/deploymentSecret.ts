/**
 * src/infra/secrets: the deployment's generated secrets, kept where every process of the deployment finds them.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Pool } from '../db/pool.js';
import type { Logger } from '../logger.js';

/** 256 bits: as strong as HS256's key can use. */
const GENERATED_SECRET_BYTES = 32;

/** Where a generated secret lives: a 0600 file in the embedded data directory, or the deployment's database. */
export type SecretHome = { kind: 'dataDir'; dataDir: string } | { kind: 'database'; pool: Pool };

export interface ResolvedSecret {
  value: string;
  /** `configured`, or where the generated one is kept (a file path, or `database table deployment_secrets`). */
  source: string;
  generated: boolean;
}

const newSecret = () => randomBytes(GENERATED_SECRET_BYTES).toString('base64url');

async function inDataDir(dataDir: string, name: string): Promise<{ value: string; where: string }> {
  const file = path.join(dataDir, `${name}.secret`);
  await mkdir(dataDir, { recursive: true });
  try {
    // 'wx' fails if the file exists, so two processes starting together keep the first one's secret.
    await writeFile(file, newSecret(), { mode: 0o600, flag: 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  // The data directory may be world-writable (as root, PostgreSQL's own user must create its folder in it),
  // so the file's own mode is what keeps the secret private; put it back if someone loosened it.
  await chmod(file, 0o600);
  const value = (await readFile(file, 'utf8')).trim();
  if (value.length < GENERATED_SECRET_BYTES) throw new Error(`${file}: the stored secret is too short`);
  return { value, where: file };
}

async function inDatabase(pool: Pool, name: string): Promise<{ value: string; where: string }> {
  // First writer wins: every process of the deployment reads the same row back. Two statements, since one
  // statement's snapshot would not see a row a concurrent first start committed while we waited on its key.
  await pool.query(
    'INSERT INTO deployment_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING',
    [name, newSecret()],
  );
  const { rows } = await pool.query<{ value: string }>(
    'SELECT value FROM deployment_secrets WHERE name = $1',
    [name],
  );
  if (!rows[0]) throw new Error(`deployment secret ${name} could be neither written nor read`);
  return { value: rows[0].value, where: 'database table deployment_secrets' };
}

/**
 * A signing secret for the deployment: the configured one when there is one, otherwise one generated on first
 * start and kept where the deployment keeps its state, so restarts and every API process share it. Nothing
 * written in the repository can ever sign an accepted token.
 */
export async function resolveDeploymentSecret(options: {
  name: string;
  configured: string | null;
  home: SecretHome;
  logger: Logger;
}): Promise<ResolvedSecret> {
  if (options.configured) return { value: options.configured, source: 'configured', generated: false };
  const { value, where } =
    options.home.kind === 'dataDir'
      ? await inDataDir(options.home.dataDir, options.name)
      : await inDatabase(options.home.pool, options.name);
  options.logger.warn(
    { secret: options.name, keptIn: where },
    `no ${options.name} configured: using a generated secret kept in ${where}`,
  );
  return { value, source: where, generated: true };
}
