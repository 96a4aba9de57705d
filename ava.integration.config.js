// Integration tests: real dockerd, real kernel, real netlink. They share one dockerd and one
// Membrane daemon per file, so files run one at a time.
export default {
  files: ['dist/integration/**/*.test.js'],
  timeout: '5m',
  concurrency: 1,
  workerThreads: false,
  serial: true,
};
