/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The service load balancer, per packet, in from_container: what the socket-level balancer
 * (sock_lb.h) cannot cover, or everything when it is off.
 *
 *   original direction  A packet to a VIP gets a backend: the one its service entry in
 *                       mb_conntrack remembers, or a new pick from the frontend's Maglev table.
 *                       Its destination is rewritten to the backend; conntrack, policy (on the
 *                       backend's identity) and delivery then see the translated flow, whose
 *                       entry keeps the frontend and backend ids.
 *   replies             A reply of a translated flow is rewritten to come from the VIP before it
 *                       is delivered to the client.
 *   hairpin             A client picked as its own backend would receive a packet from its own
 *                       address, which its stack drops as a martian: its source becomes the VIP.
 *   no backend          A new TCP flow is answered with a reset, a UDP datagram with ICMP port
 *                       unreachable, both from the VIP and counted as DROP_NO_SERVICE_BACKEND.
 *                       A TCP flow whose backend was removed is reset, so the client reconnects.
 */
#ifndef MEMBRANE_LB_H
#define MEMBRANE_LB_H

#include "lb_maps.h"
#include "conntrack.h"
#include "events.h"

/* What translation did to a packet, or what a reply needs undone. */
struct lb_result {
	__u32 frontend_id;
	__u32 backend_id;
	__u8 lb_flags; /* CT_LB_F_* */
	__u8 new_flow; /* the backend was picked for this packet (not recalled) */
	__u8 refuse;   /* the packet must be refused with this reason (DROP_NO_SERVICE_BACKEND, ...) */
	__u8 pad;
};

ALWAYS_INLINE const struct lb_config *lb_config_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&mb_lb_config, &zero);
}

ALWAYS_INLINE bool addr_equal(const union addr *a, const union addr *b, __u8 family)
{
	if (family == FAMILY_IPV4)
		return a->ip4 == b->ip4;
	return ip6_equal(a->ip6, b->ip6);
}

/* Whether the destination may be a VIP: inside the VIP range (lb_config); without a range (mask 0), any address. */
ALWAYS_INLINE bool lb_in_vip_range(const struct lb_config *cfg, const struct pkt *p)
{
	if (p->family == FAMILY_IPV4)
		return (p->daddr.ip4 & cfg->vip4_mask) == cfg->vip4_net;
	const __be32 *a = (const __be32 *)p->daddr.ip6;
	return (a[0] & cfg->vip6_mask[0]) == cfg->vip6_net[0] && (a[1] & cfg->vip6_mask[1]) == cfg->vip6_net[1] &&
	       (a[2] & cfg->vip6_mask[2]) == cfg->vip6_net[2] && (a[3] & cfg->vip6_mask[3]) == cfg->vip6_net[3];
}

/* The backend id in the slot `hash` falls on in the frontend's Maglev table; 0 when there is none. */
ALWAYS_INLINE __u32 lb_pick(const struct lb_frontend *fe, __u32 hash)
{
	__u32 size = fe->table_size;
	if (!size)
		return 0;
	__u32 slot = hash % size;
	struct lb_maglev_key key = {
		.frontend_id = fe->frontend_id,
		.generation = fe->table_generation,
		.group = slot / LB_MAGLEV_GROUP_SLOTS,
	};
	const struct lb_maglev_group *group = bpf_map_lookup_elem(&mb_lb_maglev, &key);
	return group ? group->slots[slot % LB_MAGLEV_GROUP_SLOTS] : 0;
}

ALWAYS_INLINE __u32 l4_start(const struct pkt *p)
{
	return sizeof(struct ethhdr) + (p->l4_offset & 0x3f);
}

ALWAYS_INLINE __u32 l4_csum_offset(const struct pkt *p)
{
	return l4_start(p) + (p->proto == IPPROTO_TCP ? __builtin_offsetof(struct tcphdr, check)
						      : __builtin_offsetof(struct udphdr, check));
}

/*
 * Rewrites the packet's source (`source`) or destination address and port, with the IPv4 header
 * checksum and the L4 checksum (its pseudo-header part included) kept right. A UDP checksum of
 * zero (IPv4: none) stays zero. Updates `p` to match.
 */
ALWAYS_INLINE int lb_rewrite(struct __sk_buff *skb, struct pkt *p, bool source, const union addr *addr, __be16 port)
{
	__u64 mangled0 = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 csum = l4_csum_offset(p);
	if (p->family == FAMILY_IPV4) {
		__u32 at = sizeof(struct ethhdr) + (source ? __builtin_offsetof(struct iphdr, saddr) : __builtin_offsetof(struct iphdr, daddr));
		__be32 old = source ? p->saddr.ip4 : p->daddr.ip4;
		__be32 new = addr->ip4;
		if (bpf_l4_csum_replace(skb, csum, old, new, BPF_F_PSEUDO_HDR | mangled0 | sizeof(new)))
			return -1;
		if (bpf_l3_csum_replace(skb, sizeof(struct ethhdr) + __builtin_offsetof(struct iphdr, check), old, new, sizeof(new)))
			return -1;
		if (bpf_skb_store_bytes(skb, at, &new, sizeof(new), 0))
			return -1;
		if (source)
			p->saddr.ip4 = new;
		else
			p->daddr.ip4 = new;
	} else {
		__u32 at = sizeof(struct ethhdr) + (source ? __builtin_offsetof(struct ipv6hdr, saddr) : __builtin_offsetof(struct ipv6hdr, daddr));
		union addr old = source ? p->saddr : p->daddr;
		union addr new = *addr;
		__s64 diff = bpf_csum_diff((__be32 *)old.ip6, 16, (__be32 *)new.ip6, 16, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, csum, 0, diff, BPF_F_PSEUDO_HDR | mangled0))
			return -1;
		if (bpf_skb_store_bytes(skb, at, new.ip6, 16, 0))
			return -1;
		if (source)
			p->saddr = new;
		else
			p->daddr = new;
	}
	__be16 old_port = source ? p->sport : p->dport;
	if (old_port != port) {
		if (bpf_l4_csum_replace(skb, csum, old_port, port, mangled0 | sizeof(port)))
			return -1;
		if (bpf_skb_store_bytes(skb, l4_start(p) + (source ? 0 : 2), &port, sizeof(port), 0))
			return -1;
		if (source)
			p->sport = port;
		else
			p->dport = port;
	}
	return 0;
}

/*
 * Room to build a refusal in: a per-CPU map value, because the programs' main path leaves too
 * little of the 512-byte stack for it (a tc program run is never preempted on its CPU).
 */
struct lb_scratch {
	struct ethhdr eth;
	__u8 pad[2];
	union {
		struct iphdr ip;
		struct ipv6hdr ip6;
	};
	__be32 pseudo[10]; /* IPv4 or IPv6 pseudo-header */
	struct tcphdr in;  /* the refused segment's header */
	struct tcphdr out; /* the reset */
	struct {
		__u8 type, code;
		__sum16 check;
		__be32 unused;
		__u8 quote[sizeof(struct ipv6hdr) + 8]; /* the refused datagram's IP header and 8 bytes of UDP */
	} icmp;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_scratch);
} mb_lb_scratch SEC(".maps");

/* The pseudo-header sum of an L4 segment of `len` bytes from `saddr` to `daddr`, built in s->pseudo. */
ALWAYS_INLINE __s64 pseudo_header_sum(struct lb_scratch *s, __u8 family, const union addr *saddr, const union addr *daddr,
				      __u8 proto, __u32 len)
{
	if (family == FAMILY_IPV4) {
		s->pseudo[0] = saddr->ip4;
		s->pseudo[1] = daddr->ip4;
		s->pseudo[2] = bpf_htonl((proto << 16) | len);
		return bpf_csum_diff(0, 0, s->pseudo, 12, 0);
	}
	__builtin_memcpy(s->pseudo, saddr->ip6, 16);
	__builtin_memcpy(s->pseudo + 4, daddr->ip6, 16);
	s->pseudo[8] = bpf_htonl(len);
	s->pseudo[9] = bpf_htonl(proto);
	return bpf_csum_diff(0, 0, s->pseudo, 40, 0);
}

/*
 * Writes an Ethernet header from the host side to the container and a fresh IP header (no
 * options, hop limit 64) for a reply of `payload` bytes from `saddr` to `daddr` at the start of
 * the packet, which must already have its final length.
 */
ALWAYS_INLINE int write_reply_headers(struct __sk_buff *skb, struct lb_scratch *s, __u8 family, const struct endpoint_info *ep,
				      const union addr *saddr, const union addr *daddr, __u8 proto, __u32 payload)
{
	__builtin_memcpy(s->eth.h_dest, ep->mac, 6);
	__builtin_memcpy(s->eth.h_source, ep->host_mac, 6);
	s->eth.h_proto = family == FAMILY_IPV4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	if (bpf_skb_store_bytes(skb, 0, &s->eth, sizeof(s->eth), 0))
		return -1;
	if (family == FAMILY_IPV4) {
		__builtin_memset(&s->ip, 0, sizeof(s->ip));
		s->ip.version = 4;
		s->ip.ihl = 5;
		s->ip.tot_len = bpf_htons(sizeof(struct iphdr) + payload);
		s->ip.frag_off = bpf_htons(0x4000); /* DF */
		s->ip.ttl = 64;
		s->ip.protocol = proto;
		s->ip.saddr = saddr->ip4;
		s->ip.daddr = daddr->ip4;
		s->ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&s->ip, sizeof(s->ip), 0));
		return bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &s->ip, sizeof(s->ip), 0) ? -1 : 0;
	}
	__builtin_memset(&s->ip6, 0, sizeof(s->ip6));
	s->ip6.version = 6;
	s->ip6.payload_len = bpf_htons(payload);
	s->ip6.nexthdr = proto;
	s->ip6.hop_limit = 64;
	__builtin_memcpy(&s->ip6.saddr, saddr->ip6, 16);
	__builtin_memcpy(&s->ip6.daddr, daddr->ip6, 16);
	return bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &s->ip6, sizeof(s->ip6), 0) ? -1 : 0;
}

/*
 * Turns a TCP segment to a VIP into the reset the VIP answers it with (RFC 793: an ACK gets
 * seq = its ack; anything else an RST|ACK acknowledging it), and sends it back into the client.
 */
ALWAYS_INLINE int lb_send_reset(struct __sk_buff *skb, struct lb_scratch *s, const struct pkt *p, const struct endpoint_info *ep)
{
	__u32 ip_len = p->family == FAMILY_IPV4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	if (p->tcp_flags & TCP_RST || p->l4_offset != ip_len)
		return TC_ACT_SHOT; /* never answer a reset; IPv4 options or IPv6 extension headers: just drop */
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + ip_len, &s->in, sizeof(s->in)))
		return TC_ACT_SHOT;
	__be16 length; /* IPv4 total length, or IPv6 payload length */
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + (p->family == FAMILY_IPV4 ? 2 : 4), &length, 2))
		return TC_ACT_SHOT;
	__u32 segment = bpf_ntohs(length) - (p->family == FAMILY_IPV4 ? ip_len : 0);
	__u32 data_len = segment - s->in.doff * 4;
	__builtin_memset(&s->out, 0, sizeof(s->out));
	s->out.source = s->in.dest;
	s->out.dest = s->in.source;
	s->out.doff = 5;
	s->out.rst = 1;
	if (s->in.ack) {
		s->out.seq = s->in.ack_seq;
	} else {
		s->out.ack = 1;
		s->out.ack_seq = bpf_htonl(bpf_ntohl(s->in.seq) + data_len + s->in.syn + s->in.fin);
	}
	union addr vip = p->daddr, client = p->saddr;
	__s64 sum = pseudo_header_sum(s, p->family, &vip, &client, IPPROTO_TCP, sizeof(s->out));
	s->out.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&s->out, sizeof(s->out), sum));
	if (bpf_skb_change_tail(skb, sizeof(struct ethhdr) + ip_len + sizeof(s->out), 0))
		return TC_ACT_SHOT;
	if (write_reply_headers(skb, s, p->family, ep, &vip, &client, IPPROTO_TCP, sizeof(s->out)) ||
	    bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + ip_len, &s->out, sizeof(s->out), 0))
		return TC_ACT_SHOT;
	return bpf_redirect_peer(skb->ifindex, 0);
}

/* Answers a UDP datagram to a VIP with ICMP (or ICMPv6) port unreachable from the VIP, into the client. */
ALWAYS_INLINE int lb_send_unreachable(struct __sk_buff *skb, struct lb_scratch *s, const struct pkt *p, const struct endpoint_info *ep)
{
	union addr vip = p->daddr, client = p->saddr;
	bool v4 = p->family == FAMILY_IPV4;
	__u32 ip_len = v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	/* RFC 792: the IP header and 8 bytes; RFC 4443 allows more, 8 is what a client matches on. */
	__u32 icmp_len = v4 ? 8 + sizeof(struct iphdr) + 8 : sizeof(s->icmp);
	if (p->l4_offset != ip_len)
		return TC_ACT_SHOT;
	__builtin_memset(&s->icmp, 0, sizeof(s->icmp));
	s->icmp.type = v4 ? 3 : 1; /* destination unreachable */
	s->icmp.code = v4 ? 3 : 4; /* port unreachable */
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), s->icmp.quote, v4 ? sizeof(struct iphdr) + 8 : sizeof(s->icmp.quote)))
		return TC_ACT_SHOT;
	__s64 sum = v4 ? 0 : pseudo_header_sum(s, p->family, &vip, &client, IPPROTO_ICMPV6, sizeof(s->icmp));
	if (v4)
		s->icmp.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&s->icmp, 8 + sizeof(struct iphdr) + 8, 0));
	else
		s->icmp.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&s->icmp, sizeof(s->icmp), sum));
	if (bpf_skb_change_tail(skb, sizeof(struct ethhdr) + ip_len + icmp_len, 0))
		return TC_ACT_SHOT;
	if (write_reply_headers(skb, s, p->family, ep, &vip, &client, v4 ? IPPROTO_ICMP : IPPROTO_ICMPV6, icmp_len))
		return TC_ACT_SHOT;
	if (v4 ? bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + sizeof(struct iphdr), &s->icmp, 8 + sizeof(struct iphdr) + 8, 0)
	       : bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + sizeof(struct ipv6hdr), &s->icmp, sizeof(s->icmp), 0))
		return TC_ACT_SHOT;
	return bpf_redirect_peer(skb->ifindex, 0);
}

/*
 * Refuses a packet to a VIP: counted and reported under `reason`, then answered as TCP or UDP
 * wants. A function of its own (a BPF-to-BPF call): the replies it builds need stack the
 * programs' main path does not have to spare.
 */
static __noinline int lb_refuse(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_info *ep, __u32 reason,
			    __u32 frontend_id)
{
	count(reason, DIR_FROM_CONTAINER, skb->len);
	emit_lb(EVENT_DROP, reason, DIR_FROM_CONTAINER, skb, ep->endpoint_id, p, frontend_id, 0);
	__u32 zero = 0;
	struct lb_scratch *s = bpf_map_lookup_elem(&mb_lb_scratch, &zero);
	if (!s)
		return TC_ACT_SHOT;
	return p->proto == IPPROTO_TCP ? lb_send_reset(skb, s, p, ep) : lb_send_unreachable(skb, s, p, ep);
}

/* Moves a service entry on with a packet of its client (it sees no replies: those belong to the translated flow). */
ALWAYS_INLINE void lb_service_account(struct ct_entry *e, const struct pkt *p, __u32 len, __u64 now)
{
	__sync_fetch_and_add(&e->packets_orig, 1);
	__sync_fetch_and_add(&e->bytes_orig, len);
	ct_or_flags(&e->tcp_flags_orig, p->tcp_flags);
	__u8 state = e->state;
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & (TCP_FIN | TCP_RST))
			state = CT_CLOSING;
		else if (state == CT_NEW && (p->tcp_flags & TCP_ACK) && !(p->tcp_flags & TCP_SYN))
			state = CT_ESTABLISHED; /* the client acknowledged the backend's SYN-ACK */
	} else {
		state = CT_ESTABLISHED;
	}
	ct_refresh(e, state, now + ct_timeout(p, state));
}

/* Whether a packet may be for a VIP (lb_translate's first tests, inlined in its caller). */
ALWAYS_INLINE bool lb_candidate(const struct pkt *p)
{
	if (!p->l4_valid || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return false;
	const struct lb_config *cfg = lb_config_get();
	return !cfg || lb_in_vip_range(cfg, p); /* not a VIP: the common case costs a few comparisons, no hash lookup */
}

/*
 * Translates a packet from a local endpoint to a VIP (see the top of this file). Returns -1 to go
 * on: translated, not for a VIP, or to be refused (out->refuse: the caller calls lb_refuse, so
 * that the two functions' stack frames are never stacked on each other); or a drop verdict. A
 * function of its own for the same reason: the stack.
 */
static __noinline int lb_translate(struct __sk_buff *skb, struct pkt *p, const struct endpoint_info *ep, __u64 now,
				   struct lb_result *out)
{
	if (!lb_candidate(p))
		return -1;
	struct lb_frontend_key fk = { .vip = p->daddr, .port = p->dport, .proto = p->proto, .family = p->family };
	const struct lb_frontend *fe = bpf_map_lookup_elem(&mb_lb_frontends, &fk);
	if (!fe)
		return -1;
	__u32 frontend_id = fe->frontend_id;
	/* Services are per Docker network, like Docker's own names: other networks are isolated. */
	if (fe->network_id != ep->network_id)
		return drop(skb, DROP_CROSS_NETWORK, DIR_FROM_CONTAINER, ep->endpoint_id, p);
	struct ct_key sk = {};
	ct_fill_key(p, &sk, false);
	sk.flags = CT_KEY_F_SERVICE;
	struct ct_entry *se = ct_lookup_live(&sk, now);
	const struct lb_backend *be = 0;
	__u32 backend_id = 0;
	if (se && se->frontend_id == frontend_id) {
		backend_id = se->backend_id;
		be = bpf_map_lookup_elem(&mb_lb_backends, &backend_id);
		/* Its backend is gone (its container died): a TCP flow cannot move, so it is reset. */
		if (!be && p->proto == IPPROTO_TCP && !(p->tcp_flags & TCP_SYN))
			goto refuse_gone;
	} else {
		/* A hairpinned flow's reply travels to the VIP too, from the client's own port: not a new flow. */
		struct ct_key rk = {};
		ct_fill_key(p, &rk, true);
		struct ct_entry *r = ct_lookup_live(&rk, now);
		if (r && (r->lb_flags & CT_LB_F_HAIRPIN))
			return -1;
	}
	if (!be) {
		if (!fe->backend_count)
			goto refuse;
		backend_id = lb_pick(fe, bpf_get_hash_recalc(skb));
		be = backend_id ? bpf_map_lookup_elem(&mb_lb_backends, &backend_id) : 0;
		if (!be || be->family != p->family)
			goto refuse;
		__u64 created = bpf_ktime_get_ns(); /* the exact clock for a new entry (see ct_now) */
		struct ct_entry fresh = {
			.created_ns = created, .packets_orig = 1, .bytes_orig = skb->len, .endpoint_id = ep->endpoint_id,
			.tcp_flags_orig = p->tcp_flags, .state = CT_NEW, .lb_flags = CT_LB_F_TRANSLATED,
			.frontend_id = frontend_id, .backend_id = backend_id,
		};
		fresh.expires_ns = created + ct_timeout(p, CT_NEW);
		bpf_map_update_elem(&mb_conntrack, &sk, &fresh, BPF_ANY);
		out->new_flow = 1;
	} else {
		lb_service_account(se, p, skb->len, now);
	}
	union addr vip = p->daddr;
	union addr backend = be->addr;
	__be16 backend_port = be->port;
	bool hairpin = addr_equal(&backend, &p->saddr, p->family);
	if (lb_rewrite(skb, p, false, &backend, backend_port))
		return drop(skb, DROP_INVALID, DIR_FROM_CONTAINER, ep->endpoint_id, p);
	if (hairpin && lb_rewrite(skb, p, true, &vip, p->sport))
		return drop(skb, DROP_INVALID, DIR_FROM_CONTAINER, ep->endpoint_id, p);
	out->frontend_id = frontend_id;
	out->backend_id = backend_id;
	out->lb_flags = CT_LB_F_TRANSLATED | (hairpin ? CT_LB_F_HAIRPIN : 0);
	return -1;
refuse_gone:
	out->frontend_id = frontend_id;
	out->refuse = DROP_SERVICE_BACKEND_GONE;
	return -1;
refuse:
	out->frontend_id = frontend_id;
	out->refuse = DROP_NO_SERVICE_BACKEND;
	return -1;
}

/*
 * A reply of a translated flow: its source becomes the VIP the client talked to (and for a
 * hairpinned flow, its destination the client again). Leaves it alone if the service is gone.
 */
static __noinline int lb_reverse(struct __sk_buff *skb, struct pkt *p, const struct lb_result *r)
{
	__u32 id = r->frontend_id;
	const struct lb_revnat *rn = bpf_map_lookup_elem(&mb_lb_revnat, &id);
	if (!rn)
		return 0;
	union addr vip = rn->vip;
	__be16 vport = rn->port;
	if (r->lb_flags & CT_LB_F_HAIRPIN) {
		union addr client = p->saddr;
		if (lb_rewrite(skb, p, false, &client, p->dport))
			return -1;
	}
	return lb_rewrite(skb, p, true, &vip, vport);
}

#endif
