// TCP connect/request/response for the load-balancer benchmark (integration/bench/lb.ts). Static
// (gcc -static -O2), IPv4 and IPv6, no name resolution (a static binary must not need glibc's NSS).
//
//   crr serve PORT
//       accept, write one byte, close; forever, one connection at a time (the client is
//       sequential). A dual-stack socket (IPv4 too), or IPv4 only where IPv6 is unavailable.
//   crr client HOST PORT --count N --seconds S [--warmup W] [--timeout-ms T] [--local-port P]
//       W untimed connections, then connect, read the byte, close with SO_LINGER 0 (a reset: no
//       TIME_WAIT, so sequential connections never exhaust the ephemeral ports), one after the
//       other, until N connections or S seconds, whichever comes first. Each connection's time
//       from connect() to its first byte is recorded. Prints one JSON line: connections (that got
//       their byte), failures, seconds, conns_per_sec, p50_us, p99_us, mean_us, max_us, and
//       first_error. A connect or read that takes longer than T ms (default 1000) is a failure.
//       --local-port binds every connection to source port P (they are sequential and leave no
//       TIME_WAIT, so P is free again each time): one 4-tuple, again and again.
//   crr probe HOST PORT --seconds S [--interval-us I] [--timeout-ms T]
//       Prints {"ready":true,...} and then tries a connection every I µs (default 200, each given
//       T ms, default 5) until one gets its byte or S seconds pass; prints the CLOCK_MONOTONIC
//       time of that first success in ns (the host's clock: containers share it), the attempts and
//       the last error. Used for "time to the first connection through a new VIP".
//
// Exit status: 0 when at least one connection succeeded, 1 when none did, 2 on bad arguments.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int serve(int port) {
  signal(SIGPIPE, SIG_IGN);
  int one = 1, off = 0;
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
  if (fd >= 0) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    if (bind(fd, (struct sockaddr *)&a6, sizeof a6) < 0) {
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    // No IPv6 in this namespace: IPv4 only.
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = {htonl(INADDR_ANY)}};
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
      perror("crr serve: socket");
      return 2;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a4, sizeof a4) < 0) {
      perror("crr serve: bind");
      return 2;
    }
  }
  if (listen(fd, 4096) < 0) {
    perror("crr serve: listen");
    return 2;
  }
  fprintf(stderr, "crr: serving on port %d\n", port);
  for (;;) {
    int c = accept(fd, NULL, NULL);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) continue;
      perror("crr serve: accept");
      return 1;
    }
    ssize_t w = write(c, "x", 1);
    (void)w;
    close(c);
  }
}

struct target {
  struct sockaddr_storage addr;
  socklen_t len;
};

static int parse_target(const char *host, const char *port, struct target *t) {
  memset(t, 0, sizeof *t);
  int p = atoi(port);
  if (p <= 0 || p > 65535) return -1;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&t->addr;
  struct sockaddr_in *a4 = (struct sockaddr_in *)&t->addr;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(p);
    t->len = sizeof *a4;
    return 0;
  }
  if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(p);
    t->len = sizeof *a6;
    return 0;
  }
  return -1;
}

static int local_port; /* --local-port, 0: the kernel picks */

/* One connection: connect, read one byte, reset. 0 on success, else an errno-like code (ETIMEDOUT, EPROTO for a short read). */
static int one_connection(const struct target *t, int timeout_ms) {
  int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  if (local_port) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_storage local = {.ss_family = t->addr.ss_family};
    if (t->addr.ss_family == AF_INET) ((struct sockaddr_in *)&local)->sin_port = htons(local_port);
    else ((struct sockaddr_in6 *)&local)->sin6_port = htons(local_port);
    if (bind(fd, (struct sockaddr *)&local, t->len) < 0) {
      int err = errno;
      close(fd);
      return err;
    }
  }
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  // SO_SNDTIMEO bounds a blocking connect(), SO_RCVTIMEO the read.
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int err = 0;
  if (connect(fd, (const struct sockaddr *)&t->addr, t->len) < 0) {
    err = errno == EINPROGRESS || errno == EAGAIN ? ETIMEDOUT : errno;
  } else {
    char b;
    ssize_t n = read(fd, &b, 1);
    if (n != 1) err = n < 0 ? (errno == EAGAIN ? ETIMEDOUT : errno) : EPROTO;
  }
  close(fd);
  return err;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile, as integration/bench/stats.ts computes it. */
static double percentile_us(const uint32_t *sorted, long n, double p) {
  if (n == 0) return -1;
  long index = (long)((p / 100.0) * (double)n + 0.999999999) - 1;
  if (index < 0) index = 0;
  if (index >= n) index = n - 1;
  return sorted[index] / 1000.0;
}

static int client(const struct target *t, long count, double seconds, long warmup, int timeout_ms) {
  signal(SIGPIPE, SIG_IGN);
  uint32_t *ns = malloc((size_t)count * sizeof *ns);
  if (!ns) {
    fprintf(stderr, "crr client: cannot allocate %ld samples\n", count);
    return 2;
  }
  long ok = 0, failures = 0;
  int first_error = 0;
  uint64_t warm_deadline = now_ns() + (uint64_t)(seconds * 1e9);
  for (long i = 0; i < warmup && now_ns() < warm_deadline; i++) one_connection(t, timeout_ms);
  uint64_t start = now_ns();
  uint64_t deadline = start + (uint64_t)(seconds * 1e9);
  uint64_t end = start;
  while (ok + failures < count) {
    uint64_t t0 = now_ns();
    if (t0 >= deadline) break;
    int err = one_connection(t, timeout_ms);
    uint64_t t1 = now_ns();
    end = t1;
    if (err) {
      failures++;
      if (!first_error) first_error = err;
      continue;
    }
    uint64_t d = t1 - t0;
    ns[ok++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
  }
  double elapsed = (double)(end - start) / 1e9;
  double sum = 0;
  for (long i = 0; i < ok; i++) sum += ns[i];
  qsort(ns, (size_t)ok, sizeof *ns, cmp_u32);
  printf("{\"connections\":%ld,\"failures\":%ld,\"seconds\":%.6f,\"conns_per_sec\":%.1f,\"p50_us\":%.2f,\"p99_us\":%.2f,"
         "\"mean_us\":%.2f,\"max_us\":%.2f,\"first_error\":\"%s\"}\n",
         ok, failures, elapsed, elapsed > 0 ? ok / elapsed : 0.0, percentile_us(ns, ok, 50), percentile_us(ns, ok, 99),
         ok ? sum / ok / 1000.0 : -1.0, ok ? ns[ok - 1] / 1000.0 : -1.0, first_error ? strerror(first_error) : "");
  free(ns);
  return ok > 0 ? 0 : 1;
}

static int probe(const struct target *t, double seconds, long interval_us, int timeout_ms) {
  signal(SIGPIPE, SIG_IGN);
  uint64_t start = now_ns();
  printf("{\"ready\":true,\"start_ns\":%llu}\n", (unsigned long long)start);
  fflush(stdout);
  uint64_t deadline = start + (uint64_t)(seconds * 1e9);
  long attempts = 0;
  int last_error = 0;
  for (;;) {
    uint64_t t0 = now_ns();
    if (t0 >= deadline) break;
    attempts++;
    int err = one_connection(t, timeout_ms);
    if (!err) {
      uint64_t t1 = now_ns();
      printf("{\"ok\":true,\"first_ok_ns\":%llu,\"attempt_start_ns\":%llu,\"attempts\":%ld,\"last_error\":\"%s\"}\n", (unsigned long long)t1,
             (unsigned long long)t0, attempts, last_error ? strerror(last_error) : "");
      return 0;
    }
    last_error = err;
    struct timespec pause = {.tv_sec = 0, .tv_nsec = interval_us * 1000};
    nanosleep(&pause, NULL);
  }
  printf("{\"ok\":false,\"attempts\":%ld,\"last_error\":\"%s\"}\n", attempts, last_error ? strerror(last_error) : "");
  return 1;
}

static int usage(void) {
  fprintf(stderr, "usage: crr serve PORT | crr client HOST PORT --count N --seconds S [--warmup W] [--timeout-ms T] [--local-port P] | "
                  "crr probe HOST PORT --seconds S [--interval-us I] [--timeout-ms T]\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "serve") == 0) {
    int port = atoi(argv[2]);
    if (port <= 0 || port > 65535) return usage();
    return serve(port);
  }
  if (argc >= 4 && (strcmp(argv[1], "client") == 0 || strcmp(argv[1], "probe") == 0)) {
    struct target t;
    if (parse_target(argv[2], argv[3], &t) < 0) {
      fprintf(stderr, "crr: %s is not a numeric address or %s not a port\n", argv[2], argv[3]);
      return 2;
    }
    int is_probe = strcmp(argv[1], "probe") == 0;
    long count = 0, warmup = 0, interval_us = 200;
    int timeout_ms = is_probe ? 5 : 1000;
    double seconds = 0;
    for (int i = 4; i < argc; i++) {
      if (i + 1 >= argc) return usage();
      const char *flag = argv[i], *value = argv[++i];
      if (strcmp(flag, "--count") == 0) count = atol(value);
      else if (strcmp(flag, "--seconds") == 0) seconds = atof(value);
      else if (strcmp(flag, "--warmup") == 0) warmup = atol(value);
      else if (strcmp(flag, "--timeout-ms") == 0) timeout_ms = atoi(value);
      else if (strcmp(flag, "--interval-us") == 0) interval_us = atol(value);
      else if (strcmp(flag, "--local-port") == 0) local_port = atoi(value);
      else return usage();
    }
    if (!(seconds > 0) || seconds > 3600 || timeout_ms <= 0 || interval_us < 0 || interval_us > 1000000 || warmup < 0 || local_port < 0 ||
        local_port > 65535)
      return usage();
    if (is_probe) return probe(&t, seconds, interval_us, timeout_ms);
    if (count <= 0 || count > 100000000) return usage();
    return client(&t, count, seconds, warmup, timeout_ms);
  }
  return usage();
}
