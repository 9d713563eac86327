/*
 * Benchmark-only: durable_echo_server.py in C, the floor under any served durable write with no
 * interpreter in the way.
 *
 * The same protocol and file as the Python server: for each TPM command frame (read whole, by the
 * size in its header) it overwrites --record bytes of a preallocated, zero-filled, synced file with
 * one pwrite, calls fdatasync, and answers a fixed 10-byte success response. What is left of a
 * round trip here is the kernel's: the request's and the sync's wake-ups, the client's wake-up and
 * the write itself. journal_latency.py builds it with the C compiler Python was built with and
 * times it in the floor pass beside the Python echo, the served NV_Write and swtpm.
 *
 * usage: durable-echo --port N --file PATH [--record BYTES]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEADER 10
#define FILE_SIZE (1 << 22)
#define MAX_FRAME 8192

static const unsigned char RESPONSE[HEADER] = {0x80, 0x01, 0, 0, 0, HEADER, 0, 0, 0, 0};

static size_t frame_size(const unsigned char *buf) {
    return (size_t)buf[2] << 24 | (size_t)buf[3] << 16 | (size_t)buf[4] << 8 | buf[5];
}

static int write_all(int fd, const unsigned char *data, size_t count) {
    while (count > 0) {
        ssize_t n = write(fd, data, count);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        count -= (size_t)n;
    }
    return 0;
}

/* Until the peer closes or sends a frame out of bounds: read a whole frame, make one record durable,
 * answer. */
static void answer_frames(int conn, int fd, const unsigned char *payload, size_t record) {
    unsigned char buf[MAX_FRAME];
    size_t have = 0;
    off_t offset = 0;
    for (;;) {
        while (have < HEADER || have < frame_size(buf)) {
            if (have >= HEADER && frame_size(buf) > sizeof buf)
                return;
            ssize_t n = read(conn, buf + have, sizeof buf - have);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return;
            have += (size_t)n;
        }
        size_t size = frame_size(buf) < HEADER ? HEADER : frame_size(buf);
        memmove(buf, buf + size, have - size);
        have -= size;
        if (pwrite(fd, payload, record, offset) != (ssize_t)record || fdatasync(fd) != 0) {
            perror("durable-echo: write");
            exit(1);
        }
        offset = (offset + (off_t)record) % (FILE_SIZE - (off_t)record);
        if (write_all(conn, RESPONSE, sizeof RESPONSE) != 0)
            return;
    }
}

int main(int argc, char **argv) {
    int port = -1;
    const char *path = NULL;
    long record = 273;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--file") == 0)
            path = argv[i + 1];
        else if (strcmp(argv[i], "--record") == 0)
            record = atol(argv[i + 1]);
    }
    if (port <= 0 || port > 65535 || path == NULL || record < 1 || record > 4096) {
        fprintf(stderr, "usage: %s --port N --file PATH [--record 1..4096]\n", argv[0]);
        return 2;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    unsigned char *zeros = calloc(1, FILE_SIZE);
    if (fd < 0 || zeros == NULL || pwrite(fd, zeros, FILE_SIZE, 0) != FILE_SIZE || fsync(fd) != 0) {
        perror("durable-echo: preallocating the file");
        return 1;
    }
    free(zeros); /* allocated and sized: each request then overwrites data only, as the journal does */
    unsigned char payload[4096];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (unsigned char)(i * 151 + 7);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 4) != 0) {
        perror("durable-echo: listening");
        return 1;
    }
    printf("vtpm: serving on 127.0.0.1:%d (durable echo, C)\n", port);
    fflush(stdout);
    for (;;) {
        int conn = accept(listener, NULL, NULL);
        if (conn < 0) {
            if (errno == EINTR)
                continue;
            perror("durable-echo: accept");
            return 1;
        }
        setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        answer_frames(conn, fd, payload, (size_t)record);
        close(conn);
    }
}
