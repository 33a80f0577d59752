import { join, resolve } from 'node:path';

/** Where things are in the repository, from test/dist/support/ at run time. */
export const repoRoot = resolve(__dirname, '..', '..', '..');
export const fakeIommuLibrary = join(repoRoot, 'test', 'kernel-stand-in', 'build', 'libfake-iommu.so');
export const launcherStandIn = join(repoRoot, 'test', 'launcher-stand-in', 'build', 'launcher-stand-in');
export const fdBrokerBin = join(repoRoot, 'services', 'fd-broker', 'bin', 'fd-broker');
export const kubeletBridgeBin = join(repoRoot, 'services', 'kubelet-bridge', 'bin', 'kubelet-bridge');
