/*
 * fake-iommu.c - a test-only stand-in for the kernel's /dev/iommu (IOMMUFD).
 *
 * Loaded with LD_PRELOAD, it interposes the libc open family and ioctl:
 *
 *  - An open of the configured fake device (FAKE_IOMMU_DEVICE) returns a new
 *    "context": a memfd named "fake-iommufd" whose contents hold the state the
 *    kernel keeps in struct iommufd_ctx (RLIMIT accounting mode, objects).
 *    Because the state lives in the file and not in this process, it follows
 *    the fd through fork() and SCM_RIGHTS to any process that also has the
 *    shim loaded.
 *  - ioctl on a context answers IOMMU_DESTROY, IOMMU_IOAS_ALLOC and
 *    IOMMU_OPTION with the checks of drivers/iommu/iommufd, in the same
 *    order; any other request gets ENOTTY. Other fds pass straight through.
 *  - The stat calls that can target an fd (fstat, fstatat with AT_EMPTY_PATH
 *    and an empty path, statx likewise, and the old __fxstat family) report
 *    a context as the node it was opened from, as the kernel does for an fd
 *    of /dev/iommu: a character device with the node's major:minor (or, for a
 *    regular-file fake device, that file). The node's identity is recorded in
 *    the context at open time, so it travels with the fd too.
 *
 * FAKE_IOMMU_PRIVILEGED_UIDS says which effective uids count as holding
 * CAP_SYS_RESOURCE; without it the real capability is checked.
 *
 * Test code only: never load this into anything that matters.
 */
#undef _FORTIFY_SOURCE /* we define open() itself; no fortify wrappers */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- uAPI (include/uapi/linux/iommufd.h), written out: no header here ---- */

#define IOMMUFD_TYPE ';'
#define IOMMU_DESTROY 0x3b80u    /* _IO(';', 0x80) */
#define IOMMU_IOAS_ALLOC 0x3b81u /* _IO(';', 0x81) */
#define IOMMU_OPTION 0x3b87u     /* _IO(';', 0x87) */

#define IOMMU_OPTION_RLIMIT_MODE 0u
#define IOMMU_OPTION_HUGE_PAGES 1u
#define IOMMU_OPTION_OP_SET 0u
#define IOMMU_OPTION_OP_GET 1u

struct iommu_destroy {
	uint32_t size;
	uint32_t id;
};

struct iommu_ioas_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t out_ioas_id;
};

struct iommu_option {
	uint32_t size;
	uint32_t option_id;
	uint16_t op;
	uint16_t __reserved;
	uint32_t object_id;
	uint64_t val64;
};

_Static_assert(sizeof(struct iommu_destroy) == 8, "iommu_destroy layout");
_Static_assert(sizeof(struct iommu_ioas_alloc) == 12, "iommu_ioas_alloc layout");
_Static_assert(sizeof(struct iommu_option) == 24, "iommu_option layout");

/* ---- the context as stored in the memfd ---- */

#define CTX_NAME "fake-iommufd"
#define CTX_LINK_PREFIX "/memfd:" CTX_NAME
#define CTX_MAGIC 0x4f494b46u /* "FKIO" */
#define CTX_VERSION 2u /* 2: the header records the opened node (struct ctx_node) */
#define CTX_MAX_OBJECTS (1u << 20)

#define OBJ_IOAS 1u

/*
 * The node the context was opened from, as stat() saw it at open time: what
 * fstat() on the context reports. Written once, when the context is made, and
 * never again, so it can be read without the lock.
 */
struct ctx_node {
	uint64_t dev;
	uint64_t ino;
	uint64_t rdev;
	uint64_t nlink;
	uint64_t size;
	uint64_t blocks;
	int64_t atime_sec, mtime_sec, ctime_sec;
	uint32_t atime_nsec, mtime_nsec, ctime_nsec;
	uint32_t mode;
	uint32_t uid;
	uint32_t gid;
};

struct ctx_hdr {
	uint32_t magic;
	uint32_t version;
	uint32_t rlimit_mode; /* 1: pages charged to the process (RLIMIT mode) */
	uint32_t nr_objects;  /* live objects; SET RLIMIT_MODE needs 0 */
	struct ctx_node node; /* write-once; ctx_store() leaves it alone */
};

/* The part of the header that ioctls change. */
#define CTX_STATE_BYTES offsetof(struct ctx_hdr, node)

_Static_assert(sizeof(struct ctx_node) == 96, "ctx_node layout");
_Static_assert(sizeof(struct ctx_hdr) == 112, "ctx_hdr layout");

/* Objects follow the header, sorted by id, so the lowest free id is easy to
 * find: the kernel's xa_alloc() hands out the lowest free id from 1. */
struct ctx_obj {
	uint32_t id;
	uint32_t type;
	uint32_t huge_pages; /* IOAS: IOMMU_OPTION_HUGE_PAGES, default 1 */
	uint32_t pad;
};

struct ctx {
	struct ctx_hdr h;
	struct ctx_obj *objs; /* room for h.nr_objects + 1 */
};

/* ---- configuration and the real libc functions, set up once ---- */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef int (*fstat_fn)(int, struct stat *);
typedef int (*fstat64_fn)(int, struct stat64 *);
typedef int (*fstatat_fn)(int, const char *, struct stat *, int);
typedef int (*fstatat64_fn)(int, const char *, struct stat64 *, int);
typedef int (*statx_fn)(int, const char *, int, unsigned int, struct statx *);
typedef int (*fxstat_fn)(int, int, struct stat *);
typedef int (*fxstat64_fn)(int, int, struct stat64 *);
typedef int (*fxstatat_fn)(int, int, const char *, struct stat *, int);
typedef int (*fxstatat64_fn)(int, int, const char *, struct stat64 *, int);

#define MAX_PRIV_UIDS 64

static struct {
	open_fn open, open64;
	openat_fn openat, openat64;
	open2_fn open_2, open64_2;
	openat2_fn openat_2, openat64_2;
	ioctl_fn ioctl;
	fstat_fn fstat;
	fstat64_fn fstat64;
	fstatat_fn fstatat;
	fstatat64_fn fstatat64;
	statx_fn statx;
	fxstat_fn fxstat;       /* the pre-2.33 glibc entry points, for old binaries */
	fxstat64_fn fxstat64;
	fxstatat_fn fxstatat;
	fxstatat64_fn fxstatat64;
} real;

static struct {
	char *device; /* absolute path, or NULL: never intercept open */
	int priv_uids_set;
	size_t n_priv_uids;
	uid_t priv_uids[MAX_PRIV_UIDS];
} cfg;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void parse_priv_uids(const char *list)
{
	const char *p = list;

	cfg.priv_uids_set = 1;
	while (*p) {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(p, &end, 10);
		if (end == p || errno || v > UINT_MAX - 1 || (*end && *end != ',')) {
			fprintf(stderr, "fake-iommu: bad FAKE_IOMMU_PRIVILEGED_UIDS "
					"entry in \"%s\", ignoring the rest\n", list);
			return;
		}
		if (cfg.n_priv_uids < MAX_PRIV_UIDS)
			cfg.priv_uids[cfg.n_priv_uids++] = (uid_t)v;
		p = *end ? end + 1 : end;
	}
}

static void init(void)
{
	const char *dev, *uids;

	real.open = (open_fn)dlsym(RTLD_NEXT, "open");
	real.open64 = (open_fn)dlsym(RTLD_NEXT, "open64");
	real.openat = (openat_fn)dlsym(RTLD_NEXT, "openat");
	real.openat64 = (openat_fn)dlsym(RTLD_NEXT, "openat64");
	real.open_2 = (open2_fn)dlsym(RTLD_NEXT, "__open_2");
	real.open64_2 = (open2_fn)dlsym(RTLD_NEXT, "__open64_2");
	real.openat_2 = (openat2_fn)dlsym(RTLD_NEXT, "__openat_2");
	real.openat64_2 = (openat2_fn)dlsym(RTLD_NEXT, "__openat64_2");
	real.ioctl = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
	real.fstat = (fstat_fn)dlsym(RTLD_NEXT, "fstat");
	real.fstat64 = (fstat64_fn)dlsym(RTLD_NEXT, "fstat64");
	real.fstatat = (fstatat_fn)dlsym(RTLD_NEXT, "fstatat");
	real.fstatat64 = (fstatat64_fn)dlsym(RTLD_NEXT, "fstatat64");
	real.statx = (statx_fn)dlsym(RTLD_NEXT, "statx");
	real.fxstat = (fxstat_fn)dlsym(RTLD_NEXT, "__fxstat");
	real.fxstat64 = (fxstat64_fn)dlsym(RTLD_NEXT, "__fxstat64");
	real.fxstatat = (fxstatat_fn)dlsym(RTLD_NEXT, "__fxstatat");
	real.fxstatat64 = (fxstatat64_fn)dlsym(RTLD_NEXT, "__fxstatat64");

	dev = getenv("FAKE_IOMMU_DEVICE");
	if (dev && *dev) {
		/* Keep our own absolute copy: the caller may chdir or edit environ. */
		char cwd[PATH_MAX];

		if (dev[0] != '/' && getcwd(cwd, sizeof(cwd))) {
			size_t n = strlen(cwd) + strlen(dev) + 2;

			cfg.device = malloc(n);
			if (cfg.device)
				snprintf(cfg.device, n, "%s/%s", cwd, dev);
		} else {
			cfg.device = strdup(dev);
		}
	}

	uids = getenv("FAKE_IOMMU_PRIVILEGED_UIDS");
	if (uids && *uids)
		parse_priv_uids(uids);
}

static void ensure_init(void)
{
	int saved = errno;

	pthread_once(&init_once, init);
	errno = saved;
}

/* ---- open ---- */

static int is_fake_device(const struct stat *st)
{
	struct stat dev;

	/* Looked up on every open, so the test may create the device late. */
	if (stat(cfg.device, &dev) != 0)
		return 0;
	if (S_ISCHR(dev.st_mode))
		return S_ISCHR(st->st_mode) && st->st_rdev == dev.st_rdev;
	if (S_ISREG(dev.st_mode))
		return S_ISREG(st->st_mode) && st->st_dev == dev.st_dev &&
		       st->st_ino == dev.st_ino;
	return 0;
}

/* A new context opened from the node `st` describes. */
static int new_context(int cloexec, const struct stat *st)
{
	struct ctx_hdr h = {
		.magic = CTX_MAGIC,
		.version = CTX_VERSION,
		.node = {
			.dev = st->st_dev,
			.ino = st->st_ino,
			.rdev = st->st_rdev,
			.nlink = st->st_nlink,
			.size = (uint64_t)st->st_size,
			.blocks = (uint64_t)st->st_blocks,
			.atime_sec = st->st_atim.tv_sec,
			.mtime_sec = st->st_mtim.tv_sec,
			.ctime_sec = st->st_ctim.tv_sec,
			.atime_nsec = (uint32_t)st->st_atim.tv_nsec,
			.mtime_nsec = (uint32_t)st->st_mtim.tv_nsec,
			.ctime_nsec = (uint32_t)st->st_ctim.tv_nsec,
			.mode = st->st_mode,
			.uid = st->st_uid,
			.gid = st->st_gid,
		},
	};
	int fd, err;

	fd = memfd_create(CTX_NAME, cloexec ? MFD_CLOEXEC : 0);
	if (fd < 0)
		return -1;
	if (pwrite(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h))
		return fd;
	err = errno ? errno : EIO;
	close(fd);
	errno = err;
	return -1;
}

/*
 * Returns 1 when (dirfd, path) names the fake device; *fdp is then the result
 * of the open (a new context, or -1 with errno). Returns 0, errno untouched,
 * when the caller should do the real open.
 */
static int fake_open(int dirfd, const char *path, int flags, int *fdp)
{
	int saved = errno, nofollow, acc;
	struct stat st;

	ensure_init();
	/* O_PATH never reaches a driver's open(): let the real call make it. */
	if (!cfg.device || (flags & O_PATH) || !real.fstatat)
		return 0;
	nofollow = (flags & O_NOFOLLOW) ? AT_SYMLINK_NOFOLLOW : 0;
	/* A symlink under O_NOFOLLOW is not the device: the real call says ELOOP.
	 * st is also what fstat() on the new context will report. */
	if (real.fstatat(dirfd, path, &st, nofollow) != 0 || !is_fake_device(&st)) {
		errno = saved;
		return 0;
	}

	/* The VFS checks that come before the driver's open(). */
	*fdp = -1;
	if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) {
		errno = EEXIST;
		return 1;
	}
	if (flags & O_DIRECTORY) {
		errno = ENOTDIR;
		return 1;
	}
	switch (flags & O_ACCMODE) {
	case O_RDONLY:
		acc = R_OK;
		break;
	case O_WRONLY:
		acc = W_OK;
		break;
	default: /* O_RDWR, and 3 ("ioctl only") which needs both */
		acc = R_OK | W_OK;
		break;
	}
	if (faccessat(dirfd, path, acc, AT_EACCESS | nofollow) != 0)
		return 1;

	*fdp = new_context(flags & O_CLOEXEC, &st);
	return 1;
}

static int needs_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

#define VA_MODE(flags, last)                            \
	({                                              \
		mode_t m_ = 0;                          \
		if (needs_mode(flags)) {                \
			va_list ap_;                    \
			va_start(ap_, last);            \
			m_ = (mode_t)va_arg(ap_, int);  \
			va_end(ap_);                    \
		}                                       \
		m_;                                     \
	})

int open(const char *path, int flags, ...)
{
	mode_t mode = VA_MODE(flags, flags);
	int fd;

	if (fake_open(AT_FDCWD, path, flags, &fd))
		return fd;
	return real.open ? real.open(path, flags, mode) : real.openat(AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = VA_MODE(flags, flags);
	int fd;

	if (fake_open(AT_FDCWD, path, flags, &fd))
		return fd;
	return real.open64 ? real.open64(path, flags, mode) : real.open(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = VA_MODE(flags, flags);
	int fd;

	if (fake_open(dirfd, path, flags, &fd))
		return fd;
	return real.openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = VA_MODE(flags, flags);
	int fd;

	if (fake_open(dirfd, path, flags, &fd))
		return fd;
	return real.openat64 ? real.openat64(dirfd, path, flags, mode)
			     : real.openat(dirfd, path, flags, mode);
}

/* The _FORTIFY_SOURCE entry points (no mode: the caller checked O_CREAT). */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

int __open_2(const char *path, int flags)
{
	int fd;

	if (fake_open(AT_FDCWD, path, flags, &fd))
		return fd;
	return real.open_2 ? real.open_2(path, flags) : real.open(path, flags);
}

int __open64_2(const char *path, int flags)
{
	int fd;

	if (fake_open(AT_FDCWD, path, flags, &fd))
		return fd;
	return real.open64_2 ? real.open64_2(path, flags) : real.open(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	int fd;

	if (fake_open(dirfd, path, flags, &fd))
		return fd;
	return real.openat_2 ? real.openat_2(dirfd, path, flags) : real.openat(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	int fd;

	if (fake_open(dirfd, path, flags, &fd))
		return fd;
	return real.openat64_2 ? real.openat64_2(dirfd, path, flags)
			       : real.openat(dirfd, path, flags);
}

/* ---- access to the caller's ioctl argument ---- */

/*
 * Copy between our buffer and the caller's argument the way copy_from_user /
 * copy_to_user would: a bad pointer gives EFAULT instead of a crash, because
 * process_vm_readv/writev on ourselves report faults. Returns the number of
 * bytes copied before the first fault.
 */
static size_t user_copy(void *local, void *user, size_t n, int to_user)
{
	struct iovec l = { .iov_base = local, .iov_len = n };
	struct iovec r = { .iov_base = user, .iov_len = n };
	ssize_t got;

	if (n == 0)
		return 0;
	got = to_user ? process_vm_writev(getpid(), &l, 1, &r, 1, 0)
		      : process_vm_readv(getpid(), &l, 1, &r, 1, 0);
	if (got >= 0)
		return (size_t)got;
	if (errno == EFAULT)
		return 0;
	/* process_vm_* refused (seccomp, no such syscall): trust the pointer. */
	if (to_user)
		memcpy(user, local, n);
	else
		memcpy(local, user, n);
	return n;
}

/* copy_struct_from_user(): the bytes the kernel does not know must be zero. */
static int user_tail_zeroed(char *user, size_t from, size_t to)
{
	unsigned char chunk[512];

	while (from < to) {
		size_t want = to - from < sizeof(chunk) ? to - from : sizeof(chunk);
		size_t got = user_copy(chunk, user + from, want, 0);

		for (size_t i = 0; i < got; i++)
			if (chunk[i])
				return -E2BIG;
		if (got < want)
			return -EFAULT;
		from += want;
	}
	return 0;
}

/* ---- context storage ---- */

static int is_context_fd(int fd)
{
	char path[40], link[64];
	size_t plen = sizeof(CTX_LINK_PREFIX) - 1;
	uint32_t magic;
	ssize_t n;

	if (fd < 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < (ssize_t)plen)
		return 0;
	link[n] = '\0';
	/* The link reads "/memfd:fake-iommufd (deleted)". */
	if (memcmp(link, CTX_LINK_PREFIX, plen) != 0 || (link[plen] != '\0' && link[plen] != ' '))
		return 0;
	return pread(fd, &magic, sizeof(magic), 0) == (ssize_t)sizeof(magic) && magic == CTX_MAGIC;
}

/*
 * Lock and load the context behind fd. The lock is a flock() on a fresh open
 * file description (reopened through /proc/self/fd): flock locks belong to the
 * open file description, and the caller's fd shares its description with every
 * process it was passed to, so locking that one would exclude nobody.
 * Returns the locked fd (close it to unlock) or -errno.
 */
static int ctx_lock_load(int fd, struct ctx *c)
{
	char path[40];
	size_t bytes;
	int lfd, err;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	lfd = real.open(path, O_RDWR | O_CLOEXEC);
	if (lfd < 0)
		return -errno;
	while (flock(lfd, LOCK_EX) != 0) {
		if (errno != EINTR) {
			err = errno;
			goto fail;
		}
	}
	err = EIO;
	if (pread(lfd, &c->h, sizeof(c->h), 0) != (ssize_t)sizeof(c->h) || c->h.magic != CTX_MAGIC ||
	    c->h.version != CTX_VERSION || c->h.nr_objects > CTX_MAX_OBJECTS)
		goto fail;
	bytes = (size_t)c->h.nr_objects * sizeof(struct ctx_obj);
	c->objs = malloc(bytes + sizeof(struct ctx_obj));
	if (!c->objs) {
		err = ENOMEM;
		goto fail;
	}
	if (bytes && pread(lfd, c->objs, bytes, sizeof(c->h)) != (ssize_t)bytes) {
		free(c->objs);
		goto fail;
	}
	return lfd;
fail:
	close(lfd);
	return -err;
}

static int ctx_store(int lfd, const struct ctx *c)
{
	size_t bytes = (size_t)c->h.nr_objects * sizeof(struct ctx_obj);

	if (bytes && pwrite(lfd, c->objs, bytes, sizeof(c->h)) != (ssize_t)bytes)
		return -EIO;
	/* Only the state: the node record is write-once (fstat reads it unlocked). */
	if (pwrite(lfd, &c->h, CTX_STATE_BYTES, 0) != (ssize_t)CTX_STATE_BYTES)
		return -EIO;
	return 0;
}

static struct ctx_obj *ctx_find(struct ctx *c, uint32_t id, uint32_t type)
{
	for (uint32_t i = 0; i < c->h.nr_objects; i++)
		if (c->objs[i].id == id)
			return c->objs[i].type == type ? &c->objs[i] : NULL;
	return NULL;
}

/* ---- the commands ---- */

/* capable(CAP_SYS_RESOURCE), or the configured stand-in for it. */
static int caller_privileged(void)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

	if (cfg.priv_uids_set) {
		uid_t euid = geteuid();

		for (size_t i = 0; i < cfg.n_priv_uids; i++)
			if (cfg.priv_uids[i] == euid)
				return 1;
		return 0;
	}
	memset(data, 0, sizeof(data));
	if (syscall(SYS_capget, &hdr, data) != 0)
		return 0;
	return (data[CAP_TO_INDEX(CAP_SYS_RESOURCE)].effective & CAP_TO_MASK(CAP_SYS_RESOURCE)) != 0;
}

/* iommufd_option(): RLIMIT_MODE here, HUGE_PAGES as iommufd_ioas_option(). */
static int do_option(struct ctx *c, struct iommu_option *cmd, int *dirty)
{
	struct ctx_obj *ioas;

	if (cmd->__reserved)
		return -EOPNOTSUPP;

	switch (cmd->option_id) {
	case IOMMU_OPTION_RLIMIT_MODE:
		if (cmd->object_id)
			return -EOPNOTSUPP;
		if (cmd->op == IOMMU_OPTION_OP_GET) {
			cmd->val64 = c->h.rlimit_mode;
			return 0;
		}
		if (cmd->op != IOMMU_OPTION_OP_SET)
			return -EOPNOTSUPP;
		if (!caller_privileged())
			return -EPERM;
		if (c->h.nr_objects)
			return -EBUSY;
		if (cmd->val64 > 1)
			return -EINVAL;
		c->h.rlimit_mode = (uint32_t)cmd->val64;
		*dirty = 1;
		return 0;

	case IOMMU_OPTION_HUGE_PAGES:
		ioas = ctx_find(c, cmd->object_id, OBJ_IOAS);
		if (!ioas)
			return -ENOENT;
		if (cmd->op == IOMMU_OPTION_OP_GET) {
			cmd->val64 = ioas->huge_pages;
			return 0;
		}
		if (cmd->op != IOMMU_OPTION_OP_SET)
			return -EOPNOTSUPP;
		if (cmd->val64 > 1)
			return -EINVAL;
		ioas->huge_pages = (uint32_t)cmd->val64;
		*dirty = 1;
		return 0;

	default:
		return -EOPNOTSUPP;
	}
}

static int do_ioas_alloc(struct ctx *c, struct iommu_ioas_alloc *cmd, int *dirty)
{
	uint32_t i, id = 1;

	if (cmd->flags)
		return -EOPNOTSUPP;
	if (c->h.nr_objects >= CTX_MAX_OBJECTS)
		return -ENOMEM;
	/* Lowest free id: the first gap in the sorted list. */
	for (i = 0; i < c->h.nr_objects && c->objs[i].id == id; i++)
		id++;
	memmove(&c->objs[i + 1], &c->objs[i], (c->h.nr_objects - i) * sizeof(struct ctx_obj));
	c->objs[i] = (struct ctx_obj){ .id = id, .type = OBJ_IOAS, .huge_pages = 1 };
	c->h.nr_objects++;
	cmd->out_ioas_id = id;
	*dirty = 1;
	return 0;
}

static int do_destroy(struct ctx *c, struct iommu_destroy *cmd, int *dirty)
{
	for (uint32_t i = 0; i < c->h.nr_objects; i++) {
		if (c->objs[i].id != cmd->id)
			continue;
		memmove(&c->objs[i], &c->objs[i + 1],
			(c->h.nr_objects - i - 1) * sizeof(struct ctx_obj));
		c->h.nr_objects--;
		*dirty = 1;
		return 0;
	}
	return -ENOENT;
}

/* iommufd_fops_ioctl() for the three commands we know. Returns 0 or -errno. */
static int context_ioctl(int fd, uint32_t cmd, char *arg)
{
	union {
		struct iommu_option option;
		struct iommu_ioas_alloc alloc;
		struct iommu_destroy destroy;
	} buf;
	size_t ksize;
	uint32_t usize;
	struct ctx c;
	int lfd, rc, dirty = 0;

	switch (cmd) {
	case IOMMU_DESTROY:
		ksize = sizeof(struct iommu_destroy);
		break;
	case IOMMU_IOAS_ALLOC:
		ksize = sizeof(struct iommu_ioas_alloc);
		break;
	case IOMMU_OPTION:
		ksize = sizeof(struct iommu_option);
		break;
	default:
		return -ENOTTY;
	}

	/* get_user(size), the min_size check, then copy_struct_from_user(). */
	if (!arg || user_copy(&usize, arg, sizeof(usize), 0) != sizeof(usize))
		return -EFAULT;
	if (usize < ksize)
		return -EINVAL;
	memset(&buf, 0, sizeof(buf));
	if (user_copy(&buf, arg, ksize, 0) != ksize)
		return -EFAULT;
	rc = user_tail_zeroed(arg, ksize, usize);
	if (rc)
		return rc;

	lfd = ctx_lock_load(fd, &c);
	if (lfd < 0)
		return lfd;

	switch (cmd) {
	case IOMMU_DESTROY:
		rc = do_destroy(&c, &buf.destroy, &dirty);
		break;
	case IOMMU_IOAS_ALLOC:
		rc = do_ioas_alloc(&c, &buf.alloc, &dirty);
		/* The kernel undoes the allocation when it cannot report the id. */
		if (rc == 0 && user_copy(&buf.alloc.out_ioas_id, arg + 8, 4, 1) != 4) {
			rc = -EFAULT;
			dirty = 0;
		}
		break;
	default:
		rc = do_option(&c, &buf.option, &dirty);
		break;
	}
	if (dirty) {
		int src = ctx_store(lfd, &c);

		if (src)
			rc = src;
	}
	free(c.objs);
	close(lfd);

	/* iommufd_option() copies val64 back after any success (state stays). */
	if (rc == 0 && cmd == IOMMU_OPTION && user_copy(&buf.option.val64, arg + 16, 8, 1) != 8)
		rc = -EFAULT;
	return rc;
}

int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	void *arg;
	int saved, rc;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);

	ensure_init();
	saved = errno;
	if (!is_context_fd(fd)) {
		errno = saved;
		return real.ioctl(fd, request, arg);
	}
	/* The kernel's ioctl command is an unsigned int. */
	rc = context_ioctl(fd, (uint32_t)request, arg);
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	errno = saved;
	return 0;
}

/* ---- stat: a context looks like the node it was opened from ---- */

/*
 * The kernel's fstat() on an fd of /dev/iommu reports the inode that was
 * opened: a character device node (for a temporary node made elsewhere, that
 * node, with the same rdev). A context is a memfd, so the real call reports a
 * regular file; these wrappers call the real function and then, for a
 * context, put back the node recorded in its header at open time. That record
 * is write-once, so no lock is needed, and it is in the file, so it is there
 * in every process the fd reaches, with or without FAKE_IOMMU_DEVICE.
 */

/* Fills *node and returns 1 when fd is a context; errno untouched. */
static int context_node(int fd, struct ctx_node *node)
{
	int saved = errno, found = 0;
	struct ctx_hdr h;

	if (is_context_fd(fd) && pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
	    h.magic == CTX_MAGIC && h.version == CTX_VERSION) {
		*node = h.node;
		found = 1;
	}
	errno = saved;
	return found;
}

/*
 * A memfd is a regular file with no links: anything else cannot be a context,
 * and is left alone without the /proc lookup (fstat is called a lot).
 */
#define MAY_BE_CONTEXT(st) (S_ISREG((st)->st_mode) && (st)->st_nlink == 0)

/* For struct stat and struct stat64 alike. */
#define STAT_FROM_NODE(st, n)                                         \
	do {                                                          \
		(st)->st_dev = (n).dev;                               \
		(st)->st_ino = (n).ino;                               \
		(st)->st_mode = (n).mode;                             \
		(st)->st_nlink = (n).nlink;                           \
		(st)->st_uid = (n).uid;                               \
		(st)->st_gid = (n).gid;                               \
		(st)->st_rdev = (n).rdev;                             \
		(st)->st_size = (off_t)(n).size;                      \
		(st)->st_blocks = (blkcnt_t)(n).blocks;               \
		(st)->st_atim.tv_sec = (n).atime_sec;                 \
		(st)->st_atim.tv_nsec = (n).atime_nsec;               \
		(st)->st_mtim.tv_sec = (n).mtime_sec;                 \
		(st)->st_mtim.tv_nsec = (n).mtime_nsec;               \
		(st)->st_ctim.tv_sec = (n).ctime_sec;                 \
		(st)->st_ctim.tv_nsec = (n).ctime_nsec;               \
	} while (0)

/* After a successful stat of fd itself: make a context look like its node. */
#define FIX_STAT(fd, st)                                              \
	do {                                                          \
		struct ctx_node n_;                                   \
		if (MAY_BE_CONTEXT(st) && context_node((fd), &n_))    \
			STAT_FROM_NODE(st, n_);                       \
	} while (0)

/*
 * Whether an *at() call with AT_EMPTY_PATH targeted dirfd itself: the path
 * is "" (or NULL, which Linux 6.11+ accepts there). Read without trusting the
 * pointer; called only after the real call succeeded. errno untouched.
 */
static int targets_fd(const char *path, int flags)
{
	int saved = errno;
	char c;
	int empty;

	if (!(flags & AT_EMPTY_PATH))
		return 0;
	/* The libc headers declare path nonnull: keep the compiler from
	 * dropping this check on that promise. */
	__asm__("" : "+r"(path));
	if (!path)
		return 1;
	empty = user_copy(&c, (void *)path, 1, 0) == 1 && c == '\0';
	errno = saved;
	return empty;
}

static int no_real(void)
{
	errno = ENOSYS;
	return -1;
}

int fstat(int fd, struct stat *st)
{
	int rc;

	ensure_init();
	if (!real.fstat)
		return no_real();
	rc = real.fstat(fd, st);
	if (rc == 0)
		FIX_STAT(fd, st);
	return rc;
}

int fstat64(int fd, struct stat64 *st)
{
	int rc;

	ensure_init();
	if (!real.fstat64)
		return no_real();
	rc = real.fstat64(fd, st);
	if (rc == 0)
		FIX_STAT(fd, st);
	return rc;
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	int rc;

	ensure_init();
	if (!real.fstatat)
		return no_real();
	rc = real.fstatat(dirfd, path, st, flags);
	if (rc == 0 && MAY_BE_CONTEXT(st) && targets_fd(path, flags))
		FIX_STAT(dirfd, st);
	return rc;
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	int rc;

	ensure_init();
	if (!real.fstatat64)
		return no_real();
	rc = real.fstatat64(dirfd, path, st, flags);
	if (rc == 0 && MAY_BE_CONTEXT(st) && targets_fd(path, flags))
		FIX_STAT(dirfd, st);
	return rc;
}

/* statx fills the fields stx_mask names (dev and rdev always). */
int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
	struct ctx_node n;
	unsigned int got;
	int rc;

	ensure_init();
	if (!real.statx)
		return no_real();
	rc = real.statx(dirfd, path, flags, mask, stx);
	if (rc != 0)
		return rc;
	got = stx->stx_mask;
	if ((got & STATX_TYPE) && !S_ISREG(stx->stx_mode))
		return rc;
	if ((got & STATX_NLINK) && stx->stx_nlink != 0)
		return rc;
	if (!targets_fd(path, flags) || !context_node(dirfd, &n))
		return rc;

	if (got & STATX_TYPE)
		stx->stx_mode = (uint16_t)((stx->stx_mode & ~S_IFMT) | (n.mode & S_IFMT));
	if (got & STATX_MODE)
		stx->stx_mode = (uint16_t)((stx->stx_mode & S_IFMT) | (n.mode & ~S_IFMT));
	if (got & STATX_NLINK)
		stx->stx_nlink = (uint32_t)n.nlink;
	if (got & STATX_UID)
		stx->stx_uid = n.uid;
	if (got & STATX_GID)
		stx->stx_gid = n.gid;
	if (got & STATX_INO)
		stx->stx_ino = n.ino;
	if (got & STATX_SIZE)
		stx->stx_size = n.size;
	if (got & STATX_BLOCKS)
		stx->stx_blocks = n.blocks;
	if (got & STATX_ATIME)
		stx->stx_atime = (struct statx_timestamp){ .tv_sec = n.atime_sec, .tv_nsec = n.atime_nsec };
	if (got & STATX_MTIME)
		stx->stx_mtime = (struct statx_timestamp){ .tv_sec = n.mtime_sec, .tv_nsec = n.mtime_nsec };
	if (got & STATX_CTIME)
		stx->stx_ctime = (struct statx_timestamp){ .tv_sec = n.ctime_sec, .tv_nsec = n.ctime_nsec };
	/* The node's birth time was not recorded: say it is not known. */
	if (got & STATX_BTIME) {
		stx->stx_mask &= ~(unsigned int)STATX_BTIME;
		memset(&stx->stx_btime, 0, sizeof(stx->stx_btime));
	}
	stx->stx_rdev_major = major(n.rdev);
	stx->stx_rdev_minor = minor(n.rdev);
	stx->stx_dev_major = major(n.dev);
	stx->stx_dev_minor = minor(n.dev);
	return rc;
}

/* The stat entry points of glibc before 2.33, still exported for old binaries. */
int __fxstat(int ver, int fd, struct stat *st);
int __fxstat64(int ver, int fd, struct stat64 *st);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags);

int __fxstat(int ver, int fd, struct stat *st)
{
	int rc;

	ensure_init();
	if (!real.fxstat)
		return no_real();
	rc = real.fxstat(ver, fd, st);
	if (rc == 0)
		FIX_STAT(fd, st);
	return rc;
}

int __fxstat64(int ver, int fd, struct stat64 *st)
{
	int rc;

	ensure_init();
	if (!real.fxstat64)
		return no_real();
	rc = real.fxstat64(ver, fd, st);
	if (rc == 0)
		FIX_STAT(fd, st);
	return rc;
}

int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
	int rc;

	ensure_init();
	if (!real.fxstatat)
		return no_real();
	rc = real.fxstatat(ver, dirfd, path, st, flags);
	if (rc == 0 && MAY_BE_CONTEXT(st) && targets_fd(path, flags))
		FIX_STAT(dirfd, st);
	return rc;
}

int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
	int rc;

	ensure_init();
	if (!real.fxstatat64)
		return no_real();
	rc = real.fxstatat64(ver, dirfd, path, st, flags);
	if (rc == 0 && MAY_BE_CONTEXT(st) && targets_fd(path, flags))
		FIX_STAT(dirfd, st);
	return rc;
}
