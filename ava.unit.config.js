// Unit tests: compiled output of the *.test.ts files that sit beside the code in plugin/.
export default {
  files: ['dist/plugin/**/*.test.js'],
  timeout: '60s',
  workerThreads: false,
};
