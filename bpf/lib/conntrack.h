/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection tracking in mb_conntrack: one entry per flow, keyed by its original direction.
 * A packet either matches its own tuple (original direction), the reversed tuple (a reply), or
 * creates a new entry. TCP state follows the flags seen; the daemon garbage-collects entries
 * whose expiry has passed (LRU eviction handles a full table).
 */
#ifndef MEMBRANE_CONNTRACK_H
#define MEMBRANE_CONNTRACK_H

#include "packet.h"

#define NSEC_PER_SEC 1000000000ULL
#define CT_TIMEOUT_TCP_NEW (60 * NSEC_PER_SEC)
#define CT_TIMEOUT_TCP_ESTABLISHED (21600 * NSEC_PER_SEC)
#define CT_TIMEOUT_TCP_CLOSING (10 * NSEC_PER_SEC)
#define CT_TIMEOUT_OTHER (60 * NSEC_PER_SEC)

/*
 * Time. Every packet reads the coarse clock (ct_now: CLOCK_MONOTONIC as of the last timer tick,
 * at most one tick behind bpf_ktime_get_ns, and without its TSC read): liveness and expiry are
 * decided in seconds. An entry is stamped with the exact clock when it is created (created_ns,
 * and its first expiry), so the daemon can place it on its own clock (plugin/clock.ts).
 *
 * A known flow's expiry is written back only when it moves forward by more than CT_REFRESH_NS,
 * or when the flow's state changes (a change may shorten it: FIN, RST): a flow busy with packets
 * writes its expiry about once a second instead of on every packet, and its cache line stays
 * clean for the other direction's CPU. An entry thus expires between timeout - CT_REFRESH_NS and
 * timeout after its last packet (plus a timer tick), instead of exactly at timeout.
 */
#define CT_REFRESH_NS NSEC_PER_SEC

ALWAYS_INLINE __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Moves a known entry to `state` with its expiry at `expires` (now plus the state's timeout; see CT_REFRESH_NS). */
ALWAYS_INLINE void ct_refresh(struct ct_entry *e, __u8 state, __u64 expires)
{
	if (state != e->state) {
		e->state = state;
		e->expires_ns = expires;
	} else if (expires > e->expires_ns && expires - e->expires_ns > CT_REFRESH_NS) {
		e->expires_ns = expires;
	}
}

/* ORs a packet's TCP flags into an entry's, writing only when a flag is new. */
ALWAYS_INLINE void ct_or_flags(__u8 *flags, __u8 seen)
{
	if ((*flags | seen) != *flags)
		*flags |= seen;
}

enum ct_result {
	CT_RESULT_NEW = 0,
	CT_RESULT_ESTABLISHED = 1, /* original direction of a known flow */
	CT_RESULT_REPLY = 2,       /* reply direction of a known flow */
	CT_RESULT_UNTRACKED = 3,   /* ICMP errors and other packets that belong to no flow of their own */
};

ALWAYS_INLINE bool ct_trackable(const struct pkt *p)
{
	if (p->proto == IPPROTO_ICMP)
		return p->l4_valid && (p->icmp_type == 8 || p->icmp_type == 0); /* echo request/reply */
	if (p->proto == IPPROTO_ICMPV6)
		return p->l4_valid && (p->icmp_type == 128 || p->icmp_type == 129);
	return true;
}

ALWAYS_INLINE __u64 ct_timeout(const struct pkt *p, __u8 state)
{
	if (p->proto != IPPROTO_TCP)
		return CT_TIMEOUT_OTHER;
	if (state == CT_CLOSING)
		return CT_TIMEOUT_TCP_CLOSING;
	return state == CT_ESTABLISHED ? CT_TIMEOUT_TCP_ESTABLISHED : CT_TIMEOUT_TCP_NEW;
}

ALWAYS_INLINE __u8 ct_next_state(const struct pkt *p, __u8 state, bool reply)
{
	if (p->proto != IPPROTO_TCP)
		return reply ? CT_ESTABLISHED : state;
	if (p->tcp_flags & (TCP_FIN | TCP_RST))
		return CT_CLOSING;
	if (state == CT_NEW && reply && (p->tcp_flags & TCP_ACK))
		return CT_ESTABLISHED;
	return state;
}

ALWAYS_INLINE void ct_fill_key(const struct pkt *p, struct ct_key *key, bool reverse)
{
	key->family = p->family;
	key->proto = p->proto;
	if (reverse) {
		key->saddr = p->daddr;
		key->daddr = p->saddr;
		key->sport = p->dport;
		key->dport = p->sport;
	} else {
		key->saddr = p->saddr;
		key->daddr = p->daddr;
		key->sport = p->sport;
		key->dport = p->dport;
	}
}

/*
 * The entry for `key` if it is live. An expired entry is no entry: its flow is over (the daemon
 * has not collected it yet), and a new flow that reuses the tuple, or whose reverse it is, must
 * not be counted against it.
 */
ALWAYS_INLINE struct ct_entry *ct_lookup_live(const struct ct_key *key, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&mb_conntrack, key);
	return e && e->expires_ns >= now ? e : 0;
}

/* Counts a packet of a known flow in its direction and moves the flow's state and expiry on. */
ALWAYS_INLINE void ct_account(struct ct_entry *e, const struct pkt *p, __u32 len, bool reply, __u64 now)
{
	if (reply) {
		__sync_fetch_and_add(&e->packets_reply, 1);
		__sync_fetch_and_add(&e->bytes_reply, len);
		ct_or_flags(&e->tcp_flags_reply, p->tcp_flags);
	} else {
		__sync_fetch_and_add(&e->packets_orig, 1);
		__sync_fetch_and_add(&e->bytes_orig, len);
		ct_or_flags(&e->tcp_flags_orig, p->tcp_flags);
	}
	__u8 state = ct_next_state(p, e->state, reply);
	ct_refresh(e, state, now + ct_timeout(p, state));
}

/*
 * Finds the flow of a packet: its own tuple (CT_RESULT_ESTABLISHED) or the reversed one
 * (CT_RESULT_REPLY), with *entry set; CT_RESULT_NEW when there is none (nothing is created yet:
 * policy decides first, see ct_create); CT_RESULT_UNTRACKED for packets that belong to no flow.
 */
ALWAYS_INLINE int ct_lookup(const struct pkt *p, __u64 now, struct ct_entry **entry)
{
	*entry = 0;
	if (!ct_trackable(p))
		return CT_RESULT_UNTRACKED;
	struct ct_key key = {};
	ct_fill_key(p, &key, false);
	struct ct_entry *e = ct_lookup_live(&key, now);
	if (e) {
		*entry = e;
		return CT_RESULT_ESTABLISHED;
	}
	ct_fill_key(p, &key, true);
	e = ct_lookup_live(&key, now);
	if (e) {
		*entry = e;
		return CT_RESULT_REPLY;
	}
	return CT_RESULT_NEW;
}

/* ICMP errors (unreachable, packet too big, time exceeded, parameter problem) quote a packet. */
ALWAYS_INLINE bool icmp_is_error(const struct pkt *p)
{
	if (!p->l4_valid)
		return false;
	if (p->proto == IPPROTO_ICMP)
		return p->icmp_type == 3 || p->icmp_type == 11 || p->icmp_type == 12;
	if (p->proto == IPPROTO_ICMPV6)
		return p->icmp_type >= 1 && p->icmp_type <= 4;
	return false;
}

/*
 * An ICMP error is related traffic when the packet it quotes belongs to a live flow (either
 * direction): it then passes without a policy verdict of its own, as the flow's replies do, so
 * path MTU discovery works under default deny. Reads the quoted IP header and its first 8 L4 bytes.
 */
ALWAYS_INLINE bool ct_related(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	/* Ethernet + outer L3 (bounded for the verifier: at most 60 for IPv4, 40 for IPv6) + ICMP's 8. */
	__u32 offset = sizeof(struct ethhdr) + (p->l4_offset & 0x3f) + 8;
	struct pkt inner = {};
	if (p->family == FAMILY_IPV4) {
		struct iphdr *ip = data + offset;
		if ((void *)(ip + 1) > data_end || ip->ihl != 5)
			return false;
		inner.family = FAMILY_IPV4;
		inner.saddr.ip4 = ip->saddr;
		inner.daddr.ip4 = ip->daddr;
		inner.proto = ip->protocol;
		parse_l4(ip + 1, data_end, &inner);
	} else {
		struct ipv6hdr *ip6 = data + offset;
		if ((void *)(ip6 + 1) > data_end)
			return false;
		inner.family = FAMILY_IPV6;
		__builtin_memcpy(inner.saddr.ip6, &ip6->saddr, 16);
		__builtin_memcpy(inner.daddr.ip6, &ip6->daddr, 16);
		inner.proto = ip6->nexthdr;
		parse_l4(ip6 + 1, data_end, &inner);
	}
	/* Errors quote only 8 bytes of L4: TCP flags may be missing, ports are there. */
	if (inner.proto == IPPROTO_TCP || inner.proto == IPPROTO_UDP) {
		if (!inner.sport && !inner.dport) {
			__be16 *ports = (void *)data + offset + (inner.family == FAMILY_IPV4 ? 20 : 40);
			if ((void *)(ports + 2) > data_end)
				return false;
			inner.sport = ports[0];
			inner.dport = ports[1];
		}
	} else if (!inner.l4_valid) {
		return false;
	}
	struct ct_key key = {};
	ct_fill_key(&inner, &key, false);
	if (ct_lookup_live(&key, now))
		return true;
	ct_fill_key(&inner, &key, true);
	return ct_lookup_live(&key, now) != 0;
}

/*
 * Starts tracking a new flow (policy allowed it at `policy_epoch`). A flow to a service carries
 * its frontend and backend, so that its replies are rewritten to come from the VIP. Stamped with
 * the exact clock (see ct_now).
 */
ALWAYS_INLINE void ct_create(const struct pkt *p, __u32 len, __u32 endpoint_id, __u32 policy_epoch,
			     __u32 frontend_id, __u32 backend_id, __u8 lb_flags)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_entry fresh = {
		.frontend_id = frontend_id,
		.backend_id = backend_id,
		.lb_flags = lb_flags,
		.created_ns = now,
		.packets_orig = 1,
		.bytes_orig = len,
		.endpoint_id = endpoint_id,
		.tcp_flags_orig = p->tcp_flags,
		/* TCP picked up mid-stream (no SYN), e.g. after the table was lost: already established. */
		.state = (p->proto == IPPROTO_TCP && !(p->tcp_flags & TCP_SYN)) ? CT_ESTABLISHED : CT_NEW,
		.policy_epoch = policy_epoch,
	};
	fresh.expires_ns = now + ct_timeout(p, fresh.state);
	struct ct_key key = {};
	ct_fill_key(p, &key, false);
	/* BPF_ANY: replaces an expired entry for the same tuple. Two CPUs racing here both write a fresh entry. */
	bpf_map_update_elem(&mb_conntrack, &key, &fresh, BPF_ANY);
}

#endif
