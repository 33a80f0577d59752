// One import point for every protocol the project speaks. The modules under
// ./gen are generated from ../schema by `buf generate` (ts-proto).
export * as deviceplugin from './gen/deviceplugin/v1beta1/api';
export * as podresources from './gen/podresources/v1/api';
export * as broker from './gen/broker/v1/broker';
