/*
 * Shared by the C reference's programs: the IOMMU_OPTION uAPI, a monotonic
 * clock, and sending / receiving one byte with one fd over a unix socket.
 */
#ifndef REF_COMMON_H
#define REF_COMMON_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define IOMMU_OPTION _IO(';', 0x87)
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

/* One IOMMU_OPTION call on RLIMIT mode; 0 or -errno. */
static inline int rlimit_option(int fd, uint16_t op, uint64_t *val)
{
	struct iommu_option cmd = { .size = sizeof(cmd), .option_id = IOMMU_OPTION_RLIMIT_MODE, .op = op, .val64 = *val };
	if (ioctl(fd, IOMMU_OPTION, &cmd) < 0)
		return -errno;
	*val = cmd.val64;
	return 0;
}

/* CLOCK_MONOTONIC in ns: the same clock as Node's process.hrtime, and shared by all processes. */
static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sends one byte, with `fd` attached as SCM_RIGHTS unless it is negative. */
static inline int send_byte_with_fd(int sock, char byte, int fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (fd >= 0) {
		memset(&control, 0, sizeof(control));
		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof(control.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	for (;;) {
		ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
		if (n == 1)
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 ? -errno : -EIO;
	}
}

/*
 * Receives as virt-launcher does: a 32-byte data buffer, a 256-byte control
 * buffer, the first fd of the first SCM_RIGHTS message. Returns the fd,
 * -ENODATA if the message carried none, or -errno.
 */
static inline int recv_fd(int sock)
{
	char data[32];
	char control[256];
	struct iovec iov = { .iov_base = data, .iov_len = sizeof(data) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	ssize_t got;
	do
		got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (got < 0 && errno == EINTR);
	if (got < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int fd;
			memcpy(&fd, CMSG_DATA(c), sizeof(int));
			return fd;
		}
	}
	return -ENODATA;
}

/* A listening unix stream socket at `path` (a stale one is replaced) with file mode `mode`; fd or -errno. */
static inline int listen_unix(const char *path, mode_t mode)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;
	unlink(path);
	if (bind(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0 || chmod(path, mode) < 0 || listen(sock, 4096) < 0) {
		int err = -errno;
		close(sock);
		return err;
	}
	return sock;
}

/* A unix stream socket connected to `path`; fd or -errno. */
static inline int connect_unix(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;
	int rc;
	do
		rc = connect(sock, (struct sockaddr *)&addr, sizeof(addr));
	while (rc < 0 && errno == EINTR);
	if (rc < 0) {
		int err = -errno;
		close(sock);
		return err;
	}
	return sock;
}

#endif
