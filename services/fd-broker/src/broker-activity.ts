import type { PeerCredentials } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import type { BrokerMetrics, RequestType } from './metrics';

/** One failed request, as /status shows it. */
export interface RecentError {
  time: string;
  type: RequestType | 'peer_refused';
  requestId: string;
  /** The protocol's error code without its prefix, e.g. "DEVICE_MISSING". */
  code: string;
  errno: string | null;
  syscall: string | null;
  message: string;
  peer: { uid: number; pid: number };
}

/** A client uid the broker has answered. */
export interface PeerSeen {
  uid: number;
  requests: number;
  lastPid: number;
  lastSeen: string;
}

export interface ActivityCounters {
  contextsOpened: number;
  openFailures: number;
  requests: Record<RequestType, number>;
  peersRefused: number;
}

/** One answered request: its kind, who asked, and the error if it failed. */
export interface AnsweredRequest {
  type: RequestType;
  requestId: string;
  peer: PeerCredentials;
  error?: broker.Error;
  /** For an opened context: seconds from the request to the fd being ready. */
  openSeconds?: number;
}

const recentErrorLimit = 20;
// Normally one or two uids (the bridge, an admin); the bound only guards against a flood of uids.
const peerLimit = 32;

/**
 * What the broker has done since it started, recorded once for every
 * reader: the Prometheus metrics, the counters of the status request, and
 * the recent errors and peers that /status shows. Memory stays bounded.
 */
export class BrokerActivity {
  readonly counters: ActivityCounters = {
    contextsOpened: 0,
    openFailures: 0,
    requests: { open_context: 0, status: 0, invalid: 0 },
    peersRefused: 0,
  };
  private readonly errors: RecentError[] = [];
  private readonly peers = new Map<number, PeerSeen>();

  constructor(private readonly metrics: BrokerMetrics) {}

  answered({ type, requestId, peer, error, openSeconds }: AnsweredRequest): void {
    this.counters.requests[type]++;
    this.metrics.requestAnswered(type, error ? 'error' : 'ok');
    this.sawPeer(peer);
    if (type === 'open_context') {
      if (error) {
        this.counters.openFailures++;
        this.metrics.contextOpenFailed(error.errnoName);
      } else {
        this.counters.contextsOpened++;
        this.metrics.contextOpened(openSeconds ?? 0);
      }
    }
    if (error) this.remember(type, requestId, error, peer);
  }

  peerRefused(peer: PeerCredentials, error: broker.Error): void {
    this.counters.peersRefused++;
    this.metrics.peerRefused();
    this.remember('peer_refused', '', error, peer);
  }

  /** Newest first. */
  recentErrors(): RecentError[] {
    return [...this.errors].reverse();
  }

  /** Most recently seen first. */
  peersSeen(): PeerSeen[] {
    return [...this.peers.values()].reverse();
  }

  private sawPeer(peer: PeerCredentials): void {
    const seen = this.peers.get(peer.uid) ?? { uid: peer.uid, requests: 0, lastPid: peer.pid, lastSeen: '' };
    seen.requests++;
    seen.lastPid = peer.pid;
    seen.lastSeen = new Date().toISOString();
    // Re-inserting keeps the map in order of last use, so the first entry is the one to drop.
    this.peers.delete(peer.uid);
    this.peers.set(peer.uid, seen);
    if (this.peers.size > peerLimit) this.peers.delete(this.peers.keys().next().value as number);
  }

  private remember(type: RecentError['type'], requestId: string, error: broker.Error, peer: PeerCredentials): void {
    this.errors.push({
      time: new Date().toISOString(),
      type,
      requestId,
      code: errorCodeName(error.code),
      errno: error.errnoName || null,
      syscall: error.syscall || null,
      message: error.message,
      peer: { uid: peer.uid, pid: peer.pid },
    });
    if (this.errors.length > recentErrorLimit) this.errors.shift();
  }
}

/** "ERROR_CODE_DEVICE_MISSING" → "DEVICE_MISSING", as logs and the bridge show it. */
export function errorCodeName(code: broker.ErrorCode): string {
  return broker.errorCodeToJSON(code).replace(/^ERROR_CODE_/, '');
}
