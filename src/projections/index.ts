/**
 * src/projections: the read models fed from the bus (a folder each), their runner, rebuild and
 * verify. This file is the one registry of read models.
 */
import type { Projection } from './projectionRunner.js';
import { usersProjection } from './users/projection.js';
import { refreshTokensProjection } from './refreshTokens/projection.js';
import { tasksProjection } from './tasks/projection.js';
import { schedulesProjection } from './schedules/projection.js';

/** Every read model the projector role keeps up to date. */
export const PROJECTIONS: readonly Projection[] = [
  usersProjection,
  refreshTokensProjection,
  tasksProjection,
  schedulesProjection,
];
