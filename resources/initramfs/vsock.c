/*
 * strato-vsock: the guest end of the vsock tests (AF_VSOCK streams).
 *
 *   strato-vsock echo PORT
 *       Listens on PORT, and for each connection sends back everything
 *       it reads until the peer shuts its sending side.
 *   strato-vsock send CID PORT MIB
 *       Connects to CID:PORT, sends MIB MiB of pattern() and shuts its
 *       sending side, then prints what it got back until the end.
 *
 * Prints one STRATO_VSOCK line per result, for the host to wait for.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

/* Byte i of the test data: not periodic within a page or a packet. */
static unsigned char pattern(unsigned long i)
{
	return (unsigned char)(i * 7 + i / 4093);
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int echo(unsigned int port)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_cid = VMADDR_CID_ANY,
		.svm_port = port,
	};
	static unsigned char buf[65536];
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    listen(s, 4) < 0) {
		printf("STRATO_VSOCK_ECHO_FAILED=%s\n", strerror(errno));
		return 1;
	}
	printf("STRATO_VSOCK_ECHO_READY=%u\n", port);
	fflush(stdout);
	for (;;) {
		unsigned long total = 0;
		ssize_t n;
		int c = accept(s, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR)
				continue;
			printf("STRATO_VSOCK_ECHO_FAILED=%s\n", strerror(errno));
			return 1;
		}
		while ((n = read(c, buf, sizeof(buf))) != 0) {
			if (n < 0) {
				if (errno == EINTR)
					continue;
				break;
			}
			if (write_all(c, buf, (size_t)n) < 0)
				break;
			total += (unsigned long)n;
		}
		close(c);
		printf("STRATO_VSOCK_ECHOED=%lu\n", total);
		fflush(stdout);
	}
}

static int send_data(unsigned int cid, unsigned int port, unsigned long mib)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_cid = cid,
		.svm_port = port,
	};
	static unsigned char buf[65536];
	unsigned long sent = 0, total = mib << 20;
	char reply[128];
	size_t got = 0;
	ssize_t n;
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		printf("STRATO_VSOCK_SEND_FAILED=%s\n", strerror(errno));
		return 1;
	}
	while (sent < total) {
		size_t chunk = total - sent < sizeof(buf) ? total - sent : sizeof(buf);
		for (size_t i = 0; i < chunk; i++)
			buf[i] = pattern(sent + i);
		if (write_all(s, buf, chunk) < 0) {
			printf("STRATO_VSOCK_SEND_FAILED=%s\n", strerror(errno));
			return 1;
		}
		sent += chunk;
	}
	shutdown(s, SHUT_WR);
	while (got < sizeof(reply) - 1 &&
	       (n = read(s, reply + got, sizeof(reply) - 1 - got)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		got += (size_t)n;
	}
	reply[got] = 0;
	reply[strcspn(reply, "\n")] = 0;
	printf("STRATO_VSOCK_SENT=%lu REPLY=%s\n", sent, reply);
	close(s);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 3 && strcmp(argv[1], "echo") == 0)
		return echo((unsigned int)strtoul(argv[2], NULL, 10));
	if (argc == 5 && strcmp(argv[1], "send") == 0)
		return send_data((unsigned int)strtoul(argv[2], NULL, 10),
				 (unsigned int)strtoul(argv[3], NULL, 10),
				 strtoul(argv[4], NULL, 10));
	fprintf(stderr, "usage: strato-vsock echo PORT | send CID PORT MIB\n");
	return 2;
}
