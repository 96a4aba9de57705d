/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The service load balancer at the socket layer: cgroup-v2 programs at the root of the hierarchy
 * run for every process, the host's and every container's. connect() to a VIP (TCP, connected UDP)
 * and sendmsg() to one (unconnected UDP) get a backend's address instead, once, so the packets
 * of the flow are never translated; recvmsg() and getpeername() show the VIP again, so the
 * application sees the peer it asked for. A VIP without a ready backend is left alone: the packet
 * path answers it (lb.h). The socket iterators at the end close sockets connected to a backend
 * that was removed.
 */
#ifndef MEMBRANE_SOCK_LB_H
#define MEMBRANE_SOCK_LB_H

#include "lb.h"

/* cgroup sock_addr verdicts. */
#define SOCK_PROCEED 1

ALWAYS_INLINE bool sock_lb_enabled(void)
{
	const struct lb_config *cfg = lb_config_get();
	return cfg && (cfg->flags & LB_CONFIG_F_SOCKET);
}

/*
 * Which table slot a socket gets: TCP connections spread at random, a UDP socket keeps to one
 * backend (its cookie decides), so every datagram of an unconnected client goes the same way.
 */
ALWAYS_INLINE __u32 sock_lb_hash(struct bpf_sock_addr *ctx, __u64 cookie)
{
	if (ctx->protocol == IPPROTO_TCP)
		return bpf_get_prandom_u32();
	return (__u32)(cookie ^ (cookie >> 32)) * 2654435761U; /* Knuth's multiplicative mix */
}

/* Reports a socket-level translation (config: serviceEvents). */
ALWAYS_INLINE void sock_lb_event(const struct lb_frontend_key *fk, const struct lb_backend *be, __u32 frontend_id, __u32 backend_id)
{
	const struct lb_config *cfg = lb_config_get();
	if (!cfg || !(cfg->flags & LB_CONFIG_F_EVENTS))
		return;
	struct event *e = bpf_ringbuf_reserve(&mb_events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->type = EVENT_SERVICE;
	e->direction = DIR_FROM_CONTAINER;
	e->family = fk->family;
	e->proto = fk->proto;
	e->daddr = be->addr;
	e->dport = be->port;
	e->saddr = fk->vip; /* no source yet at connect(): the VIP it was translated from */
	e->sport = fk->port;
	e->ts_ns = bpf_ktime_get_ns();
	e->frontend_id = frontend_id;
	e->backend_id = backend_id;
	bpf_ringbuf_submit(e, 0);
}

/*
 * The backend for a socket sending to `fk` (a VIP), remembered for recvmsg()/getpeername() under
 * the socket's cookie; 0 when `fk` is not a VIP or has no ready backend.
 */
ALWAYS_INLINE const struct lb_backend *sock_lb_pick(struct bpf_sock_addr *ctx, const struct lb_frontend_key *fk, __u8 backend_family)
{
	const struct lb_frontend *fe = bpf_map_lookup_elem(&mb_lb_frontends, fk);
	if (!fe || !fe->backend_count)
		return 0;
	__u32 frontend_id = fe->frontend_id;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 backend_id = lb_pick(fe, sock_lb_hash(ctx, cookie));
	const struct lb_backend *be = backend_id ? bpf_map_lookup_elem(&mb_lb_backends, &backend_id) : 0;
	if (!be || be->family != backend_family)
		return 0;
	struct lb_sock_key key = { .cookie = cookie, .addr = be->addr, .port = be->port, .family = be->family };
	struct lb_sock_value value = { .vip = fk->vip, .port = fk->port, .family = fk->family, .frontend_id = frontend_id };
	bpf_map_update_elem(&mb_lb_sock, &key, &value, BPF_ANY);
	sock_lb_event(fk, be, frontend_id, backend_id);
	return be;
}

/* connect4 / sendmsg4: a VIP becomes a backend. */
ALWAYS_INLINE int sock_lb_translate4(struct bpf_sock_addr *ctx)
{
	if (!sock_lb_enabled() || (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP))
		return SOCK_PROCEED;
	struct lb_frontend_key fk = { .port = (__be16)ctx->user_port, .proto = ctx->protocol, .family = FAMILY_IPV4 };
	fk.vip.ip4 = ctx->user_ip4;
	const struct lb_backend *be = sock_lb_pick(ctx, &fk, FAMILY_IPV4);
	if (be) {
		ctx->user_ip4 = be->addr.ip4;
		ctx->user_port = (__u32)be->port;
	}
	return SOCK_PROCEED;
}

/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d), as dual-stack sockets use for IPv4 peers. */
ALWAYS_INLINE bool ip6_is_v4mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);
}

/* connect6 / sendmsg6, IPv4-mapped destinations (an IPv4 VIP) included. */
ALWAYS_INLINE int sock_lb_translate6(struct bpf_sock_addr *ctx)
{
	if (!sock_lb_enabled() || (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP))
		return SOCK_PROCEED;
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	struct lb_frontend_key fk = { .port = (__be16)ctx->user_port, .proto = ctx->protocol };
	bool mapped = ip6_is_v4mapped(w0, w1, w2);
	if (mapped) {
		fk.family = FAMILY_IPV4;
		fk.vip.ip4 = w3;
	} else {
		fk.family = FAMILY_IPV6;
		__u32 *v = (__u32 *)fk.vip.ip6;
		v[0] = w0;
		v[1] = w1;
		v[2] = w2;
		v[3] = w3;
	}
	const struct lb_backend *be = sock_lb_pick(ctx, &fk, fk.family);
	if (!be)
		return SOCK_PROCEED;
	if (mapped) {
		ctx->user_ip6[3] = be->addr.ip4;
	} else {
		const __u32 *b = (const __u32 *)be->addr.ip6;
		ctx->user_ip6[0] = b[0];
		ctx->user_ip6[1] = b[1];
		ctx->user_ip6[2] = b[2];
		ctx->user_ip6[3] = b[3];
	}
	ctx->user_port = (__u32)be->port;
	return SOCK_PROCEED;
}

/* recvmsg4 / getpeername4: a backend's address becomes the VIP the socket sent to. */
ALWAYS_INLINE int sock_lb_reverse4(struct bpf_sock_addr *ctx)
{
	struct lb_sock_key key = { .cookie = bpf_get_socket_cookie(ctx), .port = (__be16)ctx->user_port, .family = FAMILY_IPV4 };
	key.addr.ip4 = ctx->user_ip4;
	const struct lb_sock_value *v = bpf_map_lookup_elem(&mb_lb_sock, &key);
	if (v && v->family == FAMILY_IPV4) {
		ctx->user_ip4 = v->vip.ip4;
		ctx->user_port = (__u32)v->port;
	}
	return SOCK_PROCEED;
}

ALWAYS_INLINE int sock_lb_reverse6(struct bpf_sock_addr *ctx)
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	struct lb_sock_key key = { .cookie = bpf_get_socket_cookie(ctx), .port = (__be16)ctx->user_port };
	bool mapped = ip6_is_v4mapped(w0, w1, w2);
	if (mapped) {
		key.family = FAMILY_IPV4;
		key.addr.ip4 = w3;
	} else {
		key.family = FAMILY_IPV6;
		__u32 *a = (__u32 *)key.addr.ip6;
		a[0] = w0;
		a[1] = w1;
		a[2] = w2;
		a[3] = w3;
	}
	const struct lb_sock_value *v = bpf_map_lookup_elem(&mb_lb_sock, &key);
	if (!v || v->family != key.family)
		return SOCK_PROCEED;
	if (mapped) {
		ctx->user_ip6[3] = v->vip.ip4;
	} else {
		const __u32 *vip = (const __u32 *)v->vip.ip6;
		ctx->user_ip6[0] = vip[0];
		ctx->user_ip6[1] = vip[1];
		ctx->user_ip6[2] = vip[2];
		ctx->user_ip6[3] = vip[3];
	}
	ctx->user_port = (__u32)v->port;
	return SOCK_PROCEED;
}

/*
 * ---- Closing sockets of removed backends ----
 * The kernel's socket types, with only the fields read here: libbpf relocates each access against
 * the running kernel's BTF by name (CO-RE), so the real layout never has to be copied here.
 */
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct inet_sock {
	struct sock sk;
} __attribute__((preserve_access_index));

struct udp_sock {
	struct inet_sock inet;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

/* Linux 6.5+. Weak: on an older kernel the programs below are simply not loaded (a probe decides). */
extern int bpf_sock_destroy(struct sock_common *sk) __ksym __weak;

/* A backend whose connected sockets must go: written by the daemon just before an iterator run. */
struct lb_doomed_key {
	union addr addr;
	__be16 port;
	__u8 proto;
	__u8 family;
}; /* 20 bytes */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct lb_doomed_key);
	__type(value, __u8);
} mb_lb_doomed SEC(".maps");

#define AF_INET 2
#define AF_INET6 10
/* Socket states (include/net/tcp_states.h) the iterators meet. */
#define TCP_ESTABLISHED_STATE 1
#define TCP_TIME_WAIT_STATE 6
#define TCP_CLOSE_STATE 7
#define TCP_LISTEN_STATE 10
#define TCP_NEW_SYN_RECV_STATE 12

/* Destroys the socket when its peer is a doomed backend; reports it in the iterator's output. */
ALWAYS_INLINE void sock_lb_destroy_if_doomed(struct bpf_iter_meta *meta, struct sock_common *sk, __u8 proto)
{
	struct lb_doomed_key key = { .port = sk->skc_dport, .proto = proto };
	unsigned short family = sk->skc_family;
	if (family == AF_INET) {
		key.family = FAMILY_IPV4;
		key.addr.ip4 = sk->skc_daddr;
	} else if (family == AF_INET6) {
		__u32 w[4];
		bpf_probe_read_kernel(w, sizeof(w), &sk->skc_v6_daddr);
		if (ip6_is_v4mapped(w[0], w[1], w[2])) {
			key.family = FAMILY_IPV4;
			key.addr.ip4 = w[3];
		} else {
			key.family = FAMILY_IPV6;
			__builtin_memcpy(key.addr.ip6, w, 16);
		}
	} else {
		return;
	}
	if (!bpf_map_lookup_elem(&mb_lb_doomed, &key))
		return;
	if (bpf_sock_destroy(sk) == 0)
		bpf_seq_write(meta->seq, &key, sizeof(key));
}

#endif
