/*
 * The C reference's middle (the kubelet-bridge's part): one connection at a
 * time, a launcher connects; read its peer credentials (as the bridge does
 * for its log); connect to the broker on a fresh connection; send the 1-byte
 * request; receive the context; send the launcher one byte 0 with the fd
 * (the handoff socket contract in docs/PROTOCOL.md); close everything.
 *
 * It never touches the device, so, like the bridge, it runs without the shim.
 */
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

static void usage(void)
{
	fprintf(stderr, "usage: ref-middle --socket PATH --broker PATH\n");
	exit(2);
}

static void serve(const char *broker_path, int conn)
{
	struct ucred peer;
	socklen_t len = sizeof(peer);
	if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &peer, &len) < 0)
		return;
	int broker = connect_unix(broker_path);
	if (broker < 0) {
		fprintf(stderr, "ref-middle: cannot reach the broker: %s\n", strerror(-broker));
		return;
	}
	int fd = -1;
	char request = 1;
	if (send(broker, &request, 1, MSG_NOSIGNAL) == 1)
		fd = recv_fd(broker);
	close(broker);
	if (fd < 0) {
		fprintf(stderr, "ref-middle: no context from the broker: %s\n", strerror(-fd));
		return; /* closing without a byte: the launcher sees no fd */
	}
	send_byte_with_fd(conn, 0, fd);
	close(fd);
}

int main(int argc, char **argv)
{
	const char *socket_path = NULL, *broker_path = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--socket") && i + 1 < argc)
			socket_path = argv[++i];
		else if (!strcmp(argv[i], "--broker") && i + 1 < argc)
			broker_path = argv[++i];
		else
			usage();
	}
	if (!socket_path || !broker_path)
		usage();
	/* Launchers run as another uid, as with the bridge's handoff sockets. */
	int sock = listen_unix(socket_path, 0666);
	if (sock < 0) {
		fprintf(stderr, "ref-middle: cannot listen on %s: %s\n", socket_path, strerror(-sock));
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int conn = accept4(sock, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("ref-middle: accept");
			return 1;
		}
		serve(broker_path, conn);
		close(conn);
	}
}
