/*
 * A stand-in for virt-launcher's side of the IOMMUFD handoff, for tests and
 * the demo. It does what virt-launcher does: if the socket exists, connect
 * (stream), read into a 32-byte data buffer with a 256-byte control buffer,
 * and take the first fd of the first SCM_RIGHTS message. Options reproduce
 * the launcher builds seen in the field: one that reads ~5 s late, one that
 * never answers, one that goes away before reading.
 *
 * It then checks the context with IOMMU_OPTION GET (and, if asked, tries a
 * SET, which an unprivileged process must be refused) and prints one JSON
 * line describing what it observed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define IOMMU_OPTION _IO(';', 0x87)

struct iommu_option {
	uint32_t size;
	uint32_t option_id;
	uint16_t op;
	uint16_t __reserved;
	uint32_t object_id;
	uint64_t val64;
};

struct options {
	const char *socket_path;
	int read_delay_ms;
	int ack;
	int set_value; /* -1: do not try */
	int vanish;
	int hold_ms;
};

static void usage(void)
{
	fprintf(stderr,
		"usage: launcher-stand-in --socket PATH [--read-delay-ms N] [--ack] [--set 0|1]\n"
		"                         [--vanish] [--hold-ms N]\n"
		"  --read-delay-ms N  wait N ms after connecting before reading (virt-launcher builds wait ~5000)\n"
		"  --ack              send one byte back after receiving (older launchers); default: silent\n"
		"  --set V            after the GET, try IOMMU_OPTION SET of RLIMIT mode to V and GET again\n"
		"                     (an unprivileged launcher must get EPERM)\n"
		"  --vanish           connect, then close without reading\n"
		"  --hold-ms N        keep the received fd open N ms before exiting\n");
	exit(2);
}

static void sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static const char *errno_name(int err)
{
	switch (err) {
	case 0: return "";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EBADF: return "EBADF";
	case EACCES: return "EACCES";
	case EBUSY: return "EBUSY";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case ECONNREFUSED: return "ECONNREFUSED";
	case ECONNRESET: return "ECONNRESET";
	case EPIPE: return "EPIPE";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	default: return "EOTHER";
	}
}

/* One IOMMU_OPTION call on RLIMIT mode; returns 0 or errno. */
static int rlimit_option(int fd, uint16_t op, uint64_t *val)
{
	struct iommu_option cmd = { .size = sizeof(cmd), .option_id = 0, .op = op, .val64 = *val };
	if (ioctl(fd, IOMMU_OPTION, &cmd) < 0)
		return errno;
	*val = cmd.val64;
	return 0;
}

static int fail(const char *result, const char *step, int err)
{
	printf("{\"result\":\"%s\",\"step\":\"%s\",\"errno\":\"%s\",\"uid\":%d}\n", result, step,
	       errno_name(err), (int)geteuid());
	return 1;
}

int main(int argc, char **argv)
{
	struct options o = { .set_value = -1 };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--socket") && i + 1 < argc)
			o.socket_path = argv[++i];
		else if (!strcmp(a, "--read-delay-ms") && i + 1 < argc)
			o.read_delay_ms = atoi(argv[++i]);
		else if (!strcmp(a, "--hold-ms") && i + 1 < argc)
			o.hold_ms = atoi(argv[++i]);
		else if (!strcmp(a, "--ack"))
			o.ack = 1;
		else if (!strcmp(a, "--set") && i + 1 < argc)
			o.set_value = atoi(argv[++i]);
		else if (!strcmp(a, "--vanish"))
			o.vanish = 1;
		else
			usage();
	}
	if (!o.socket_path)
		usage();

	/* virt-launcher only attempts the handoff when the socket is there. */
	struct stat st;
	if (stat(o.socket_path, &st) < 0)
		return fail("no-socket", "stat", errno);

	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(o.socket_path) >= sizeof(addr.sun_path))
		return fail("error", "socket path", ENAMETOOLONG);
	strcpy(addr.sun_path, o.socket_path);
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return fail("error", "connect", errno);

	if (o.vanish) {
		close(sock);
		printf("{\"result\":\"vanished\",\"uid\":%d}\n", (int)geteuid());
		return 0;
	}
	if (o.read_delay_ms > 0)
		sleep_ms(o.read_delay_ms);

	char data[32];
	char control[256];
	struct iovec iov = { .iov_base = data, .iov_len = sizeof(data) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	ssize_t got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	if (got < 0)
		return fail("error", "recvmsg", errno);

	int fd = -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			memcpy(&fd, CMSG_DATA(c), sizeof(int));
			break;
		}
	}
	if (fd < 0) {
		printf("{\"result\":\"no-fd\",\"dataBytes\":%zd,\"uid\":%d}\n", got, (int)geteuid());
		return 1;
	}
	/* The fd is ours once received: a bridge gone by the time of the ACK does not spoil it. */
	const char *ack_result = "not-sent";
	if (o.ack) {
		char ack = 1;
		ack_result = send(sock, &ack, 1, MSG_NOSIGNAL) < 0 ? errno_name(errno) : "ok";
	}
	close(sock);

	char target[256] = "";
	char link[64];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t tlen = readlink(link, target, sizeof(target) - 1);
	target[tlen > 0 ? tlen : 0] = '\0';

	uint64_t mode = 0;
	int get_err = rlimit_option(fd, 1, &mode);
	const char *set_result = "not-tried";
	uint64_t mode_after = mode;
	if (o.set_value >= 0) {
		uint64_t value = (uint64_t)o.set_value;
		int set_err = rlimit_option(fd, 0, &value);
		set_result = set_err ? errno_name(set_err) : "ok";
		rlimit_option(fd, 1, &mode_after);
	}
	printf("{\"result\":\"ok\",\"dataBytes\":%zd,\"firstByte\":%d,\"target\":\"%s\",\"getErrno\":\"%s\","
	       "\"rlimitMode\":%d,\"set\":\"%s\",\"rlimitModeAfterSet\":%d,\"ack\":\"%s\",\"uid\":%d,\"pid\":%d}\n",
	       got, got > 0 ? (unsigned char)data[0] : -1, target, errno_name(get_err), get_err ? -1 : (int)mode,
	       set_result, get_err ? -1 : (int)mode_after, ack_result, (int)geteuid(), (int)getpid());
	fflush(stdout);
	if (o.hold_ms > 0)
		sleep_ms(o.hold_ms);
	close(fd);
	return get_err ? 1 : 0;
}
