// A UDP echo server and client for the test image (busybox has no UDP nc). Static, IPv4 and IPv6.
//   udpecho serve PORT [ADDR]     echoes every datagram back to its sender, forever (on ADDR only
//                                 if given: then replies leave from the address that was asked)
//   udpecho send ADDR PORT [MS]   sends a datagram (again every 500 ms), exits 0 if the echo comes
//                                 back within MS (default 2000), 1 if not
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int serve(const char *port, const char *host) {
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(port)), .sin6_addr = in6addr_any};
  struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
  int v4 = host && inet_pton(AF_INET, host, &a4.sin_addr) == 1;
  if (host && !v4 && inet_pton(AF_INET6, host, &a6.sin6_addr) != 1) {
    fprintf(stderr, "udpecho serve: %s is not a numeric address\n", host);
    return 2;
  }
  int fd = socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM, 0);
  int off = 0;
  if (!v4) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  int bound = v4 ? bind(fd, (struct sockaddr *)&a4, sizeof a4) : bind(fd, (struct sockaddr *)&a6, sizeof a6);
  if (fd < 0 || bound < 0) {
    perror("udpecho serve");
    return 2;
  }
  for (;;) {
    char buf[2048];
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
    if (n >= 0) sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len);
  }
}

static int send_one(const char *host, const char *port, int timeout_ms) {
  // inet_pton, not getaddrinfo: a static binary must not need glibc's NSS modules at run time.
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(port))};
  struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
  struct sockaddr *addr;
  socklen_t addrlen;
  if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) {
    addr = (struct sockaddr *)&a6;
    addrlen = sizeof a6;
  } else if (inet_pton(AF_INET, host, &a4.sin_addr) == 1) {
    addr = (struct sockaddr *)&a4;
    addrlen = sizeof a4;
  } else {
    fprintf(stderr, "udpecho send: %s is not a numeric address\n", host);
    return 2;
  }
  int fd = socket(addr->sa_family, SOCK_DGRAM, 0);
  const char msg[] = "membrane-udp-echo";
  if (fd < 0 || sendto(fd, msg, sizeof msg, 0, addr, addrlen) < 0) {
    perror("udpecho send");
    return 1;
  }
  // Like a DNS client: the datagram is sent again every 500 ms until the echo comes or time is
  // up, so a first packet lost to neighbour resolution does not read as "unreachable".
  struct pollfd p = {.fd = fd, .events = POLLIN};
  for (int waited = 0;; waited += 500) {
    int wait = timeout_ms - waited < 500 ? timeout_ms - waited : 500;
    if (wait <= 0) return 1;
    if (poll(&p, 1, wait) == 1) break;
    sendto(fd, msg, sizeof msg, 0, addr, addrlen);
  }
  char buf[64];
  ssize_t n = recv(fd, buf, sizeof buf, 0);
  if (n != (ssize_t)sizeof msg || memcmp(buf, msg, sizeof msg) != 0) return 1;
  puts("echo");
  return 0;
}

int main(int argc, char **argv) {
  if ((argc == 3 || argc == 4) && strcmp(argv[1], "serve") == 0) return serve(argv[2], argc == 4 ? argv[3] : NULL);
  if ((argc == 4 || argc == 5) && strcmp(argv[1], "send") == 0) return send_one(argv[2], argv[3], argc == 5 ? atoi(argv[4]) : 2000);
  fprintf(stderr, "usage: udpecho serve PORT [ADDR] | udpecho send ADDR PORT [TIMEOUT_MS]\n");
  return 2;
}
