// The typed face of the native layer (see ../c). Nothing here blocks the event loop.
export { NativeError, errnoName } from './errors';
export { socketFd, sendWithFd, receiveWithFd, peerCredentials, connectUnix, closeFd } from './fd-passing';
export type { PeerCredentials, ReceivedMessage } from './fd-passing';
export { openIommuDevice, setRlimitMode, getRlimitMode, setSelinuxLabel } from './iommu-device';
export type { OpenStrategy } from './iommu-device';
export { capability, restrictCapabilitiesAndReexec } from './privileges';
