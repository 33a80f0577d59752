/*
 * The launcher side, timed where it happens: connect to a handoff socket,
 * recvmsg as virt-launcher does, and record the CLOCK_MONOTONIC time just
 * before connect() and when the fd is in hand; then check the context with
 * IOMMU_OPTION GET (outside the timing) and close it.
 *
 * Used for both sides of the benchmark: the C reference's middle and the
 * kubelet-bridge's per-allocation sockets. Several --socket options are
 * served one after another from this one process (no process start between
 * handoffs); --count N repeats a single socket N times.
 *
 * --wait-start: print "ready", read a CLOCK_MONOTONIC time in ns from stdin
 * and sleep until it, so that many receivers connect at the same moment.
 *
 * Prints one JSON line per handoff, then a summary line; exit 1 if any failed.
 * Run it with the kernel stand-in's shim in LD_PRELOAD (GET needs it).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

static void usage(void)
{
	fprintf(stderr, "usage: ref-receiver [--wait-start] [--gap-us N] [--count N] --socket PATH [--socket PATH ...]\n");
	exit(2);
}

static void sleep_until(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull) };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* One handoff; prints its line and returns 0 if it worked. */
static int handoff(int index, const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	const char *step = "socket";
	int err = 0;
	if (strlen(path) >= sizeof(addr.sun_path)) {
		err = ENAMETOOLONG;
		goto failed;
	}
	strcpy(addr.sun_path, path);
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0) {
		err = errno;
		goto failed;
	}
	uint64_t connect_ns = now_ns();
	if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		err = errno;
		step = "connect";
		close(sock);
		goto failed;
	}
	int fd = recv_fd(sock);
	uint64_t fd_ns = now_ns();
	close(sock);
	if (fd < 0) {
		err = -fd;
		step = "recvmsg";
		goto failed;
	}
	uint64_t mode = 0;
	int rc = rlimit_option(fd, IOMMU_OPTION_OP_GET, &mode);
	close(fd);
	if (rc < 0 || mode != 1) {
		err = rc < 0 ? -rc : EIO;
		step = "get";
		goto failed;
	}
	printf("{\"i\":%d,\"connectNs\":%" PRIu64 ",\"fdNs\":%" PRIu64 ",\"ns\":%" PRIu64 ",\"rlimitMode\":%" PRIu64 "}\n", index,
	       connect_ns, fd_ns, fd_ns - connect_ns, mode);
	return 0;
failed:
	printf("{\"i\":%d,\"error\":\"%s\",\"errno\":%d,\"message\":\"%s\"}\n", index, step, err, strerror(err));
	return -1;
}

int main(int argc, char **argv)
{
	const char **sockets = calloc((size_t)argc, sizeof(*sockets));
	int n_sockets = 0, count = 0, wait_start = 0;
	long gap_us = 0;
	if (!sockets)
		return 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--socket") && i + 1 < argc)
			sockets[n_sockets++] = argv[++i];
		else if (!strcmp(a, "--count") && i + 1 < argc)
			count = atoi(argv[++i]);
		else if (!strcmp(a, "--gap-us") && i + 1 < argc)
			gap_us = atol(argv[++i]);
		else if (!strcmp(a, "--wait-start"))
			wait_start = 1;
		else
			usage();
	}
	if (n_sockets == 0 || (count > 0 && n_sockets != 1))
		usage();
	int total = count > 0 ? count : n_sockets;

	uint64_t start_ns = 0, late_ns = 0;
	if (wait_start) {
		printf("ready\n");
		fflush(stdout);
		char line[64];
		if (!fgets(line, sizeof(line), stdin))
			return 2;
		start_ns = strtoull(line, NULL, 10);
		sleep_until(start_ns);
		uint64_t woke = now_ns();
		late_ns = woke > start_ns ? woke - start_ns : 0;
	}

	int ok = 0;
	for (int i = 0; i < total; i++) {
		if (i > 0 && gap_us > 0)
			sleep_until(now_ns() + (uint64_t)gap_us * 1000ull);
		if (handoff(i, sockets[count > 0 ? 0 : i]) == 0)
			ok++;
	}
	printf("{\"done\":true,\"ok\":%d,\"failed\":%d,\"startNs\":%" PRIu64 ",\"wakeLateNs\":%" PRIu64 "}\n", ok, total - ok, start_ns,
	       late_ns);
	free(sockets);
	return ok == total ? 0 : 1;
}
