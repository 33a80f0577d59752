import { join } from 'node:path';
import { type FakeKernel, runningAsRoot } from './fake-kernel';
import { fdBrokerBin } from './paths';
import { ServiceProcess } from './service-process';

export interface BrokerUnderTest {
  process: ServiceProcess;
  socketPath: string;
}

/**
 * The open strategy a test broker uses unless told otherwise: temporary
 * nodes need mknod (CAP_MKNOD), and as a normal user the stand-in device is a
 * plain file, which only the direct strategy accepts.
 */
export const defaultStrategy = runningAsRoot ? 'temporary-node' : 'direct';

const ownUid = process.geteuid?.() ?? 0;

/**
 * Starts the real fd-broker on the kernel stand-in, listening in `dir`, and
 * waits until it serves. By default the stand-in counts our own uid (root in
 * CI) as holding CAP_SYS_RESOURCE, as it does for LocalNode's broker.
 */
export async function startBroker(
  kernel: FakeKernel,
  dir: string,
  options: { args?: string[]; privilegedUids?: number[] | null; waitForListening?: boolean } = {},
): Promise<BrokerUnderTest> {
  const socketPath = join(dir, 'broker.sock');
  const privilegedUids = options.privilegedUids === undefined ? [ownUid] : options.privilegedUids;
  const env = kernel.env(privilegedUids ? { privilegedUids } : {});
  // Port 0: a free port each, so brokers never collide; a later --http-port (or --open-strategy) in args wins.
  const args = ['--socket', socketPath, '--device', kernel.devicePath, '--node-dir', dir, '--open-strategy', defaultStrategy, '--http-port', '0', ...(options.args ?? [])];
  const process = new ServiceProcess(fdBrokerBin, args, env);
  if (options.waitForListening !== false) await process.waitForEvent('listening');
  return { process, socketPath };
}

export function brokerSocketIn(dir: string): string {
  return join(dir, 'broker.sock');
}
