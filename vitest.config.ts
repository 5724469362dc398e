import { defineConfig } from 'vitest/config';

// Integration and end-to-end tests share two CPUs, network namespaces and real peers
// (QEMU, dpdk-testpmd, ovsdb-server), so files run one at a time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['dist/**', 'node_modules/**'],
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
