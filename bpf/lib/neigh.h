/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ARP and NDP answered by the program on the host-side veth: the host is every container's
 * next hop, so every neighbour a container asks for is answered with the host-side MAC (what
 * proxy ARP/NDP did before), except the container's own address (duplicate detection must see
 * silence) and probes from an unconfigured source. Replies are written in place and sent back
 * out of the same veth with bpf_redirect().
 */
#ifndef MEMBRANE_NEIGH_H
#define MEMBRANE_NEIGH_H

#include "packet.h"

struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__be32 spa;
	__u8 tha[6];
	__be32 tpa;
} __attribute__((packed));

/*
 * Returns REASON_ARP_REPLY after rewriting a request into its reply, REASON_FORWARD_STACK for the
 * container's own replies (to the host's requests: the host resolves containers itself), or a
 * drop reason.
 */
ALWAYS_INLINE int arp_respond(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth *arp = (void *)(eth + 1);
	if ((void *)(arp + 1) > data_end)
		return DROP_INVALID;
	if (arp->htype != bpf_htons(ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != 6 || arp->plen != 4)
		return DROP_ARP;
	if (!(ep->flags & ENDPOINT_F_IPV4) || arp->spa == 0)
		return DROP_ARP;
	if (arp->spa != ep->ip4.ip4 || !mac_equal(arp->sha, ep->mac))
		return DROP_SPOOFED_IP;
	if (arp->op == bpf_htons(ARPOP_REPLY))
		return REASON_FORWARD_STACK;
	if (arp->op != bpf_htons(ARPOP_REQUEST) || arp->tpa == ep->ip4.ip4)
		return DROP_ARP;
	__be32 target = arp->tpa;
	__builtin_memcpy(arp->tha, arp->sha, 6);
	arp->tpa = arp->spa;
	__builtin_memcpy(arp->sha, ep->host_mac, 6);
	arp->spa = target;
	arp->op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(eth->h_dest, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, ep->host_mac, 6);
	return REASON_ARP_REPLY;
}

/* Neighbour solicitation or advertisement with one link-layer address option (RFC 4861 4.3/4.4). */
struct nd_msg {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 flags; /* NA: R (router), S (solicited), O (override) in the top bits */
	__u8 target[16];
	__u8 opt_type; /* 1 source / 2 target link-layer address */
	__u8 opt_len;  /* in units of 8 bytes */
	__u8 opt_mac[6];
};

#define ND_SOLICIT 135
#define ND_ADVERT 136
#define ND_OPT_SOURCE_LL 1
#define ND_OPT_TARGET_LL 2
#define NA_FLAGS_ROUTER_SOLICITED_OVERRIDE bpf_htonl(0xe0000000)

/* True when the packet is an ICMPv6 neighbour solicitation (the caller checked IPv6). */
ALWAYS_INLINE bool is_neighbour_solicitation(const struct pkt *p)
{
	return p->proto == IPPROTO_ICMPV6 && p->l4_valid && p->icmp_type == ND_SOLICIT;
}

/*
 * Neighbour discovery (router/neighbour solicitations and advertisements, redirects) and
 * anything to or from an IPv6 link-local address: the link's own plumbing, which policy never
 * blocks (an endpoint without an identity still resolves its neighbours).
 */
ALWAYS_INLINE bool is_link_scope(const struct pkt *p)
{
	if (p->family != FAMILY_IPV6)
		return false;
	if (p->proto == IPPROTO_ICMPV6 && p->l4_valid && p->icmp_type >= 133 && p->icmp_type <= 137)
		return true;
	return ip6_is_link_local(p->saddr.ip6) || ip6_is_link_local(p->daddr.ip6);
}

/* Returns REASON_NDP_REPLY after rewriting the solicitation into an advertisement, or a drop reason. */
ALWAYS_INLINE int ndp_respond(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct nd_msg *nd = (void *)(ip6 + 1);
	if ((void *)(nd + 1) > data_end)
		return DROP_NDP; /* no source link-layer option: a DAD probe or malformed */
	if (ip6->hop_limit != 255 || nd->code != 0 || ip6->payload_len != bpf_htons(sizeof(*nd)) ||
	    nd->opt_type != ND_OPT_SOURCE_LL || nd->opt_len != 1)
		return DROP_NDP;
	if (ip6_is_unspecified((__u8 *)&ip6->saddr))
		return DROP_NDP; /* duplicate address detection: silence means "free" */
	if (!(ep->flags & ENDPOINT_F_IPV6) || ip6_equal(nd->target, ep->ip6.ip6))
		return DROP_NDP;
	if (!ip6_is_link_local((__u8 *)&ip6->saddr) && !ip6_equal((__u8 *)&ip6->saddr, ep->ip6.ip6))
		return DROP_SPOOFED_IP;
	/* Advertisement from the target to the soliciting address. */
	__builtin_memcpy(&ip6->daddr, &ip6->saddr, 16);
	__builtin_memcpy(&ip6->saddr, nd->target, 16);
	nd->type = ND_ADVERT;
	nd->flags = NA_FLAGS_ROUTER_SOLICITED_OVERRIDE;
	nd->opt_type = ND_OPT_TARGET_LL;
	__builtin_memcpy(nd->opt_mac, ep->host_mac, 6);
	nd->checksum = 0;
	/* ICMPv6 checksum over the pseudo-header (addresses, length, next header) and the message. */
	__be32 pseudo[2] = { bpf_htonl(sizeof(*nd)), bpf_htonl(IPPROTO_ICMPV6) };
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&ip6->saddr, 32, 0);
	sum = bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), sum);
	sum = bpf_csum_diff(0, 0, (__be32 *)nd, sizeof(*nd), sum);
	if (sum < 0)
		return DROP_INVALID;
	nd->checksum = csum_fold(sum);
	__builtin_memcpy(eth->h_dest, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, ep->host_mac, 6);
	return REASON_NDP_REPLY;
}

#endif
