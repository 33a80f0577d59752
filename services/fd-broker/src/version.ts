import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The broker's version, from its package.json. */
export const brokerVersion: string = (JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }).version;
