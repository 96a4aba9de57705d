// Request/response latency for the datapath benchmark (integration/bench/datapath.ts), over TCP
// or UDP, IPv4 or IPv6. Static (gcc -static -O2), no name resolution. sockperf 3.7, which the
// headline latency uses, has no IPv6; this measures every path and family the same way.
//
//   rr serve PORT
//       One dual-stack socket of each kind on PORT (IPv4 only where IPv6 is unavailable): echoes
//       every UDP datagram to its sender, and every byte of one TCP connection at a time (the
//       client is sequential), with TCP_NODELAY.
//   rr client HOST PORT [--udp] [--size B] [--seconds S] [--warmup-seconds W] [--count N]
//       One TCP connection (TCP_NODELAY) or one connected UDP socket; W seconds (default 0.5) of
//       untimed round trips, then B-byte (default 64) messages, each sent when the previous
//       answer arrived, until N round trips (default 1,000,000) or S seconds (default 3). A UDP
//       answer that does not come within 200 ms is counted as lost and the next message sent.
//       Prints one JSON line: n, lost, seconds, p50_us, p99_us, mean_us, max_us, first_error.
//
// Exit status: 0 when at least one round trip was timed, 1 when none was, 2 on bad arguments.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_MESSAGE 65536

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/** A socket bound to PORT on every address: dual-stack where the namespace has IPv6. */
static int bound(int type, int port) {
  int one = 1, off = 0;
  int fd = socket(AF_INET6, type, 0);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
  if (fd >= 0) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    if (bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0) return fd;
    close(fd);
  }
  struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = {htonl(INADDR_ANY)}};
  fd = socket(AF_INET, type, 0);
  if (fd < 0) return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&a4, sizeof a4) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int serve(int port) {
  signal(SIGPIPE, SIG_IGN);
  int listener = bound(SOCK_STREAM, port), udp = bound(SOCK_DGRAM, port), conn = -1, one = 1;
  if (listener < 0 || udp < 0 || listen(listener, 16) < 0) {
    perror("rr serve: bind/listen");
    return 2;
  }
  static char buf[MAX_MESSAGE];
  for (;;) {
    struct pollfd fds[3] = {{.fd = listener, .events = POLLIN}, {.fd = udp, .events = POLLIN}, {.fd = conn, .events = POLLIN}};
    if (poll(fds, conn >= 0 ? 3 : 2, -1) < 0) {
      if (errno == EINTR) continue;
      perror("rr serve: poll");
      return 1;
    }
    if (fds[1].revents & POLLIN) {
      struct sockaddr_storage from;
      socklen_t len = sizeof from;
      ssize_t n = recvfrom(udp, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
      if (n > 0) sendto(udp, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
    }
    if (conn >= 0 && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = read(conn, buf, sizeof buf);
      if (n <= 0 || write(conn, buf, (size_t)n) != n) {
        close(conn);
        conn = -1;
      }
    }
    if (fds[0].revents & POLLIN) {
      int c = accept(listener, NULL, NULL);
      if (c >= 0) {
        // One client at a time: a new connection replaces a stale one.
        if (conn >= 0) close(conn);
        conn = c;
        setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      }
    }
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static long rank(long n, int percent) {
  long i = (n * percent + 99) / 100 - 1;
  return i < 0 ? 0 : i >= n ? n - 1 : i;
}

/** Reads exactly n bytes (TCP may split an answer). */
static int read_full(int fd, char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static int client(const char *host, int port, int udp, size_t size, double seconds, double warmup, long count) {
  struct sockaddr_storage addr;
  socklen_t len;
  memset(&addr, 0, sizeof addr);
  struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    len = sizeof *a4;
  } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    len = sizeof *a6;
  } else {
    fprintf(stderr, "rr client: %s is not an IPv4 or IPv6 address\n", host);
    return 2;
  }
  int fd = socket(addr.ss_family, udp ? SOCK_DGRAM : SOCK_STREAM, 0), one = 1;
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, len) < 0) {
    printf("{\"n\":0,\"lost\":0,\"seconds\":0,\"first_error\":\"connect: %s\"}\n", strerror(errno));
    return 1;
  }
  if (!udp) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  static char out[MAX_MESSAGE], in[MAX_MESSAGE];
  memset(out, 'r', size);
  uint64_t *samples = malloc(sizeof(uint64_t) * (size_t)count);
  if (!samples) return 2;
  long n = 0, lost = 0;
  const char *first_error = "";
  uint64_t start = now_ns(), timed_from = start + (uint64_t)(warmup * 1e9), end = timed_from + (uint64_t)(seconds * 1e9);
  for (;;) {
    uint64_t t0 = now_ns();
    if (t0 >= end || n >= count) break;
    if (write(fd, out, size) != (ssize_t)size) {
      first_error = "write failed";
      break;
    }
    int ok;
    if (udp) {
      ssize_t r = recv(fd, in, sizeof in, 0);
      ok = r == (ssize_t)size;
      if (!ok && r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        first_error = "recv failed";
        break;
      }
    } else {
      ok = read_full(fd, in, size) == 0;
      if (!ok) {
        first_error = "connection lost";
        break;
      }
    }
    uint64_t t1 = now_ns();
    if (t0 < timed_from) continue;
    if (ok) samples[n++] = t1 - t0;
    else lost++;
  }
  uint64_t stop = now_ns();
  double elapsed = stop > timed_from ? (double)(stop - timed_from) / 1e9 : 0;
  if (n == 0) {
    printf("{\"n\":0,\"lost\":%ld,\"seconds\":%.3f,\"first_error\":\"%s\"}\n", lost, elapsed, *first_error ? first_error : "no answer");
    return 1;
  }
  qsort(samples, (size_t)n, sizeof *samples, cmp_u64);
  double sum = 0;
  for (long i = 0; i < n; i++) sum += (double)samples[i];
  // Nearest rank, as stats.ts's percentileSorted: the ceil(p * n)-th smallest.
  long i50 = rank(n, 50), i99 = rank(n, 99);
  printf("{\"n\":%ld,\"lost\":%ld,\"seconds\":%.3f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"mean_us\":%.2f,\"max_us\":%.2f,\"first_error\":\"%s\"}\n",
         n, lost, elapsed, samples[i50] / 1e3, samples[i99] / 1e3, sum / n / 1e3, samples[n - 1] / 1e3, first_error);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]));
  if (argc >= 4 && strcmp(argv[1], "client") == 0) {
    int udp = 0;
    size_t size = 64;
    double seconds = 3, warmup = 0.5;
    long count = 1000000;
    for (int i = 4; i < argc; i++) {
      if (strcmp(argv[i], "--udp") == 0) udp = 1;
      else if (i + 1 < argc && strcmp(argv[i], "--size") == 0) size = (size_t)atol(argv[++i]);
      else if (i + 1 < argc && strcmp(argv[i], "--seconds") == 0) seconds = atof(argv[++i]);
      else if (i + 1 < argc && strcmp(argv[i], "--warmup-seconds") == 0) warmup = atof(argv[++i]);
      else if (i + 1 < argc && strcmp(argv[i], "--count") == 0) count = atol(argv[++i]);
      else {
        fprintf(stderr, "rr client: unknown argument %s\n", argv[i]);
        return 2;
      }
    }
    if (size < 1 || size > MAX_MESSAGE || seconds <= 0 || count < 1) {
      fprintf(stderr, "rr client: --size 1..%d, --seconds > 0, --count >= 1\n", MAX_MESSAGE);
      return 2;
    }
    return client(argv[2], atoi(argv[3]), udp, size, seconds, warmup, count);
  }
  fprintf(stderr, "usage: rr serve PORT | rr client HOST PORT [--udp] [--size B] [--seconds S] [--warmup-seconds W] [--count N]\n");
  return 2;
}
