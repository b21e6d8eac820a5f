/* Memory copy bandwidth: memcpy of SIZE bytes between two pre-faulted
 * buffers, REPS times. Prints one {"bytes":N,"ns":N} line per rep. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: memcopy SIZE REPS\n"); return 2; }
  long long size = atoll(argv[1]);
  int reps = atoi(argv[2]);
  if (size <= 0 || size > (8LL << 30) || reps <= 0 || reps > 1000) { fprintf(stderr, "memcopy: SIZE in 1..8 GiB, REPS in 1..1000\n"); return 2; }
  char *a = malloc(size), *b = malloc(size);
  if (!a || !b) { fprintf(stderr, "memcopy: cannot allocate 2 x %lld bytes\n", size); return 1; }
  memset(a, 0x5a, size);
  memset(b, 0xa5, size);
  for (int r = 0; r < reps; r++) {
    long long t0 = now_ns();
    memcpy(b, a, size);
    long long t1 = now_ns();
    printf("{\"bytes\":%lld,\"ns\":%lld,\"check\":%d}\n", size, t1 - t0, b[size / 2]);
  }
  return 0;
}
