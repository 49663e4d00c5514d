/**
 * The Node flags the service runs with, as `npm start` and the Docker image start it (package.json, Dockerfile):
 * V8's young generation in 32 MB semi-spaces instead of 16, so a burst's short-lived objects (HTTP requests,
 * Kafka batches, rows) die in fewer scavenges (README, "Node's young generation"). `npm run bench` passes them to
 * its own process, which holds the in-process service; processes the bench spawns for a role get them from here;
 * the load process, which also runs the baselines, gets Node's defaults, as their users run them.
 */
export const SERVICE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=32'];

/** This process's Node options without the service's flags: what the load process is forked with. */
export const withoutServiceNodeFlags = (execArgv: readonly string[]): string[] =>
  execArgv.filter((flag) => !SERVICE_NODE_FLAGS.includes(flag));

/**
 * The service's flags this process lacks, on its command line or in NODE_OPTIONS (the bench started without
 * `npm run bench`): said in the report.
 */
export const missingServiceNodeFlags = (execArgv: readonly string[], nodeOptions = ''): string[] => {
  const given = [...execArgv, ...optionsOf(nodeOptions)];
  return SERVICE_NODE_FLAGS.filter((flag) => !given.includes(flag));
};

/** NODE_OPTIONS without the service's flags, for the load process's environment (undefined stays undefined). */
export const nodeOptionsWithoutServiceFlags = (nodeOptions: string | undefined): string | undefined =>
  nodeOptions === undefined ? undefined : withoutServiceNodeFlags(optionsOf(nodeOptions)).join(' ');

const optionsOf = (nodeOptions: string): string[] =>
  nodeOptions.split(/\s+/).filter((option) => option !== '');
