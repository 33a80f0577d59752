import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DataType, define, open } from 'ffi-rs';

/**
 * Loads build/libiommufd-native.so (built by `make` in native/) and declares
 * its functions. Signatures mirror c/iommufd_native.h; keep the two in step.
 */
const libraryPath = process.env.IOMMUFD_NATIVE_LIBRARY ?? join(__dirname, '..', 'build', 'libiommufd-native.so');
if (!existsSync(libraryPath)) {
  throw new Error(`native library not found at ${libraryPath}: run \`make -C native\` (or \`pnpm build\`) first`);
}

const library = 'iommufd-native';
open({ library, path: libraryPath });

const I32 = DataType.I32;
const str = DataType.String;
// ffi-rs passes a Buffer's own memory for U8Array, so C can fill it in place.
const bytes = DataType.U8Array;

export const native = define({
  ifn_send_with_fd: { library, retType: I32, paramsType: [I32, bytes, I32, I32] },
  ifn_recv_with_fd: { library, retType: I32, paramsType: [I32, bytes, I32, I32, bytes], runInNewThread: true },
  ifn_peer_credentials: { library, retType: I32, paramsType: [I32, bytes] },
  ifn_connect_unix: { library, retType: I32, paramsType: [str, I32], runInNewThread: true },
  ifn_close: { library, retType: I32, paramsType: [I32] },
  ifn_open_device: { library, retType: I32, paramsType: [str], runInNewThread: true },
  ifn_open_device_via_node: { library, retType: I32, paramsType: [str, str, str, bytes], runInNewThread: true },
  ifn_set_rlimit_mode: { library, retType: I32, paramsType: [I32, I32] },
  ifn_get_rlimit_mode: { library, retType: I32, paramsType: [I32] },
  ifn_set_selinux_label: { library, retType: I32, paramsType: [str, str] },
  ifn_restrict_and_reexec: { library, retType: I32, paramsType: [str, DataType.StringArray, I32, DataType.U64] },
});
