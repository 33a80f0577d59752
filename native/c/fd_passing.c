/*
 * Unix-socket primitives Node.js lacks: sending and receiving a file
 * descriptor (SCM_RIGHTS), reading the peer's credentials (SO_PEERCRED), and
 * a connect we own end to end so that no Node stream reads (and so drops)
 * the ancillary data carrying an fd.
 *
 * Every function returns a non-negative result or -errno.
 */
#include "iommufd_native.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int ifn_send_with_fd(int sock, const uint8_t *data, int32_t len, int32_t fd)
{
	if (len <= 0)
		return -EINVAL;

	struct iovec iov = { .iov_base = (void *)data, .iov_len = (size_t)len };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (fd >= 0) {
		memset(&control, 0, sizeof(control));
		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof(control.buf);
		struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	}

	ssize_t sent;
	do {
		/* MSG_NOSIGNAL: a vanished peer is an EPIPE, not a process-killing SIGPIPE. */
		sent = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
	} while (sent < 0 && errno == EINTR);
	return sent < 0 ? -errno : (int)sent;
}

/* Closes every fd carried by a control message; used when we refuse it. */
static void close_carried_fds(struct msghdr *msg)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			close(fd);
		}
	}
}

int ifn_recv_with_fd(int sock, uint8_t *buf, int32_t cap, int32_t timeout_ms,
		     int32_t *out_fd)
{
	*out_fd = -1;
	if (cap <= 0)
		return -EINVAL;

	/* Wait with poll rather than SO_RCVTIMEO so the socket's options stay untouched. */
	struct pollfd pfd = { .fd = sock, .events = POLLIN };
	int ready;
	do {
		ready = poll(&pfd, 1, timeout_ms);
	} while (ready < 0 && errno == EINTR);
	if (ready < 0)
		return -errno;
	if (ready == 0)
		return -ETIMEDOUT;

	struct iovec iov = { .iov_base = buf, .iov_len = (size_t)cap };
	/* Room for more than one fd, so that extras are seen (and closed) rather than silently cut off. */
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} control;
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};

	ssize_t got;
	do {
		got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	} while (got < 0 && errno == EINTR);
	if (got < 0)
		return -errno;

	if (msg.msg_flags & MSG_CTRUNC) {
		close_carried_fds(&msg);
		return -EPROTO;
	}

	int found = -1;
	int extra = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (found < 0) {
				found = fd;
			} else {
				close(fd);
				extra = 1;
			}
		}
	}
	if (extra) {
		if (found >= 0)
			close(found);
		return -EPROTO;
	}
	*out_fd = found;
	return (int)got;
}

int ifn_peer_credentials(int sock, int32_t *out_pid_uid_gid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	out_pid_uid_gid[0] = (int32_t)cred.pid;
	out_pid_uid_gid[1] = (int32_t)cred.uid;
	out_pid_uid_gid[2] = (int32_t)cred.gid;
	return 0;
}

int ifn_connect_unix(const char *path, int32_t timeout_ms)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	size_t plen = strlen(path);
	if (plen == 0 || plen >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	memcpy(addr.sun_path, path, plen + 1);

	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;

	/*
	 * A blocking connect waits while the listener's backlog is full;
	 * SO_SNDTIMEO bounds that wait. This runs on a worker thread. Later
	 * sends and receives pass MSG_DONTWAIT, so blocking mode stays harmless.
	 */
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	if (setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int err = errno == EINPROGRESS ? ETIMEDOUT : errno;
		close(sock);
		return -err;
	}
	return sock;
}

int ifn_close(int fd)
{
	return close(fd) < 0 ? -errno : 0;
}
