/*
 * The native layer of the IOMMUFD device plugin: only what Node.js cannot do.
 * Every function returns a non-negative result or -errno; TypeScript turns
 * that into a named error (native/src/errors.ts).
 */
#ifndef IOMMUFD_NATIVE_H
#define IOMMUFD_NATIVE_H

#include <stdint.h>

/* Steps of ifn_open_device_via_node, reported so an error can name its syscall. */
enum ifn_step {
	IFN_STEP_NONE = 0,
	IFN_STEP_STAT = 1,
	IFN_STEP_OPEN_DIR = 2,
	IFN_STEP_MKNOD = 3,
	IFN_STEP_LABEL = 4,
	IFN_STEP_OPEN = 5,
	IFN_STEP_VERIFY_NODE = 6,
	IFN_STEP_UNLINK = 7,
};

/* fd_passing.c */
int ifn_send_with_fd(int sock, const uint8_t *data, int32_t len, int32_t fd);
int ifn_recv_with_fd(int sock, uint8_t *buf, int32_t cap, int32_t timeout_ms, int32_t *out_fd);
int ifn_peer_credentials(int sock, int32_t *out_pid_uid_gid);
int ifn_connect_unix(const char *path, int32_t timeout_ms);
int ifn_close(int fd);

/* iommu_device.c */
int ifn_open_device(const char *path);
int ifn_open_device_via_node(const char *device, const char *dir, const char *label, int32_t *out_step);
int ifn_set_rlimit_mode(int fd, int32_t enabled);
int ifn_get_rlimit_mode(int fd);
int ifn_set_selinux_label(const char *path, const char *label);

/* privileges.c */
int ifn_restrict_and_reexec(const char *exe, const char *const *argv, int32_t argc, uint64_t keep);

#endif
