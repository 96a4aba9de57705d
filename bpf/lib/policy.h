/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Policy: the verdict on a flow, decided once when the flow starts (and again for a known flow
 * after any policy or identity change: config.policy_epoch moved), never per packet.
 *
 * A flow is judged in its original direction by both local ends that enforce policy: the
 * source endpoint's egress policy and the destination endpoint's ingress policy. Each policy
 * is one endpoint's trie in mb_policy, looked up with the remote identity, then with the
 * identity's wildcard class, then with ID_ANY: at most three lookups whatever the rule count.
 * A deny from any lookup wins; otherwise any allow allows; otherwise the default is deny.
 */
#ifndef MEMBRANE_POLICY_H
#define MEMBRANE_POLICY_H

#include "packet.h"

struct policy_verdict {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u32 endpoint_id; /* whose policy decided (0: nobody enforces) */
	__u8 verdict;      /* POLICY_ALLOW, POLICY_DENY, POLICY_DEFAULT_DENY */
	__u8 direction;    /* POLICY_INGRESS / POLICY_EGRESS of endpoint_id */
	__u8 audit;        /* a deny let through by audit mode */
};

/* The flow a packet belongs to, in its original direction, as policy sees it. */
struct policy_flow {
	union addr saddr;
	union addr daddr;
	__u8 family;
	__u8 proto;
	__be16 port; /* TCP/UDP destination port, or the ICMP type that started the flow */
};

ALWAYS_INLINE void policy_flow_of(const struct pkt *p, bool reply, struct policy_flow *f)
{
	f->family = p->family;
	f->proto = p->proto;
	f->saddr = reply ? p->daddr : p->saddr;
	f->daddr = reply ? p->saddr : p->daddr;
	f->port = 0;
	if (!p->l4_valid)
		return; /* a non-first fragment: only rules for every port of its protocol can match */
	if (p->proto == IPPROTO_ICMP) {
		/* A tracked ICMP flow is an echo; its original packet is the request. */
		f->port = bpf_htons(reply ? 8 : p->icmp_type);
	} else if (p->proto == IPPROTO_ICMPV6) {
		f->port = bpf_htons(reply ? 128 : p->icmp_type);
	} else if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		f->port = reply ? p->sport : p->dport;
	}
}

/* Identity of a non-endpoint address, and the wildcard class that also covers it. */
ALWAYS_INLINE __u32 ipcache_identity(const union addr *addr, __u8 family, __u32 *class_identity)
{
	struct ipcache_key key = { .prefixlen = 32 + (family == FAMILY_IPV4 ? 32 : 128), .family = family, .addr = *addr };
	const struct ipcache_value *v = bpf_map_lookup_elem(&mb_ipcache, &key);
	if (v) {
		*class_identity = v->class_identity;
		return v->identity;
	}
	*class_identity = family == FAMILY_IPV4 ? ID_CLASS_WORLD_IPV4 : ID_CLASS_WORLD_IPV6;
	return family == FAMILY_IPV4 ? ID_WORLD_IPV4 : ID_WORLD_IPV6;
}

ALWAYS_INLINE __u32 endpoint_class(__u32 identity)
{
	return identity >= ID_FIRST_ENDPOINT && identity < ID_FIRST_CIDR ? ID_CLASS_ENDPOINTS : 0;
}

/* One longest-prefix lookup in an endpoint's trie; returns the entry or 0. */
ALWAYS_INLINE const struct policy_entry *policy_lookup(void *trie, __u32 identity, __u8 direction, const struct policy_flow *f)
{
	struct policy_key key = {
		.prefixlen = 64, .identity = identity, .direction = direction, .proto = f->proto, .port = f->port,
	};
	return bpf_map_lookup_elem(trie, &key);
}

/*
 * The verdict of one endpoint's policy in one direction on a remote identity. Fills rule_id
 * with the deciding rule (0 for the default deny).
 */
ALWAYS_INLINE __u8 policy_decide(const struct endpoint_info *ep, __u8 direction, __u32 remote, __u32 remote_class,
				 const struct policy_flow *f, __u32 *rule_id)
{
	*rule_id = 0;
	void *trie = bpf_map_lookup_elem(&mb_policy, &ep->endpoint_id);
	if (!trie)
		return POLICY_DEFAULT_DENY; /* enforcing, and its policy is not written: fail closed */
	const struct policy_entry *exact = policy_lookup(trie, remote, direction, f);
	const struct policy_entry *class = remote_class ? policy_lookup(trie, remote_class, direction, f) : 0;
	const struct policy_entry *any = policy_lookup(trie, ID_ANY, direction, f);
	const struct policy_entry *allow = 0;
	if (exact) {
		if (exact->verdict == POLICY_DENY)
			goto deny_exact;
		allow = exact;
	}
	if (class) {
		if (class->verdict == POLICY_DENY) {
			*rule_id = class->rule_id;
			return POLICY_DENY;
		}
		if (!allow)
			allow = class;
	}
	if (any) {
		if (any->verdict == POLICY_DENY) {
			*rule_id = any->rule_id;
			return POLICY_DENY;
		}
		if (!allow)
			allow = any;
	}
	if (allow) {
		*rule_id = allow->rule_id;
		return POLICY_ALLOW;
	}
	return POLICY_DEFAULT_DENY;
deny_exact:
	*rule_id = exact->rule_id;
	return POLICY_DENY;
}

ALWAYS_INLINE void policy_count(__u32 rule_id, bool allowed)
{
	struct policy_counter *c = bpf_map_lookup_elem(&mb_policy_verdicts, &rule_id);
	if (!c)
		return;
	if (allowed)
		c->allowed++;
	else
		c->denied++;
}

/*
 * Judges a flow: the egress policy of its source if that is a local endpoint, then the ingress
 * policy of its destination if that is one. `v->verdict` is POLICY_ALLOW unless an enforcing
 * endpoint without audit mode denies.
 */
ALWAYS_INLINE void policy_judge(const struct policy_flow *f, struct policy_verdict *v)
{
	struct endpoint_key src_key = { .addr = f->saddr, .family = f->family };
	struct endpoint_key dst_key = { .addr = f->daddr, .family = f->family };
	const struct endpoint_info *src = bpf_map_lookup_elem(&mb_endpoints, &src_key);
	const struct endpoint_info *dst = bpf_map_lookup_elem(&mb_endpoints, &dst_key);
	__u32 src_class, dst_class;
	v->src_identity = src ? src->identity : ipcache_identity(&f->saddr, f->family, &src_class);
	if (src)
		src_class = endpoint_class(src->identity);
	v->dst_identity = dst ? dst->identity : ipcache_identity(&f->daddr, f->family, &dst_class);
	if (dst)
		dst_class = endpoint_class(dst->identity);
	v->verdict = POLICY_ALLOW;
	v->rule_id = 0;
	v->endpoint_id = 0;
	v->audit = 0;
	__u32 rule;
	if (src && (src->flags & ENDPOINT_F_ENFORCE_EGRESS)) {
		__u8 verdict = policy_decide(src, POLICY_EGRESS, v->dst_identity, dst_class, f, &rule);
		v->verdict = verdict;
		v->rule_id = rule;
		v->endpoint_id = src->endpoint_id;
		v->direction = POLICY_EGRESS;
		policy_count(rule, verdict == POLICY_ALLOW);
		if (verdict != POLICY_ALLOW) {
			if (!(src->flags & ENDPOINT_F_AUDIT))
				return;
			v->audit = 1;
		}
	}
	if (dst && (dst->flags & ENDPOINT_F_ENFORCE_INGRESS)) {
		__u8 verdict = policy_decide(dst, POLICY_INGRESS, v->src_identity, src_class, f, &rule);
		policy_count(rule, verdict == POLICY_ALLOW);
		/* Report the denying side; an audited deny from the source stays reported if this one allows. */
		if (verdict != POLICY_ALLOW || !v->audit) {
			v->verdict = verdict;
			v->rule_id = rule;
			v->endpoint_id = dst->endpoint_id;
			v->direction = POLICY_INGRESS;
		}
		if (verdict != POLICY_ALLOW && (dst->flags & ENDPOINT_F_AUDIT))
			v->audit = 1;
		else if (verdict != POLICY_ALLOW)
			v->audit = 0;
	}
}

/* True when the verdict lets the packet through (an allow, or a deny in audit mode). */
ALWAYS_INLINE bool policy_passes(const struct policy_verdict *v)
{
	return v->verdict == POLICY_ALLOW || v->audit;
}

#endif
