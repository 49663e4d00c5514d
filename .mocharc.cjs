module.exports = {
  'node-option': ['import=tsx'],
  extension: ['ts'],
  reporter: './test/support/reporter.cjs',
  timeout: 10000,
  exit: true,
  require: ['./test/support/setup.ts'],
};
