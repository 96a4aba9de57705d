/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parsing the headers the datapath looks at into struct pkt. */
#ifndef MEMBRANE_PACKET_H
#define MEMBRANE_PACKET_H

#include "maps.h"

struct pkt {
	union addr saddr; /* network order */
	union addr daddr;
	__be16 sport;     /* TCP/UDP ports; ICMP echo identifier in both */
	__be16 dport;
	__u8 family;      /* FAMILY_IPV4 / FAMILY_IPV6 */
	__u8 proto;       /* L4 protocol; 0 when unknown */
	__u8 tcp_flags;   /* byte 13 of the TCP header */
	__u8 icmp_type;
	__u8 l4_valid;    /* ports/flags/type were read (not a non-first fragment, not truncated) */
	__u8 l4_offset;   /* L4 header offset from the L3 header (IPv4: ihl * 4; IPv6: 40) */
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Folds a 32-bit one's-complement sum (from bpf_csum_diff) into a 16-bit checksum. */
ALWAYS_INLINE __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

ALWAYS_INLINE bool mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

ALWAYS_INLINE bool ip6_equal(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

ALWAYS_INLINE bool ip6_is_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

ALWAYS_INLINE bool ip6_is_unspecified(const __u8 *a)
{
	const __u32 *x = (const __u32 *)a;
	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

/* Reads L4 ports, TCP flags or ICMP type at `l4` into p. */
ALWAYS_INLINE void parse_l4(void *l4, void *data_end, struct pkt *p)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->tcp_flags = ((__u8 *)tcp)[13];
		p->l4_valid = 1;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return;
		p->sport = udp->source;
		p->dport = udp->dest;
		p->l4_valid = 1;
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		/* type, code, checksum, then the echo identifier */
		__u8 *icmp = l4;
		if ((void *)(icmp + 8) > data_end)
			return;
		p->icmp_type = icmp[0];
		p->sport = p->dport = *(__be16 *)(icmp + 4);
		p->l4_valid = 1;
	}
}

/* Parses IPv4 after the Ethernet header. Returns 0, or DROP_INVALID. */
ALWAYS_INLINE int parse_ipv4(void *data, void *data_end, struct pkt *p)
{
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5 || ip->version != 4)
		return DROP_INVALID;
	p->family = FAMILY_IPV4;
	p->saddr.ip4 = ip->saddr;
	p->daddr.ip4 = ip->daddr;
	p->proto = ip->protocol;
	p->l4_offset = ip->ihl * 4;
	/* Non-first fragments carry no L4 header: tracked by addresses and protocol only. */
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	parse_l4((void *)ip + ip->ihl * 4, data_end, p);
	return 0;
}

/*
 * Parses IPv6 after the Ethernet header. Extension headers are not walked: such packets are
 * tracked by addresses and their first next-header value.
 */
ALWAYS_INLINE int parse_ipv6(void *data, void *data_end, struct pkt *p)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return DROP_INVALID;
	p->family = FAMILY_IPV6;
	__builtin_memcpy(p->saddr.ip6, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr.ip6, &ip6->daddr, 16);
	p->proto = ip6->nexthdr;
	p->l4_offset = sizeof(*ip6);
	parse_l4(ip6 + 1, data_end, p);
	return 0;
}

#endif
