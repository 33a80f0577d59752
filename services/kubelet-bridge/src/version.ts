import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The bridge's version, from its package.json. */
export const bridgeVersion: string = (JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }).version;
