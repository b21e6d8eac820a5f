/* The raw limit of the device-state path: a producer writes BYTES into a
 * pipe, splice moves them pipe -> UNIX socket, splice moves them socket ->
 * pipe, a consumer reads them out. Four threads, no userspace copy in the
 * middle, same shape as data fd -> socket -> data fd.
 * Prints: {"bytes":N,"ns":N} */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
static long long total;
static int p1[2], p2[2], sv[2];

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "splicecopy: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void *producer(void *arg) {
  (void)arg;
  char *buf = malloc(CHUNK);
  if (!buf) die("malloc");
  for (int i = 0; i < CHUNK; i++) buf[i] = (char)(i * 2654435761u >> 11);
  long long left = total;
  while (left > 0) {
    ssize_t n = write(p1[1], buf, left < CHUNK ? left : CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("write");
    left -= n;
  }
  close(p1[1]);
  free(buf);
  return NULL;
}

static void *mover(void *arg) {
  int in = ((int *)arg)[0], out = ((int *)arg)[1];
  for (;;) {
    ssize_t n = splice(in, NULL, out, NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_MORE);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("splice");
    if (n == 0) break;
  }
  if (out == sv[0]) shutdown(sv[0], SHUT_WR);
  else close(out);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: splicecopy BYTES\n"); return 2; }
  total = atoll(argv[1]);
  if (total <= 0) { fprintf(stderr, "splicecopy: BYTES must be > 0\n"); return 2; }
  if (pipe(p1) || pipe(p2) || socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("pipe/socketpair");
  /* The same pipe size the native transfer asks for; refused (EPERM) just means the default. */
  fcntl(p1[1], F_SETPIPE_SZ, CHUNK);
  fcntl(p2[1], F_SETPIPE_SZ, CHUNK);
  int a[2] = { p1[0], sv[0] }, b[2] = { sv[1], p2[1] };
  pthread_t tp, t1, t2;
  char *buf = malloc(CHUNK);
  if (!buf) die("malloc");
  long long t0 = now_ns();
  pthread_create(&tp, NULL, producer, NULL);
  pthread_create(&t1, NULL, mover, a);
  pthread_create(&t2, NULL, mover, b);
  long long got = 0;
  for (;;) {
    ssize_t n = read(p2[0], buf, CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("read");
    if (n == 0) break;
    got += n;
  }
  long long t1ns = now_ns();
  pthread_join(tp, NULL);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  if (got != total) { fprintf(stderr, "splicecopy: moved %lld of %lld bytes\n", got, total); return 1; }
  printf("{\"bytes\":%lld,\"ns\":%lld}\n", total, t1ns - t0);
  return 0;
}
