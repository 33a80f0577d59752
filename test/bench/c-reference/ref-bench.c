/*
 * Runs the C reference and prints its figures as one JSON object: starts
 * ref-broker (with the kernel stand-in's shim) and ref-middle (without),
 * then ref-receiver processes against the middle's socket: N handoffs one
 * after another from one receiver, and for each --concurrent C:R, R rounds
 * of C receivers released at the same moment. Every time is taken inside
 * the receivers (connect -> fd in hand); see ref-receiver.c.
 *
 * The programs it starts are looked up next to its own executable.
 */
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "common.h"

#define MAX_LEVELS 16

struct level {
	int launchers;
	int rounds;
};

struct options {
	const char *shim, *device, *dir, *label;
	int temporary_node;
	long privileged_uid, receiver_uid;
	int sequential;
	long gap_us;
	struct level levels[MAX_LEVELS];
	int n_levels;
};

struct child {
	pid_t pid;
	int in;  /* its stdin, or -1 */
	int out; /* its stdout */
};

/* Growing list of samples. */
struct samples {
	uint64_t *v;
	size_t n, cap;
};

static char bin_dir[PATH_MAX];
static int failures;

static void usage(void)
{
	fprintf(stderr,
		"usage: ref-bench --shim LIB --device PATH --dir DIR [--strategy direct|temporary-node] [--label LABEL]\n"
		"                 [--privileged-uid UID] [--receiver-uid UID] [--sequential N] [--gap-us N]\n"
		"                 [--concurrent LAUNCHERS:ROUNDS]...\n");
	exit(2);
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void push(struct samples *s, uint64_t x)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 256;
		s->v = realloc(s->v, s->cap * sizeof(*s->v));
		if (!s->v)
			die("realloc");
	}
	s->v[s->n++] = x;
}

static int compare_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static uint64_t percentile(const uint64_t *sorted, size_t n, double q)
{
	if (n == 0)
		return 0;
	size_t rank = (size_t)(q * (double)n + 0.999999999);
	if (rank < 1)
		rank = 1;
	return sorted[(rank > n ? n : rank) - 1];
}

enum role { BROKER, MIDDLE, RECEIVER };

/* Starts one of our programs with its stdout (and, if want_stdin, stdin) on pipes. */
static struct child spawn(enum role role, const struct options *o, char *const argv[], int want_stdin)
{
	int out[2], in[2] = { -1, -1 };
	if (pipe2(out, O_CLOEXEC) < 0 || (want_stdin && pipe2(in, O_CLOEXEC) < 0))
		die("pipe2");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		dup2(out[1], STDOUT_FILENO);
		if (want_stdin)
			dup2(in[0], STDIN_FILENO);
		char uids[32];
		switch (role) {
		case BROKER:
			snprintf(uids, sizeof(uids), "%ld", o->privileged_uid);
			setenv("LD_PRELOAD", o->shim, 1);
			setenv("FAKE_IOMMU_DEVICE", o->device, 1);
			if (o->privileged_uid >= 0)
				setenv("FAKE_IOMMU_PRIVILEGED_UIDS", uids, 1);
			break;
		case MIDDLE:
			unsetenv("LD_PRELOAD");
			break;
		case RECEIVER:
			setenv("LD_PRELOAD", o->shim, 1);
			setenv("FAKE_IOMMU_DEVICE", o->device, 1);
			unsetenv("FAKE_IOMMU_PRIVILEGED_UIDS");
			if (o->receiver_uid >= 0 &&
			    (setgroups(0, NULL) < 0 || setgid((gid_t)o->receiver_uid) < 0 || setuid((uid_t)o->receiver_uid) < 0))
				_exit(126);
			break;
		}
		char path[PATH_MAX + 32];
		snprintf(path, sizeof(path), "%s/%s", bin_dir, argv[0]);
		execv(path, argv);
		_exit(127);
	}
	close(out[1]);
	if (want_stdin)
		close(in[0]);
	return (struct child){ .pid = pid, .in = in[1], .out = out[0] };
}

/* Reads one line (without the newline) from fd; false at EOF. */
static int read_line(int fd, char *buf, size_t size)
{
	size_t n = 0;
	while (n + 1 < size) {
		ssize_t got = read(fd, buf + n, 1);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			return 0;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
	return 1;
}

/* Everything left on fd, NUL-terminated; the caller frees it. */
static char *read_all(int fd)
{
	size_t n = 0, cap = 4096;
	char *buf = malloc(cap);
	if (!buf)
		die("malloc");
	for (;;) {
		if (cap - n < 2048 && !(buf = realloc(buf, cap *= 2)))
			die("realloc");
		ssize_t got = read(fd, buf + n, cap - n - 1);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		n += (size_t)got;
	}
	buf[n] = '\0';
	return buf;
}

static uint64_t field(const char *line, const char *name)
{
	const char *at = strstr(line, name);
	return at ? strtoull(at + strlen(name), NULL, 10) : 0;
}

/* Collects a receiver's handoff lines: latencies into `ns`, times into first/last; counts failures. */
static void collect(char *text, struct samples *ns, uint64_t *first_connect, uint64_t *last_fd)
{
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		if (strstr(line, "\"error\"")) {
			fprintf(stderr, "ref-bench: a receiver failed: %s\n", line);
			failures++;
		} else if (strstr(line, "\"fdNs\"")) {
			uint64_t c = field(line, "\"connectNs\":"), f = field(line, "\"fdNs\":");
			push(ns, f - c);
			if (*first_connect == 0 || c < *first_connect)
				*first_connect = c;
			if (f > *last_fd)
				*last_fd = f;
		}
	}
}

static int reap(pid_t pid)
{
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static long rss_kb(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	long kb = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* CPU time the process has run so far, in ns (the first field of /proc/<pid>/schedstat; the programs are single-threaded). */
static uint64_t cpu_ns(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
	FILE *f = fopen(path, "r");
	unsigned long long ns = 0;
	if (!f)
		return 0;
	if (fscanf(f, "%llu", &ns) != 1)
		ns = 0;
	fclose(f);
	return (uint64_t)ns;
}

static void print_samples(const struct samples *s)
{
	putchar('[');
	for (size_t i = 0; i < s->n; i++)
		printf("%s%" PRIu64, i ? "," : "", s->v[i]);
	putchar(']');
}

static void print_summary(struct samples *s)
{
	qsort(s->v, s->n, sizeof(*s->v), compare_u64);
	printf("{\"n\":%zu,\"p50Ns\":%" PRIu64 ",\"p99Ns\":%" PRIu64 ",\"maxNs\":%" PRIu64 "}", s->n, percentile(s->v, s->n, 0.5),
	       percentile(s->v, s->n, 0.99), s->n ? s->v[s->n - 1] : 0);
}

static void parse_options(int argc, char **argv, struct options *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		i++;
		if (!strcmp(a, "--shim"))
			o->shim = v;
		else if (!strcmp(a, "--device"))
			o->device = v;
		else if (!strcmp(a, "--dir"))
			o->dir = v;
		else if (!strcmp(a, "--label"))
			o->label = v;
		else if (!strcmp(a, "--strategy") && (!strcmp(v, "direct") || !strcmp(v, "temporary-node")))
			o->temporary_node = !strcmp(v, "temporary-node");
		else if (!strcmp(a, "--privileged-uid"))
			o->privileged_uid = strtol(v, NULL, 10);
		else if (!strcmp(a, "--receiver-uid"))
			o->receiver_uid = strtol(v, NULL, 10);
		else if (!strcmp(a, "--sequential"))
			o->sequential = atoi(v);
		else if (!strcmp(a, "--gap-us"))
			o->gap_us = atol(v);
		else if (!strcmp(a, "--concurrent") && o->n_levels < MAX_LEVELS) {
			struct level *l = &o->levels[o->n_levels++];
			if (sscanf(v, "%d:%d", &l->launchers, &l->rounds) != 2 || l->launchers < 1 || l->rounds < 1)
				usage();
		} else
			usage();
	}
	if (!o->shim || !o->device || !o->dir)
		usage();
}

int main(int argc, char **argv)
{
	struct options o = { .privileged_uid = -1, .receiver_uid = -1, .label = "" };
	parse_options(argc, argv, &o);
	signal(SIGPIPE, SIG_IGN);

	char self[PATH_MAX];
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (len < 0)
		die("readlink /proc/self/exe");
	self[len] = '\0';
	snprintf(bin_dir, sizeof(bin_dir), "%s", dirname(self));

	char broker_sock[PATH_MAX], middle_sock[PATH_MAX], node_dir[PATH_MAX];
	snprintf(broker_sock, sizeof(broker_sock), "%s/ref-broker.sock", o.dir);
	snprintf(middle_sock, sizeof(middle_sock), "%s/ref-handoff.sock", o.dir);
	snprintf(node_dir, sizeof(node_dir), "%s/ref-nodes", o.dir);
	if (o.temporary_node && mkdir(node_dir, 0755) < 0 && errno != EEXIST)
		die("mkdir node dir");

	/* Start the broker, then the middle; each prints "ready" once it listens. */
	char uid_text[32];
	snprintf(uid_text, sizeof(uid_text), "%d", (int)geteuid());
	char *broker_argv[] = { "ref-broker", "--socket", broker_sock, "--device", (char *)o.device, "--allowed-uid", uid_text,
				o.temporary_node ? "--node-dir" : NULL, node_dir, "--label", (char *)o.label, NULL };
	char line[256];
	uint64_t t0 = now_ns();
	struct child broker = spawn(BROKER, &o, broker_argv, 0);
	if (!read_line(broker.out, line, sizeof(line)) || strcmp(line, "ready"))
		return fprintf(stderr, "ref-bench: ref-broker did not start\n"), 1;
	uint64_t broker_ready_ns = now_ns() - t0;
	char *middle_argv[] = { "ref-middle", "--socket", middle_sock, "--broker", broker_sock, NULL };
	t0 = now_ns();
	struct child middle = spawn(MIDDLE, &o, middle_argv, 0);
	if (!read_line(middle.out, line, sizeof(line)) || strcmp(line, "ready"))
		return fprintf(stderr, "ref-bench: ref-middle did not start\n"), 1;
	uint64_t middle_ready_ns = now_ns() - t0;
	long idle_broker = rss_kb(broker.pid), idle_middle = rss_kb(middle.pid);
	uint64_t cpu_broker = cpu_ns(broker.pid), cpu_middle = cpu_ns(middle.pid);

	/* One receiver, N handoffs one after another. */
	struct samples sequential = { 0 };
	if (o.sequential > 0) {
		char count[16], gap[24];
		snprintf(count, sizeof(count), "%d", o.sequential);
		snprintf(gap, sizeof(gap), "%ld", o.gap_us);
		char *rargv[] = { "ref-receiver", "--count", count, "--gap-us", gap, "--socket", middle_sock, NULL };
		struct child r = spawn(RECEIVER, &o, rargv, 0);
		char *text = read_all(r.out);
		close(r.out);
		uint64_t first = 0, last = 0;
		collect(text, &sequential, &first, &last);
		free(text);
		if (reap(r.pid) != 0)
			failures++;
	}

	printf("{\"strategy\":\"%s\",\"startup\":{\"brokerReadyNs\":%" PRIu64 ",\"middleReadyNs\":%" PRIu64 "},\"sequential\":",
	       o.temporary_node ? "temporary-node" : "direct", broker_ready_ns, middle_ready_ns);
	print_samples(&sequential);
	printf(",\"concurrent\":[");

	/* Rounds of C receivers released at one moment. */
	struct samples all_levels[MAX_LEVELS] = { 0 };
	for (int l = 0; l < o.n_levels; l++) {
		const struct level *lv = &o.levels[l];
		printf("%s{\"launchers\":%d,\"rounds\":[", l ? "," : "", lv->launchers);
		struct child *kids = calloc((size_t)lv->launchers, sizeof(*kids));
		if (!kids)
			die("calloc");
		for (int round = 0; round < lv->rounds; round++) {
			char *rargv[] = { "ref-receiver", "--wait-start", "--socket", middle_sock, NULL };
			for (int i = 0; i < lv->launchers; i++)
				kids[i] = spawn(RECEIVER, &o, rargv, 1);
			for (int i = 0; i < lv->launchers; i++)
				if (!read_line(kids[i].out, line, sizeof(line)) || strcmp(line, "ready"))
					return fprintf(stderr, "ref-bench: a receiver did not start\n"), 1;
			/* Time to write every start line, with room to spare. */
			uint64_t start = now_ns() + 5000000ull + (uint64_t)lv->launchers * 20000ull;
			char start_line[32];
			int n = snprintf(start_line, sizeof(start_line), "%" PRIu64 "\n", start);
			for (int i = 0; i < lv->launchers; i++) {
				if (write(kids[i].in, start_line, (size_t)n) != n)
					die("write start");
				close(kids[i].in);
			}
			struct samples round_ns = { 0 };
			uint64_t first = 0, last = 0;
			for (int i = 0; i < lv->launchers; i++) {
				char *text = read_all(kids[i].out);
				close(kids[i].out);
				collect(text, &round_ns, &first, &last);
				free(text);
				if (reap(kids[i].pid) != 0)
					failures++;
			}
			for (size_t i = 0; i < round_ns.n; i++)
				push(&all_levels[l], round_ns.v[i]);
			printf("%s{\"startNs\":%" PRIu64 ",\"firstConnectNs\":%" PRIu64 ",\"lastFdNs\":%" PRIu64 ",\"ns\":", round ? "," : "",
			       start, first, last);
			print_samples(&round_ns);
			putchar('}');
			free(round_ns.v);
		}
		printf("]}");
		free(kids);
	}

	printf("],\"cpuNs\":{\"broker\":%" PRIu64 ",\"middle\":%" PRIu64 "}", cpu_ns(broker.pid) - cpu_broker, cpu_ns(middle.pid) - cpu_middle);
	printf(",\"rssKb\":{\"idle\":{\"broker\":%ld,\"middle\":%ld},\"afterLoad\":{\"broker\":%ld,\"middle\":%ld}}", idle_broker,
	       idle_middle, rss_kb(broker.pid), rss_kb(middle.pid));
	printf(",\"summary\":{\"sequential\":");
	print_summary(&sequential);
	printf(",\"concurrent\":[");
	for (int l = 0; l < o.n_levels; l++) {
		printf("%s{\"launchers\":%d,\"latency\":", l ? "," : "", o.levels[l].launchers);
		print_summary(&all_levels[l]);
		putchar('}');
		free(all_levels[l].v);
	}
	printf("]},\"failures\":%d}\n", failures);
	fflush(stdout);

	kill(middle.pid, SIGTERM);
	kill(broker.pid, SIGTERM);
	reap(middle.pid);
	reap(broker.pid);
	unlink(middle_sock);
	unlink(broker_sock);
	free(sequential.v);
	return failures ? 1 : 0;
}
