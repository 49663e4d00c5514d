#!/usr/bin/env node
// Runs the TypeScript sources directly through tsx, so `npx task-manager` works from a checkout after `npm ci`
// with no build step.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli.ts');
