/*
 * iommu-probe - drive /dev/iommu (real, or the fake-iommu stand-in) one raw
 * syscall at a time, so tests can assert on exact errno values.
 *
 * Usage: iommu-probe STEP...   (see README.md for the steps)
 *
 * Prints one JSON object per step on stdout, e.g.
 *   {"step":"open","ok":true,"fd":3}
 *   {"step":"set","ok":false,"errno":"EPERM"}
 * A failing step is reported, not fatal. Exit status: 0, or 2 on a usage
 * error.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#define IOMMU_DESTROY 0x3b80u
#define IOMMU_IOAS_ALLOC 0x3b81u
#define IOMMU_OPTION 0x3b87u

#define OPTION_SIZE 24u
#define IOAS_ALLOC_SIZE 12u
#define DESTROY_SIZE 8u

#define MAX_FDS 64

static int fds[MAX_FDS];
static int nfds;
static int cur = -1; /* the fd the ioctl steps act on */

static const char *errno_name(int e)
{
	static char num[16];

	switch (e) {
#define N(x) case x: return #x;
	N(EPERM) N(ENOENT) N(ESRCH) N(EINTR) N(EIO) N(ENXIO) N(E2BIG) N(EBADF)
	N(EAGAIN) N(ENOMEM) N(EACCES) N(EFAULT) N(EBUSY) N(EEXIST) N(ENODEV)
	N(ENOTDIR) N(EISDIR) N(EINVAL) N(ENFILE) N(EMFILE) N(ENOTTY) N(ENOSPC)
	N(EROFS) N(ERANGE) N(ENOSYS) N(ELOOP) N(EOPNOTSUPP) N(ENAMETOOLONG)
	N(ECONNREFUSED) N(EOVERFLOW)
#undef N
	}
	snprintf(num, sizeof(num), "%d", e);
	return num;
}

static void usage_error(const char *msg, const char *arg)
{
	fprintf(stderr, "iommu-probe: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
	exit(2);
}

static int is_number(const char *s)
{
	char *end;

	if (!s || !*s)
		return 0;
	errno = 0;
	(void)strtoull(s, &end, 0);
	return *end == '\0' && errno == 0;
}

static unsigned long long num(const char *s)
{
	if (!is_number(s))
		usage_error("expected a number", s ? s : "(missing)");
	return strtoull(s, NULL, 0);
}

static void print_result(const char *step, int rc, int err, const char *extra)
{
	if (rc == 0)
		printf("{\"step\":\"%s\",\"ok\":true%s}\n", step, extra ? extra : "");
	else
		printf("{\"step\":\"%s\",\"ok\":false,\"errno\":\"%s\"}\n", step, errno_name(err));
}

static void add_fd(int fd)
{
	if (nfds == MAX_FDS)
		usage_error("too many open fds", NULL);
	fds[nfds++] = fd;
	cur = fd;
}

static void step_open(int dirfd, const char *path, int nofollow, const char *name)
{
	char extra[32];
	int fd = openat(dirfd, path, O_RDWR | O_CLOEXEC | (nofollow ? O_NOFOLLOW : 0));
	int err = errno;

	if (fd >= 0) {
		add_fd(fd);
		snprintf(extra, sizeof(extra), ",\"fd\":%d", fd);
	}
	print_result(name, fd < 0 ? -1 : 0, err, extra);
}

/* Build a struct iommu_option in a zeroed buffer of `size` bytes. */
static void step_option(const char *name, uint32_t size, uint32_t option_id, uint16_t op,
			uint16_t reserved, uint32_t object_id, uint64_t val64, int tail)
{
	size_t len = (size > OPTION_SIZE ? size : OPTION_SIZE) + 8;
	unsigned char *buf = calloc(1, len);
	char extra[48];
	int rc, err;

	if (!buf)
		usage_error("out of memory", NULL);
	memcpy(buf + 0, &size, 4);
	memcpy(buf + 4, &option_id, 4);
	memcpy(buf + 8, &op, 2);
	memcpy(buf + 10, &reserved, 2);
	memcpy(buf + 12, &object_id, 4);
	memcpy(buf + 16, &val64, 8);
	buf[OPTION_SIZE] = (unsigned char)tail;
	rc = ioctl(cur, IOMMU_OPTION, buf);
	err = errno;
	memcpy(&val64, buf + 16, 8);
	snprintf(extra, sizeof(extra), ",\"val64\":%llu", (unsigned long long)val64);
	print_result(name, rc, err, extra);
	free(buf);
}

static void step_ioas_alloc(uint32_t size, uint32_t flags, int tail)
{
	size_t len = (size > IOAS_ALLOC_SIZE ? size : IOAS_ALLOC_SIZE) + 8;
	unsigned char *buf = calloc(1, len);
	char extra[32];
	uint32_t id;
	int rc, err;

	if (!buf)
		usage_error("out of memory", NULL);
	memcpy(buf + 0, &size, 4);
	memcpy(buf + 4, &flags, 4);
	buf[IOAS_ALLOC_SIZE] = (unsigned char)tail;
	rc = ioctl(cur, IOMMU_IOAS_ALLOC, buf);
	err = errno;
	memcpy(&id, buf + 8, 4);
	snprintf(extra, sizeof(extra), ",\"id\":%u", id);
	print_result("ioas_alloc", rc, err, extra);
	free(buf);
}

static void step_destroy(uint32_t id, uint32_t size, int tail)
{
	size_t len = (size > DESTROY_SIZE ? size : DESTROY_SIZE) + 8;
	unsigned char *buf = calloc(1, len);
	int rc, err;

	if (!buf)
		usage_error("out of memory", NULL);
	memcpy(buf + 0, &size, 4);
	memcpy(buf + 4, &id, 4);
	buf[DESTROY_SIZE] = (unsigned char)tail;
	rc = ioctl(cur, IOMMU_DESTROY, buf);
	err = errno;
	print_result("destroy", rc, err, NULL);
	free(buf);
}

static void step_raw_ioctl(unsigned long request, int null_arg)
{
	unsigned char buf[64] = { 0 };
	int rc = ioctl(cur, request, null_arg ? NULL : buf);

	print_result("raw_ioctl", rc, errno, NULL);
}

static void step_setuid(uid_t uid)
{
	char extra[32];
	int rc = setgroups(0, NULL);

	if (rc == 0)
		rc = setgid((gid_t)uid);
	if (rc == 0)
		rc = setuid(uid);
	snprintf(extra, sizeof(extra), ",\"uid\":%u", (unsigned)geteuid());
	print_result("setuid", rc, errno, extra);
}

/* ---- stat ---- */

/* The glibc-before-2.33 entry points; still exported, no longer declared. */
int __fxstat(int ver, int fd, struct stat *st);
int __fxstat64(int ver, int fd, struct stat64 *st);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags);

#define STAT_VER 1 /* _STAT_VER_LINUX on x86_64 */

static const char *const fstat_vias[] = {
	"fstat", "fstat64", "fstatat", "fstatat64", "statx",
	"fxstat", "fxstat64", "fxstatat", "fxstatat64", NULL,
};

static int is_fstat_via(const char *s)
{
	for (int i = 0; fstat_vias[i]; i++)
		if (strcmp(s, fstat_vias[i]) == 0)
			return 1;
	return 0;
}

static const char *file_type(unsigned mode)
{
	switch (mode & S_IFMT) {
	case S_IFCHR: return "chr";
	case S_IFREG: return "reg";
	case S_IFDIR: return "dir";
	case S_IFBLK: return "blk";
	case S_IFIFO: return "fifo";
	case S_IFSOCK: return "sock";
	case S_IFLNK: return "lnk";
	}
	return "unknown";
}

/* What a stat call says, in one shape whichever call it was. */
struct stat_out {
	unsigned mode;
	unsigned long long ino, nlink, size;
	unsigned dev_major, dev_minor, rdev_major, rdev_minor, uid;
};

static void from_stat(struct stat_out *o, const struct stat *st)
{
	*o = (struct stat_out){ .mode = st->st_mode, .ino = st->st_ino, .nlink = st->st_nlink,
				.size = (unsigned long long)st->st_size,
				.dev_major = major(st->st_dev), .dev_minor = minor(st->st_dev),
				.rdev_major = major(st->st_rdev), .rdev_minor = minor(st->st_rdev),
				.uid = st->st_uid };
}

static void from_stat64(struct stat_out *o, const struct stat64 *st)
{
	*o = (struct stat_out){ .mode = st->st_mode, .ino = st->st_ino, .nlink = st->st_nlink,
				.size = (unsigned long long)st->st_size,
				.dev_major = major(st->st_dev), .dev_minor = minor(st->st_dev),
				.rdev_major = major(st->st_rdev), .rdev_minor = minor(st->st_rdev),
				.uid = st->st_uid };
}

static void print_stat(const char *step, const char *via, int rc, int err, const struct stat_out *o)
{
	char extra[384];

	snprintf(extra, sizeof(extra),
		 ",\"via\":\"%s\",\"type\":\"%s\",\"mode\":%u,\"rdev_major\":%u,\"rdev_minor\":%u,"
		 "\"dev_major\":%u,\"dev_minor\":%u,\"ino\":%llu,\"nlink\":%llu,\"size\":%llu,"
		 "\"uid\":%u",
		 via, file_type(o->mode), o->mode & 07777, o->rdev_major, o->rdev_minor, o->dev_major,
		 o->dev_minor, o->ino, o->nlink, o->size, o->uid);
	print_result(step, rc, err, extra);
}

/* fstat [VIA]: the current fd through one of the libc calls that can stat an fd. */
static void step_fstat(const char *via)
{
	struct stat_out o = { 0 };
	struct stat st = { 0 };
	struct stat64 st64 = { 0 };
	struct statx stx = { 0 };
	int rc, err;

	if (strcmp(via, "fstat") == 0) {
		rc = fstat(cur, &st);
		err = errno;
		from_stat(&o, &st);
	} else if (strcmp(via, "fstat64") == 0) {
		rc = fstat64(cur, &st64);
		err = errno;
		from_stat64(&o, &st64);
	} else if (strcmp(via, "fstatat") == 0) {
		rc = fstatat(cur, "", &st, AT_EMPTY_PATH);
		err = errno;
		from_stat(&o, &st);
	} else if (strcmp(via, "fstatat64") == 0) {
		rc = fstatat64(cur, "", &st64, AT_EMPTY_PATH);
		err = errno;
		from_stat64(&o, &st64);
	} else if (strcmp(via, "statx") == 0) {
		rc = statx(cur, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx);
		err = errno;
		o = (struct stat_out){ .mode = stx.stx_mode, .ino = stx.stx_ino, .nlink = stx.stx_nlink,
				       .size = stx.stx_size,
				       .dev_major = stx.stx_dev_major, .dev_minor = stx.stx_dev_minor,
				       .rdev_major = stx.stx_rdev_major, .rdev_minor = stx.stx_rdev_minor,
				       .uid = stx.stx_uid };
	} else if (strcmp(via, "fxstat") == 0) {
		rc = __fxstat(STAT_VER, cur, &st);
		err = errno;
		from_stat(&o, &st);
	} else if (strcmp(via, "fxstat64") == 0) {
		rc = __fxstat64(STAT_VER, cur, &st64);
		err = errno;
		from_stat64(&o, &st64);
	} else if (strcmp(via, "fxstatat") == 0) {
		rc = __fxstatat(STAT_VER, cur, "", &st, AT_EMPTY_PATH);
		err = errno;
		from_stat(&o, &st);
	} else {
		rc = __fxstatat64(STAT_VER, cur, "", &st64, AT_EMPTY_PATH);
		err = errno;
		from_stat64(&o, &st64);
	}
	print_stat("fstat", via, rc, err, &o);
}

/* statat PATH: fstatat(current fd, PATH, AT_EMPTY_PATH); "" stats the fd itself. */
static void step_statat(const char *path)
{
	struct stat_out o = { 0 };
	struct stat st = { 0 };
	int rc = fstatat(cur, path, &st, AT_EMPTY_PATH);
	int err = errno;

	from_stat(&o, &st);
	print_stat("statat", "fstatat", rc, err, &o);
}

/* memfd NAME: an empty memfd (not a context), made current. */
static void step_memfd(const char *name)
{
	char extra[32];
	int fd = memfd_create(name, MFD_CLOEXEC);
	int err = errno;

	if (fd >= 0) {
		add_fd(fd);
		snprintf(extra, sizeof(extra), ",\"fd\":%d", fd);
	}
	print_result("memfd", fd < 0 ? -1 : 0, err, extra);
}

struct stress {
	int fd, count, failures;
};

static void *stress_thread(void *p)
{
	struct stress *s = p;

	for (int i = 0; i < s->count; i++) {
		uint32_t a[3] = { IOAS_ALLOC_SIZE, 0, 0 };

		if (ioctl(s->fd, IOMMU_IOAS_ALLOC, a) != 0)
			s->failures++;
	}
	return NULL;
}

/* n threads, each doing `count` IOMMU_IOAS_ALLOC on the current fd at once. */
static void step_threads(int n, int count)
{
	struct stress s[64];
	pthread_t t[64];
	char extra[64];
	int failures = 0;

	if (n < 1 || n > 64)
		usage_error("threads: 1..64", NULL);
	for (int i = 0; i < n; i++) {
		s[i] = (struct stress){ .fd = cur, .count = count };
		if (pthread_create(&t[i], NULL, stress_thread, &s[i]) != 0)
			usage_error("pthread_create failed", NULL);
	}
	for (int i = 0; i < n; i++) {
		pthread_join(t[i], NULL);
		failures += s[i].failures;
	}
	snprintf(extra, sizeof(extra), ",\"calls\":%d,\"failures\":%d", n * count, failures);
	print_result("threads", 0, 0, extra);
}

static int send_fd(int sock, int fd)
{
	char byte = 0;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *cm;

	memset(&u, 0, sizeof(u));
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *cm;
	int fd;

	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	cm = CMSG_FIRSTHDR(&msg);
	if (!cm || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
		errno = EBADMSG;
		return -1;
	}
	memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

static void run(char **argv, int start, int stop);

/* Index of the "end" that closes the "pass" at argv[start - 1]. */
static int matching_end(char **argv, int start, int stop)
{
	int depth = 1;

	for (int i = start; i < stop; i++) {
		if (strcmp(argv[i], "pass") == 0)
			depth++;
		else if (strcmp(argv[i], "end") == 0 && --depth == 0)
			return i;
	}
	return stop;
}

/*
 * pass STEP... end: a child process receives the current fd over SCM_RIGHTS
 * (after closing everything it inherited) and runs the steps; the parent
 * waits for it and goes on after "end".
 */
static void step_pass(char **argv, int start, int end)
{
	int sv[2], status;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		print_result("pass", -1, errno, NULL);
		return;
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		print_result("pass", -1, errno, NULL);
		close(sv[0]);
		close(sv[1]);
		return;
	}
	if (pid == 0) {
		char extra[48];
		int fd;

		close(sv[0]);
		/* Forget the inherited fds: only SCM_RIGHTS may carry the context. */
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		nfds = 0;
		cur = -1;
		fd = recv_fd(sv[1]);
		if (fd < 0) {
			print_result("pass", -1, errno, NULL);
		} else {
			add_fd(fd);
			snprintf(extra, sizeof(extra), ",\"fd\":%d,\"pid\":%d", fd, (int)getpid());
			print_result("pass", 0, 0, extra);
		}
		close(sv[1]);
		run(argv, start, end);
		fflush(stdout);
		_exit(0);
	}
	close(sv[1]);
	if (send_fd(sv[0], cur) != 0)
		fprintf(stderr, "iommu-probe: sendmsg: %s\n", strerror(errno));
	close(sv[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		print_result("end", 0, 0, NULL);
	} else {
		printf("{\"step\":\"end\",\"ok\":false,\"status\":%d}\n", status);
	}
}

/* Optional numeric argument at argv[*i + 1]. */
static int opt_num(char **argv, int *i, int stop, unsigned long long *out)
{
	if (*i + 1 < stop && is_number(argv[*i + 1])) {
		*out = num(argv[++*i]);
		return 1;
	}
	return 0;
}

static const char *arg(char **argv, int *i, int stop)
{
	if (*i + 1 >= stop)
		usage_error("missing argument for", argv[*i]);
	return argv[++*i];
}

static void run(char **argv, int start, int stop)
{
	for (int i = start; i < stop; i++) {
		const char *c = argv[i];

		if (strcmp(c, "open") == 0) {
			const char *path = arg(argv, &i, stop);
			int nofollow = i + 1 < stop && strcmp(argv[i + 1], "nofollow") == 0;

			i += nofollow;
			step_open(AT_FDCWD, path, nofollow, "open");
		} else if (strcmp(c, "openat") == 0) {
			const char *dir = arg(argv, &i, stop);
			const char *name = arg(argv, &i, stop);
			int nofollow = i + 1 < stop && strcmp(argv[i + 1], "nofollow") == 0;
			int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);

			i += nofollow;
			if (dfd < 0) {
				print_result("openat", -1, errno, NULL);
				continue;
			}
			step_open(dfd, name, nofollow, "openat");
			close(dfd);
		} else if (strcmp(c, "select") == 0) {
			unsigned long long k = num(arg(argv, &i, stop));
			char extra[32];

			if (k >= (unsigned long long)nfds)
				usage_error("select: no such open", argv[i]);
			cur = fds[k];
			snprintf(extra, sizeof(extra), ",\"fd\":%d", cur);
			print_result("select", 0, 0, extra);
		} else if (strcmp(c, "fd") == 0) {
			/* Adopt an fd inherited from whoever started us. */
			int fd = (int)num(arg(argv, &i, stop));
			char extra[32];
			int rc = fcntl(fd, F_GETFD) < 0 ? -1 : 0;

			if (rc == 0)
				add_fd(fd);
			snprintf(extra, sizeof(extra), ",\"fd\":%d", fd);
			print_result("fd", rc, errno, extra);
		} else if (strcmp(c, "close") == 0) {
			int rc = close(cur);

			print_result("close", rc, errno, NULL);
		} else if (strcmp(c, "get") == 0) {
			step_option("get", OPTION_SIZE, 0, 1, 0, 0, 0, 0);
		} else if (strcmp(c, "set") == 0) {
			unsigned long long v = num(arg(argv, &i, stop));

			step_option("set", OPTION_SIZE, 0, 0, 0, 0, v, 0);
		} else if (strcmp(c, "option") == 0) {
			unsigned long long a[6], tail = 0;

			for (int k = 0; k < 6; k++)
				a[k] = num(arg(argv, &i, stop));
			opt_num(argv, &i, stop, &tail);
			step_option("option", (uint32_t)a[0], (uint32_t)a[1], (uint16_t)a[2],
				    (uint16_t)a[3], (uint32_t)a[4], a[5], (int)tail);
		} else if (strcmp(c, "ioas_alloc") == 0) {
			unsigned long long size = IOAS_ALLOC_SIZE, flags = 0, tail = 0;

			if (opt_num(argv, &i, stop, &size)) {
				flags = num(arg(argv, &i, stop));
				opt_num(argv, &i, stop, &tail);
			}
			step_ioas_alloc((uint32_t)size, (uint32_t)flags, (int)tail);
		} else if (strcmp(c, "destroy") == 0) {
			unsigned long long id = num(arg(argv, &i, stop)), size = DESTROY_SIZE, tail = 0;

			if (opt_num(argv, &i, stop, &size))
				opt_num(argv, &i, stop, &tail);
			step_destroy((uint32_t)id, (uint32_t)size, (int)tail);
		} else if (strcmp(c, "raw_ioctl") == 0) {
			const char *req = arg(argv, &i, stop);
			int null_arg = i + 1 < stop && strcmp(argv[i + 1], "null") == 0;
			char *end;
			unsigned long r = strtoul(req, &end, 16);

			if (*end)
				usage_error("raw_ioctl: expected a hex request", req);
			i += null_arg;
			step_raw_ioctl(r, null_arg);
		} else if (strcmp(c, "fstat") == 0) {
			const char *via = i + 1 < stop && is_fstat_via(argv[i + 1]) ? argv[++i] : "fstat";

			step_fstat(via);
		} else if (strcmp(c, "statat") == 0) {
			step_statat(arg(argv, &i, stop));
		} else if (strcmp(c, "memfd") == 0) {
			step_memfd(arg(argv, &i, stop));
		} else if (strcmp(c, "setuid") == 0) {
			step_setuid((uid_t)num(arg(argv, &i, stop)));
		} else if (strcmp(c, "threads") == 0) {
			int n = (int)num(arg(argv, &i, stop));
			int count = (int)num(arg(argv, &i, stop));

			step_threads(n, count);
		} else if (strcmp(c, "pass") == 0) {
			int end = matching_end(argv, i + 1, stop);

			if (end == stop)
				usage_error("pass without end", NULL);
			step_pass(argv, i + 1, end);
			i = end;
		} else {
			usage_error("unknown step", c);
		}
	}
}

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		fprintf(argc < 2 ? stderr : stdout,
			"usage: iommu-probe STEP...\n"
			"steps: open PATH [nofollow] | openat DIR NAME [nofollow] | fd N | select K | close\n"
			"       get | set VAL | option SIZE OPTION_ID OP RESERVED OBJECT_ID VAL64 [TAIL]\n"
			"       ioas_alloc [SIZE FLAGS [TAIL]] | destroy ID [SIZE [TAIL]]\n"
			"       raw_ioctl HEX [null] | setuid UID | threads N COUNT | pass STEP... end\n"
			"       fstat [fstat|fstat64|fstatat|fstatat64|statx|fxstat|fxstat64|fxstatat|fxstatat64]\n"
			"       statat PATH | memfd NAME\n");
		return argc < 2 ? 2 : 0;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	run(argv, 1, argc);
	return 0;
}
