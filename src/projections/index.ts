import type { Projection } from './projectionRunner.js';
import { usersProjection } from './users/projection.js';
import { refreshTokensProjection } from './refreshTokens/projection.js';
import { tasksProjection } from './tasks/projection.js';

/** Every read model the projector role keeps up to date. */
export const PROJECTIONS: readonly Projection[] = [usersProjection, refreshTokensProjection, tasksProjection];
