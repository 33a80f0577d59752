export * from './command-line';
export * from './logger';
export * from './broker-framing';
export * from './broker-client';
export * from './unix-listener';
export * from './ops-http';
