/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service names (NAME.svc.membrane). Docker's embedded resolver (127.0.0.11 in the container)
 * answers container names itself and forwards every other name to the upstream servers, from
 * inside the container's network namespace: the query leaves through the container's veth, where
 * from_container sees it. A UDP query for a name in Membrane's zone is redirected to the daemon's
 * responder (the endpoint's gateway address, lb_config.dns_port), which knows the querying
 * container by its source address; to_container rewrites the answer to come from the server the
 * query was sent to, so Docker's resolver (a connected socket) takes it. Every other query passes
 * untouched. DNS over TCP is not looked at: answers for the zone are small enough for UDP.
 */
#ifndef MEMBRANE_DNS_H
#define MEMBRANE_DNS_H

#include "lb.h"

#define DNS_PORT 53
#define DNS_HEADER 12
#define DNS_MAX_LABELS 16

/*
 * Whether a UDP datagram is a DNS query (QR clear, opcode QUERY, one question) for a name inside
 * the zone, with at least one label before it. Labels are walked from the question to the root.
 */
ALWAYS_INLINE bool dns_query_in_zone(struct __sk_buff *skb, const struct pkt *p, const struct lb_config *cfg)
{
	__u32 dns = l4_start(p) + sizeof(struct udphdr);
	__u8 header[6];
	if (bpf_skb_load_bytes(skb, dns, header, sizeof(header)))
		return false;
	if ((header[2] & 0xf8) != 0 || header[4] != 0 || header[5] != 1)
		return false; /* a response, another opcode, or not exactly one question */
	__u32 pos = dns + DNS_HEADER;
	__u32 starts[DNS_MAX_LABELS];
	__u32 n = 0;
	for (int i = 0; i < DNS_MAX_LABELS; i++) {
		__u8 len;
		if (bpf_skb_load_bytes(skb, pos, &len, 1))
			return false;
		if (len == 0)
			break;
		if (len > 63)
			return false; /* compression or an extended label type: never in a question */
		starts[i] = pos;
		n = i + 1;
		pos += len + 1;
	}
	__u32 labels = cfg->dns_zone_labels;
	if (n <= labels || labels == 0)
		return false;
	__u32 index = (n - labels) & (DNS_MAX_LABELS - 1);
	__u32 zone_start = starts[index];
	__u32 zone_len = pos + 1 - zone_start; /* the zone's labels and the root's zero */
	if (zone_len != cfg->dns_zone_len || zone_len == 0 || zone_len > DNS_ZONE_MAX)
		return false;
	for (int i = 0; i < DNS_ZONE_MAX; i++) {
		if ((__u32)i >= zone_len)
			break;
		__u8 c;
		if (bpf_skb_load_bytes(skb, zone_start + i, &c, 1))
			return false;
		if (c >= 'A' && c <= 'Z')
			c += 'a' - 'A'; /* names are case-insensitive; length bytes are below 64 and stay as they are */
		if (c != cfg->dns_zone[i])
			return false;
	}
	return true;
}

/* Whether a packet may be a DNS query (dns_intercept's first test, inlined in its caller). */
ALWAYS_INLINE bool dns_candidate(const struct pkt *p)
{
	return p->proto == IPPROTO_UDP && p->l4_valid && p->dport == bpf_htons(DNS_PORT);
}

/*
 * A query for the zone goes to the responder: its destination becomes the endpoint's gateway and
 * the responder's port, and where it was going is remembered for the answer. Returns -1 to go on
 * (redirected or not), setting CT_LB_F_DNS in out->lb_flags when it redirected.
 */
static __noinline int dns_intercept(struct __sk_buff *skb, struct pkt *p, const struct endpoint_info *ep, struct lb_result *out)
{
	if (!dns_candidate(p))
		return -1;
	const struct lb_config *cfg = lb_config_get();
	if (!cfg || !(cfg->flags & LB_CONFIG_F_DNS) || !dns_query_in_zone(skb, p, cfg))
		return -1;
	const union addr *gateway = p->family == FAMILY_IPV4 ? &ep->gw4 : &ep->gw6;
	struct dns_nat_key key = { .client = p->saddr, .port = p->sport, .family = p->family };
	struct dns_nat_value server = { .server = p->daddr, .port = p->dport, .family = p->family };
	bpf_map_update_elem(&mb_dns_nat, &key, &server, BPF_ANY);
	union addr to = *gateway;
	if (lb_rewrite(skb, p, false, &to, cfg->dns_port))
		return drop(skb, DROP_INVALID, DIR_FROM_CONTAINER, ep->endpoint_id, p);
	out->lb_flags = CT_LB_F_DNS;
	return -1;
}

/* The responder's answer: from the server the query was sent to. */
static __noinline int dns_reverse(struct __sk_buff *skb, struct pkt *p)
{
	struct dns_nat_key key = { .client = p->daddr, .port = p->dport, .family = p->family };
	const struct dns_nat_value *server = bpf_map_lookup_elem(&mb_dns_nat, &key);
	if (!server)
		return 0;
	union addr from = server->server;
	return lb_rewrite(skb, p, true, &from, server->port);
}

#endif
