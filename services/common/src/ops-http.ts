import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type { Registry } from 'prom-client';
import type { Logger } from './logger';

/** A probe's answer: ok, or not with the reason an admin should read. */
export interface ProbeResult {
  ok: boolean;
  reason?: string;
  [detail: string]: unknown;
}

export interface OpsServerOptions {
  host: string;
  port: number;
  log: Logger;
  /** Liveness: is this process able to do its job at all? A failure makes the kubelet restart it. */
  liveness: () => ProbeResult;
  /** Readiness: can it serve right now? */
  readiness: () => ProbeResult;
  registry: Registry;
  /** More routes, registered as a fastify plugin. */
  routes?: (app: FastifyInstance) => void;
}

/**
 * The HTTP face both services show admins and the kubelet's probes:
 * /healthz, /readyz, /metrics, plus service-specific routes. Probe answers
 * are JSON, 200 when ok and 503 otherwise, with the reason.
 */
export async function startOpsServer(options: OpsServerOptions): Promise<FastifyInstance> {
  // Probes arrive every few seconds; logging each request would drown the useful lines.
  // fastify declares its own (structurally equal) pino types; ours is the same logger.
  const logger = options.log.child({ component: 'http' }) as unknown as FastifyBaseLogger;
  const app: FastifyInstance = Fastify({ loggerInstance: logger, logController: new LogController({ disableRequestLogging: true }) });

  const probe = (check: () => ProbeResult) => async (_request: unknown, reply: { code: (n: number) => unknown }) => {
    const result = check();
    reply.code(result.ok ? 200 : 503);
    return result;
  };
  app.get('/healthz', probe(options.liveness));
  app.get('/readyz', probe(options.readiness));
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', options.registry.contentType);
    return options.registry.metrics();
  });
  options.routes?.(app);

  await app.listen({ host: options.host, port: options.port });
  const address = app.server.address();
  options.log.info(
    { event: 'http_listening', host: options.host, port: typeof address === 'object' && address ? address.port : options.port },
    'HTTP endpoints ready: /healthz /readyz /metrics',
  );
  return app;
}
