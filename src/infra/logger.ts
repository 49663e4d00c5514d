import { pino, type Logger } from 'pino';

export type { Logger };

export const createLogger = (level: string, name = 'task-manager'): Logger =>
  pino({
    name,
    level,
    redact: { paths: ['*.password', '*.refresh_token', '*.access_token', '*.authorization'] },
  });

/** A logger for tests and tools that should stay quiet unless LOG_LEVEL asks otherwise. */
export const silentLogger = (): Logger => pino({ level: 'silent' });
