/*
 * Opening the IOMMUFD device and the one ioctl we need, IOMMU_OPTION, for
 * RLIMIT mode. The struct layout and numbers are the kernel's uAPI
 * (include/uapi/linux/iommufd.h); we spell them out here so the library
 * builds on systems whose headers predate IOMMUFD.
 */
#include "iommufd_native.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define IOMMUFD_TYPE ';'
#define IOMMU_OPTION _IO(IOMMUFD_TYPE, 0x87)

#define IOMMU_OPTION_RLIMIT_MODE 0
#define IOMMU_OPTION_OP_SET 0
#define IOMMU_OPTION_OP_GET 1

struct iommu_option {
	uint32_t size;
	uint32_t option_id;
	uint16_t op;
	uint16_t __reserved;
	uint32_t object_id;
	uint64_t val64;
};

_Static_assert(sizeof(struct iommu_option) == 24, "struct iommu_option is 24 bytes in the uAPI");
_Static_assert(IOMMU_OPTION == 0x3b87, "IOMMU_OPTION is _IO(';', 0x87)");

#define SELINUX_XATTR "security.selinux"

int ifn_open_device(const char *path)
{
	int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
	return fd < 0 ? -errno : fd;
}

/*
 * Make a temporary node with the device's major:minor inside dir, label it,
 * open it and remove it. Under SELinux a container may only receive an fd
 * whose file carries a label it may use; the host's /dev/iommu carries
 * another, so we open a node we labelled ourselves.
 *
 * out[0] receives the failing step (an IFN_STEP_*), so errors can name it.
 */
int ifn_open_device_via_node(const char *device, const char *dir, const char *label,
			     int32_t *out_step)
{
	struct stat st;
	*out_step = IFN_STEP_STAT;
	if (stat(device, &st) < 0)
		return -errno;
	if (!S_ISCHR(st.st_mode))
		return -ENODEV;

	*out_step = IFN_STEP_OPEN_DIR;
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dirfd < 0)
		return -errno;

	/* Unique among concurrent calls of this and other processes: pid, time, counter. */
	static unsigned long counter;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	char name[96];
	snprintf(name, sizeof(name), ".iommufd-node-%d-%ld%09ld-%lu", (int)getpid(),
		 (long)now.tv_sec, now.tv_nsec, __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));

	int result;
	*out_step = IFN_STEP_MKNOD;
	if (mknodat(dirfd, name, S_IFCHR | 0600, st.st_rdev) < 0) {
		result = -errno;
		close(dirfd);
		return result;
	}

	if (label[0] != '\0') {
		/* lsetxattr has no *at form; reach the node through our dirfd so no path can be swapped. */
		char node_path[128];
		snprintf(node_path, sizeof(node_path), "/proc/self/fd/%d/%s", dirfd, name);
		if (lsetxattr(node_path, SELINUX_XATTR, label, strlen(label) + 1, 0) < 0 &&
		    errno != ENOTSUP) {
			result = -errno;
			*out_step = IFN_STEP_LABEL;
			goto remove_node;
		}
	}

	*out_step = IFN_STEP_OPEN;
	result = openat(dirfd, name, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
	if (result < 0) {
		result = -errno;
		goto remove_node;
	}

	/* The node we opened must still be the device we meant. */
	struct stat opened;
	if (fstat(result, &opened) < 0 || !S_ISCHR(opened.st_mode) || opened.st_rdev != st.st_rdev) {
		close(result);
		result = -ENODEV;
		*out_step = IFN_STEP_VERIFY_NODE;
	}

remove_node:
	if (unlinkat(dirfd, name, 0) < 0 && result >= 0) {
		close(result);
		result = -errno;
		*out_step = IFN_STEP_UNLINK;
	}
	close(dirfd);
	if (result >= 0)
		*out_step = IFN_STEP_NONE;
	return result;
}

static int iommu_option_rlimit(int fd, uint16_t op, uint64_t *val64)
{
	struct iommu_option cmd = {
		.size = sizeof(cmd),
		.option_id = IOMMU_OPTION_RLIMIT_MODE,
		.op = op,
		.val64 = *val64,
	};
	if (ioctl(fd, IOMMU_OPTION, &cmd) < 0)
		return -errno;
	*val64 = cmd.val64;
	return 0;
}

int ifn_set_rlimit_mode(int fd, int32_t enabled)
{
	uint64_t val = enabled ? 1 : 0;
	return iommu_option_rlimit(fd, IOMMU_OPTION_OP_SET, &val);
}

int ifn_get_rlimit_mode(int fd)
{
	uint64_t val = 0;
	int rc = iommu_option_rlimit(fd, IOMMU_OPTION_OP_GET, &val);
	return rc < 0 ? rc : (int)(val != 0);
}

int ifn_set_selinux_label(const char *path, const char *label)
{
	/* lsetxattr: never follow a symlink planted where our socket should be. */
	if (lsetxattr(path, SELINUX_XATTR, label, strlen(label) + 1, 0) < 0)
		return -errno;
	return 0;
}
