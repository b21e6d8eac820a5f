/* Cost of a call from C, the floor for the FFI comparison: getpid (a real
 * syscall since glibc 2.25 stopped caching it) and abs through a volatile
 * function pointer (a plain library call the compiler cannot inline).
 * Prints: {"getpid_ns":X,"abs_ns":Y,"calls":N} */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000;
  if (n <= 0 || n > 1000000000L) { fprintf(stderr, "usage: callloop CALLS (1..1e9)\n"); return 2; }
  pid_t (*volatile gp)(void) = getpid;
  int (*volatile ab)(int) = abs;
  long long sum = 0, t0 = now_ns();
  for (long i = 0; i < n; i++) sum += gp();
  long long t1 = now_ns();
  for (long i = 0; i < n; i++) sum += ab((int)-i);
  long long t2 = now_ns();
  printf("{\"getpid_ns\":%.2f,\"abs_ns\":%.2f,\"calls\":%ld,\"sum\":%lld}\n", (double)(t1 - t0) / n, (double)(t2 - t1) / n, n, sum);
  return 0;
}
