/* Raw loopback TCP throughput between two processes: the child accepts and
 * drains, the parent writes BYTES in CHUNK-sized writes. Time runs from the
 * first write until the receiver has read everything and closed, so both
 * ends' work is inside the figure, as it is for a migration.
 * Prints: {"bytes":N,"ns":N} */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "loopback: %s: %s\n", what, strerror(errno));
  exit(1);
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: loopback BYTES CHUNK\n"); return 2; }
  long long total = atoll(argv[1]);
  long chunk = atol(argv[2]);
  if (total <= 0 || chunk <= 0 || chunk > (64L << 20)) { fprintf(stderr, "loopback: BYTES must be > 0 and CHUNK in 1..64 MiB\n"); return 2; }
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  if (ls < 0) die("socket");
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  socklen_t al = sizeof a;
  if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (struct sockaddr *)&a, &al)) die("bind/listen");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    int c = accept(ls, NULL, NULL);
    if (c < 0) die("accept");
    char *buf = malloc(chunk);
    if (!buf) die("malloc");
    long long got = 0;
    for (;;) {
      ssize_t n = read(c, buf, chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) die("read");
      if (n == 0) break;
      got += n;
    }
    close(c);
    _exit(got == total ? 0 : 3);
  }
  close(ls);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) die("socket");
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(s, (struct sockaddr *)&a, sizeof a)) die("connect");
  char *buf = malloc(chunk);
  if (!buf) die("malloc");
  for (long i = 0; i < chunk; i++) buf[i] = (char)(i * 2654435761u >> 13);
  long long t0 = now_ns(), sent = 0;
  while (sent < total) {
    long want = total - sent < chunk ? (long)(total - sent) : chunk;
    ssize_t n = write(s, buf, want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("write");
    sent += n;
  }
  shutdown(s, SHUT_WR);
  char b;
  while (read(s, &b, 1) > 0) {}
  int st;
  waitpid(pid, &st, 0);
  long long t1 = now_ns();
  if (!WIFEXITED(st) || WEXITSTATUS(st)) { fprintf(stderr, "loopback: receiver failed (status %d)\n", st); return 1; }
  printf("{\"bytes\":%lld,\"ns\":%lld}\n", total, t1 - t0);
  return 0;
}
