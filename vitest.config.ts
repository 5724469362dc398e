import { defineConfig } from 'vitest/config';
import { kvmRoute } from './test/support/kvm.js';

// Integration and end-to-end tests share two CPUs, network namespaces and real peers
// (QEMU, dpdk-testpmd, ovsdb-server), so files run one at a time.
// The tests that boot guests on KVM (test/kvm) run here only where /dev/kvm can boot Linux;
// elsewhere test/integration/vmm-kvm-nested.test.ts runs them inside the nested-KVM rig.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['dist/**', 'node_modules/**', ...(kvmRoute() === 'direct' ? [] : ['test/kvm/**'])],
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
