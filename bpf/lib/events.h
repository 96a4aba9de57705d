/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counting every verdict in mb_metrics and reporting drops (and sampled traces) in mb_events. */
#ifndef MEMBRANE_EVENTS_H
#define MEMBRANE_EVENTS_H

#include "policy.h"

ALWAYS_INLINE void count(__u32 reason, __u32 direction, __u32 len)
{
	__u32 key = reason * 2 + direction;
	struct metric *m = bpf_map_lookup_elem(&mb_metrics, &key);
	/* Per-CPU slot: no other CPU writes it, and preemption cannot split a tc program run. */
	if (m) {
		m->packets++;
		m->bytes += len;
	}
}

ALWAYS_INLINE void emit_full(__u8 type, __u32 reason, __u32 direction, struct __sk_buff *skb, __u32 endpoint_id,
			     const struct pkt *p, const struct policy_verdict *v, __u32 frontend_id, __u32 backend_id)
{
	struct event *e = bpf_ringbuf_reserve(&mb_events, sizeof(*e), 0);
	if (!e)
		return; /* ring full: the metrics still count it */
	__builtin_memset(e, 0, sizeof(*e));
	e->type = type;
	e->reason = reason;
	e->direction = direction;
	e->ifindex = skb->ifindex;
	e->endpoint_id = endpoint_id;
	e->len = skb->len;
	e->ts_ns = bpf_ktime_get_ns();
	if (p) {
		e->family = p->family;
		e->proto = p->proto;
		e->saddr = p->saddr;
		e->daddr = p->daddr;
		e->sport = p->sport;
		e->dport = p->dport;
	}
	if (v) {
		e->src_identity = v->src_identity;
		e->dst_identity = v->dst_identity;
		e->rule_id = v->rule_id;
		e->verdict = v->verdict;
		e->audit = v->audit;
		e->policy_direction = v->direction;
		e->policy_endpoint = v->endpoint_id;
	}
	e->frontend_id = frontend_id;
	e->backend_id = backend_id;
	bpf_ringbuf_submit(e, 0);
}

ALWAYS_INLINE void emit(__u8 type, __u32 reason, __u32 direction, struct __sk_buff *skb, __u32 endpoint_id,
			const struct pkt *p, const struct policy_verdict *v)
{
	emit_full(type, reason, direction, skb, endpoint_id, p, v, 0, 0);
}

/* An event about a flow to a service: which frontend, and which backend if one was chosen. */
ALWAYS_INLINE void emit_lb(__u8 type, __u32 reason, __u32 direction, struct __sk_buff *skb, __u32 endpoint_id,
			   const struct pkt *p, __u32 frontend_id, __u32 backend_id)
{
	emit_full(type, reason, direction, skb, endpoint_id, p, 0, frontend_id, backend_id);
}

/* Counts and reports a drop, and returns the verdict. */
ALWAYS_INLINE int drop(struct __sk_buff *skb, __u32 reason, __u32 direction, __u32 endpoint_id, const struct pkt *p)
{
	count(reason, direction, skb->len);
	emit(EVENT_DROP, reason, direction, skb, endpoint_id, p, 0);
	return TC_ACT_SHOT;
}

/* Counts and reports a drop by policy, with both identities and the deciding rule. */
ALWAYS_INLINE int drop_policy(struct __sk_buff *skb, __u32 direction, __u32 endpoint_id, const struct pkt *p,
			      const struct policy_verdict *v)
{
	__u32 reason = v->verdict == POLICY_DENY ? DROP_POLICY_DENY : DROP_POLICY_DEFAULT;
	count(reason, direction, skb->len);
	emit(EVENT_DROP, reason, direction, skb, endpoint_id, p, v);
	return TC_ACT_SHOT;
}

ALWAYS_INLINE const struct config *config_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&mb_config, &zero);
}

/* Counts a forwarding verdict and emits a trace event for 1 in config.trace_sample packets. */
ALWAYS_INLINE void forwarded(struct __sk_buff *skb, __u32 reason, __u32 direction, __u32 endpoint_id, const struct pkt *p)
{
	count(reason, direction, skb->len);
	const struct config *cfg = config_get();
	if (cfg && cfg->trace_sample && bpf_get_prandom_u32() % cfg->trace_sample == 0)
		emit(EVENT_TRACE, reason, direction, skb, endpoint_id, p, 0);
}

#endif
