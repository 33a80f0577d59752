/*
 * The C reference's broker: the least a privileged process must do for one
 * handoff. It serves one connection at a time: check the peer's uid with
 * SO_PEERCRED, read a 1-byte request, open a fresh context (the device path
 * itself, or, like fd-broker's temporary-node strategy, a node made with
 * mknod, labelled, opened and removed), IOMMU_OPTION SET RLIMIT mode to 1,
 * GET it back, send one byte with the fd, close its copy.
 *
 * On the kernel stand-in, run it with the shim in LD_PRELOAD.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "common.h"

struct config {
	const char *socket_path;
	const char *device;
	const char *node_dir; /* NULL: open the device directly */
	const char *label;
	long allowed_uid; /* -1: any */
};

static void usage(void)
{
	fprintf(stderr, "usage: ref-broker --socket PATH --device PATH [--node-dir DIR [--label LABEL]] [--allowed-uid UID]\n");
	exit(2);
}

/* As native/c/iommu_device.c does for temporary-node: stat, mknod, label, open, check, unlink. */
static int open_via_node(const struct config *cfg)
{
	static unsigned long counter;
	struct stat st;
	if (stat(cfg->device, &st) < 0)
		return -errno;
	if (!S_ISCHR(st.st_mode))
		return -ENODEV;
	int dirfd = open(cfg->node_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dirfd < 0)
		return -errno;
	char name[64];
	snprintf(name, sizeof(name), ".ref-node-%d-%lu", (int)getpid(), ++counter);
	if (mknodat(dirfd, name, S_IFCHR | 0600, st.st_rdev) < 0) {
		int err = -errno;
		close(dirfd);
		return err;
	}
	int result = 0;
	if (cfg->label && cfg->label[0]) {
		char node_path[128];
		snprintf(node_path, sizeof(node_path), "/proc/self/fd/%d/%s", dirfd, name);
		if (lsetxattr(node_path, "security.selinux", cfg->label, strlen(cfg->label) + 1, 0) < 0 && errno != ENOTSUP)
			result = -errno;
	}
	if (result == 0) {
		result = openat(dirfd, name, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
		if (result < 0) {
			result = -errno;
		} else {
			struct stat opened;
			if (fstat(result, &opened) < 0 || !S_ISCHR(opened.st_mode) || opened.st_rdev != st.st_rdev) {
				close(result);
				result = -ENODEV;
			}
		}
	}
	if (unlinkat(dirfd, name, 0) < 0 && result >= 0) {
		close(result);
		result = -errno;
	}
	close(dirfd);
	return result;
}

/* A fresh context in RLIMIT mode, read back; the fd or -errno. */
static int open_context(const struct config *cfg)
{
	int fd = cfg->node_dir ? open_via_node(cfg) : open(cfg->device, O_RDWR | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return cfg->node_dir ? fd : -errno;
	uint64_t val = 1;
	int rc = rlimit_option(fd, IOMMU_OPTION_OP_SET, &val);
	if (rc == 0) {
		val = 0;
		rc = rlimit_option(fd, IOMMU_OPTION_OP_GET, &val);
		if (rc == 0 && val != 1)
			rc = -EIO;
	}
	if (rc < 0) {
		close(fd);
		return rc;
	}
	return fd;
}

static void serve(const struct config *cfg, int conn)
{
	struct ucred peer;
	socklen_t len = sizeof(peer);
	if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &peer, &len) < 0)
		return;
	if (cfg->allowed_uid >= 0 && (long)peer.uid != cfg->allowed_uid)
		return;
	char request;
	ssize_t got;
	do
		got = recv(conn, &request, 1, 0);
	while (got < 0 && errno == EINTR);
	if (got != 1)
		return;
	int fd = open_context(cfg);
	if (fd < 0) {
		fprintf(stderr, "ref-broker: no context: %s\n", strerror(-fd));
		send_byte_with_fd(conn, 1, -1);
		return;
	}
	send_byte_with_fd(conn, 0, fd);
	close(fd);
}

int main(int argc, char **argv)
{
	struct config cfg = { .allowed_uid = -1 };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--socket") && i + 1 < argc)
			cfg.socket_path = argv[++i];
		else if (!strcmp(a, "--device") && i + 1 < argc)
			cfg.device = argv[++i];
		else if (!strcmp(a, "--node-dir") && i + 1 < argc)
			cfg.node_dir = argv[++i];
		else if (!strcmp(a, "--label") && i + 1 < argc)
			cfg.label = argv[++i];
		else if (!strcmp(a, "--allowed-uid") && i + 1 < argc)
			cfg.allowed_uid = strtol(argv[++i], NULL, 10);
		else
			usage();
	}
	if (!cfg.socket_path || !cfg.device)
		usage();
	int sock = listen_unix(cfg.socket_path, 0600);
	if (sock < 0) {
		fprintf(stderr, "ref-broker: cannot listen on %s: %s\n", cfg.socket_path, strerror(-sock));
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int conn = accept4(sock, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("ref-broker: accept");
			return 1;
		}
		serve(&cfg, conn);
		close(conn);
	}
}
