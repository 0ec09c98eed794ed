/* The benchmark's null responder: the ceiling that nats-server and the load generator
 * allow. Connects to 127.0.0.1:<port>, subscribes to <subject>, and answers every MSG that
 * has a reply subject with one fixed body, doing no other work; one write per read.
 *
 *     null-responder <port> <subject>      (prints "serving" once subscribed)
 *
 * bench.py compiles it with the system C compiler into benchmarks/.build/. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char in[1 << 20], out[1 << 22];
static const char body[] =
    "{\"access_token\":\"null\",\"token_type\":\"Bearer\",\"expires_in\":300}";

static void send_all(int fd, const char *p, size_t n) {
    while (n) { ssize_t w = write(fd, p, n); if (w <= 0) exit(1); p += w; n -= (size_t)w; }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a; memset(&a, 0, sizeof a);
    a.sin_family = AF_INET; a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) return 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char hello[512];
    int n = snprintf(hello, sizeof hello, "CONNECT {\"verbose\":false,\"pedantic\":false,"
                     "\"protocol\":1,\"name\":\"null-responder\"}\r\n"
                     "SUB %s 1\r\nPING\r\n", argv[2]);
    send_all(fd, hello, (size_t)n);
    size_t have = 0; int serving = 0;
    for (;;) {
        ssize_t r = read(fd, in + have, sizeof in - have);
        if (r <= 0) return 0;
        have += (size_t)r;
        size_t pos = 0, o = 0;
        for (;;) {
            char *line = in + pos, *eol = memmem(line, have - pos, "\r\n", 2);
            if (!eol) break;
            size_t len = (size_t)(eol - line), next = pos + len + 2;
            if (len > 4 && !memcmp(line, "MSG ", 4)) {
                char *tok[5]; int k = 0; char *p = line + 4, *end = eol;
                while (p < end && k < 5) {
                    tok[k++] = p;
                    while (p < end && *p != ' ') p++;
                    while (p < end && *p == ' ') p++;
                }
                size_t size = (size_t)atol(tok[k - 1]);
                if (next + size + 2 > have) break;
                if (k == 4) {
                    size_t rl = (size_t)(tok[3] - tok[2]);
                    while (rl && tok[2][rl - 1] == ' ') rl--;
                    o += (size_t)sprintf(out + o, "PUB %.*s %zu\r\n%s\r\n", (int)rl, tok[2],
                                         sizeof body - 1, body);
                }
                next += size + 2;
            } else if (len == 4 && !memcmp(line, "PING", 4)) {
                memcpy(out + o, "PONG\r\n", 6); o += 6;
            } else if (len == 4 && !memcmp(line, "PONG", 4) && !serving) {
                serving = 1; printf("serving\n"); fflush(stdout);
            }
            pos = next;
            if (o > sizeof out - 8192) { send_all(fd, out, o); o = 0; }
        }
        memmove(in, in + pos, have - pos); have -= pos;
        if (o) send_all(fd, out, o);
    }
}
