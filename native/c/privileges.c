/*
 * Dropping privileges for good. Capabilities and no_new_privs belong to a
 * thread, and Node runs many; so instead of changing them in place we shrink
 * this thread's bounding set, set no_new_privs, and execve ourselves. After
 * execve the process is this one thread, and a root process starts with
 * exactly the capabilities left in the bounding set.
 */
#include "iommufd_native.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

extern char **environ;

static int last_capability(void)
{
	FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
	int last = 40;
	if (f) {
		if (fscanf(f, "%d", &last) != 1)
			last = 40;
		fclose(f);
	}
	return last;
}

int ifn_restrict_and_reexec(const char *exe, const char *const *argv, int32_t argc, uint64_t keep)
{
	if (argc < 1 || argc > 4096)
		return -EINVAL;
	char **args = calloc((size_t)argc + 1, sizeof(char *));
	if (!args)
		return -ENOMEM;
	for (int i = 0; i < argc; i++)
		args[i] = (char *)argv[i];

	int last = last_capability();
	for (int cap = 0; cap <= last && cap < 64; cap++) {
		if (keep & (1ULL << cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) {
			int err = errno;
			free(args);
			return -err;
		}
	}
	/* Ambient capabilities would survive execve; there should be none, but make sure. */
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		int err = errno;
		free(args);
		return -err;
	}
	/* Node marks stdin, stdout and stderr close-on-exec; the new image must keep them. */
	for (int fd = 0; fd <= 2; fd++) {
		int flags = fcntl(fd, F_GETFD);
		if (flags >= 0)
			fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
	}
	execve(exe, args, environ);
	int err = errno;
	free(args);
	return -err;
}
