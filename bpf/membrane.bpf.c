// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Membrane's datapath: one object, compiled once at build time, configured only through maps
 * (lib/maps.h). Two programs run on every endpoint's host-side veth:
 *
 *   from_container  tc ingress: everything the container sends. Answers ARP/NDP, drops spoofed
 *                   sources, tracks connections, enforces policy (the container's egress, and
 *                   the ingress of a local destination), and delivers traffic for another local
 *                   endpoint of the same network straight into that container
 *                   (bpf_redirect_peer), bypassing the host stack. The rest goes to the stack.
 *   to_container    tc egress: everything the host stack sends to the container. Tracks
 *                   connections, enforces the container's ingress policy, and counts.
 */

#include "lib/common.h"
#include "lib/maps.h"
#include "lib/packet.h"
#include "lib/events.h"
#include "lib/neigh.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/lb.h"
#include "lib/sock_lb.h"
#include "lib/dns.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Test builds only (integration/datapath.test.ts): -DMEMBRANE_BUILD_VARIANT=1 yields a different
 * instruction stream, to prove a new build replaces the running programs without a lost packet.
 */
#ifndef MEMBRANE_BUILD_VARIANT
#define MEMBRANE_BUILD_VARIANT 0
#endif

/*
 * Rewrites the packet for a local endpoint (MACs, TTL/hop limit: this is a routed hop) and
 * redirects it into that endpoint's container. A packet whose TTL would expire goes to the host
 * stack instead, which sends the ICMP time-exceeded.
 */
static __always_inline int deliver_local(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_info *dst)
{
	/* Written in place (the program's unclone prologue made the head private), no helper calls. */
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if (p->family == FAMILY_IPV4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end)
			return -1;
		if (ip->ttl <= 1)
			return -1;
		/*
		 * RFC 1624 incremental update, as the kernel's ip_decrease_ttl: TTL is the high byte of
		 * its 16-bit word, so the word drops by 0x0100 and the checksum rises by as much.
		 */
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__sum16)(check + (check >= 0xffff));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if (ip6->hop_limit <= 1)
			return -1;
		ip6->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, dst->mac, 6);
	__builtin_memcpy(eth->h_source, dst->host_mac, 6);
	return bpf_redirect_peer(dst->ifindex, 0);
}

/*
 * Conntrack and policy for an IP packet. Policy judges a flow when it starts, and a known flow
 * again when config.policy_epoch has moved since it was last allowed (that is how a removed
 * allow stops established connections). `lb` says how the packet was translated to a service
 * backend (a new flow keeps it in its entry); `reply` receives what a reply of a translated flow
 * needs undone. A client that is its own backend (hairpin) talks to itself: policy does not judge
 * that, as Kubernetes and Cilium do not. Returns -1 to go on, or the drop verdict.
 *
 * admit() is inlined in both programs and does what a packet of a known flow needs (one
 * conntrack lookup, the counters): most packets. The rest (new flows, packets without a flow of
 * their own, a known flow after a policy change) goes on to admit_judge().
 */
struct admit_args {
	__u64 now;
	__u32 direction;
	__u32 endpoint_id;
	struct lb_result lb;    /* in: how the packet was translated */
	struct lb_result reply; /* out: what a reply of a translated flow needs undone */
};

/* A known flow's packet, policy passed: counted, and what its reply needs undone read out. */
ALWAYS_INLINE void admit_known(struct __sk_buff *skb, const struct pkt *p, struct admit_args *a, int ct, struct ct_entry *e)
{
	ct_account(e, p, skb->len, ct == CT_RESULT_REPLY, a->now);
	if (ct == CT_RESULT_REPLY && e->lb_flags) {
		a->reply.frontend_id = e->frontend_id;
		a->reply.backend_id = e->backend_id;
		a->reply.lb_flags = e->lb_flags;
	}
}

/*
 * A function of its own (a BPF-to-BPF call), so that its stack frame and lb_translate's are never
 * stacked. `ct` and `e` are ct_lookup's answer for the packet.
 */
static __noinline int admit_judge(struct __sk_buff *skb, const struct pkt *p, struct admit_args *a, int ct, struct ct_entry *e)
{
	__u64 now = a->now;
	__u32 direction = a->direction;
	__u32 endpoint_id = a->endpoint_id;
	const struct lb_result *lb = &a->lb;
	const struct config *cfg = config_get();
	__u32 epoch = cfg ? cfg->policy_epoch : 0;
	if (ct == CT_RESULT_UNTRACKED && icmp_is_error(p) && ct_related(skb, p, now))
		return -1;
	/* A client that is its own backend talks to itself; a query for service names goes to Membrane's responder. */
	__u8 unjudged = (lb->lb_flags | (e ? e->lb_flags : 0)) & (CT_LB_F_HAIRPIN | CT_LB_F_DNS);
	if (!unjudged && (ct == CT_RESULT_NEW || ct == CT_RESULT_UNTRACKED || (e && e->policy_epoch != epoch))) {
		struct policy_flow f;
		struct policy_verdict v;
		policy_flow_of(p, ct == CT_RESULT_REPLY, &f);
		policy_judge(&f, &v);
		if (!policy_passes(&v))
			return drop_policy(skb, direction, endpoint_id, p, &v);
		if (e)
			e->policy_epoch = epoch;
		if (v.audit || (ct == CT_RESULT_NEW && cfg && (cfg->flags & CONFIG_F_POLICY_VERDICT_EVENTS)))
			emit(EVENT_POLICY, v.audit ? (v.verdict == POLICY_DENY ? DROP_POLICY_DENY : DROP_POLICY_DEFAULT) : 0,
			     direction, skb, endpoint_id, p, &v);
	}
	if (ct == CT_RESULT_NEW)
		ct_create(p, skb->len, endpoint_id, epoch, lb->frontend_id, lb->backend_id, lb->lb_flags);
	else if (e)
		admit_known(skb, p, a, ct, e);
	return -1;
}

ALWAYS_INLINE int admit(struct __sk_buff *skb, const struct pkt *p, struct admit_args *a)
{
	struct ct_entry *e;
	int ct = ct_lookup(p, a->now, &e);
	if (e) {
		const struct config *cfg = config_get();
		__u32 epoch = cfg ? cfg->policy_epoch : 0;
		/* The same test as admit_judge's: nothing to judge. */
		if (((a->lb.lb_flags | e->lb_flags) & (CT_LB_F_HAIRPIN | CT_LB_F_DNS)) || e->policy_epoch == epoch) {
			admit_known(skb, p, a, ct, e);
			return -1;
		}
	}
	return admit_judge(skb, p, a, ct, e);
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	const struct endpoint_info *ep = bpf_map_lookup_elem(&mb_endpoints_by_if, &ifindex);
	if (!ep)
		return drop(skb, DROP_UNKNOWN_ENDPOINT, DIR_FROM_CONTAINER, 0, 0);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, DIR_FROM_CONTAINER, ep->endpoint_id, 0);
	if (!mac_equal(eth->h_source, ep->mac))
		return drop(skb, DROP_SPOOFED_MAC, DIR_FROM_CONTAINER, ep->endpoint_id, 0);

	struct pkt p = {};
	int reason;
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_ARP):
		reason = arp_respond(skb, ep);
		if (reason == REASON_FORWARD_STACK) {
			count(reason, DIR_FROM_CONTAINER, skb->len);
			return TC_ACT_OK;
		}
		if (reason != REASON_ARP_REPLY)
			return drop(skb, reason, DIR_FROM_CONTAINER, ep->endpoint_id, 0);
		count(reason, DIR_FROM_CONTAINER, skb->len);
		return bpf_redirect(skb->ifindex, 0);
	case bpf_htons(ETH_P_IP):
		reason = parse_ipv4(data, data_end, &p);
		if (reason)
			return drop(skb, reason, DIR_FROM_CONTAINER, ep->endpoint_id, 0);
		if (!(ep->flags & ENDPOINT_F_IPV4) || p.saddr.ip4 != ep->ip4.ip4)
			return drop(skb, DROP_SPOOFED_IP, DIR_FROM_CONTAINER, ep->endpoint_id, &p);
		break;
	case bpf_htons(ETH_P_IPV6):
		reason = parse_ipv6(data, data_end, &p);
		if (reason)
			return drop(skb, reason, DIR_FROM_CONTAINER, ep->endpoint_id, 0);
		if (is_neighbour_solicitation(&p)) {
			reason = ndp_respond(skb, ep);
			if (reason != REASON_NDP_REPLY)
				return drop(skb, reason, DIR_FROM_CONTAINER, ep->endpoint_id, &p);
			count(reason, DIR_FROM_CONTAINER, skb->len);
			return bpf_redirect(skb->ifindex, 0);
		}
		/* Link-local traffic (router solicitations, MLD) is for the host on this link only. */
		if (ip6_is_link_local(p.saddr.ip6)) {
			forwarded(skb, REASON_FORWARD_STACK, DIR_FROM_CONTAINER, ep->endpoint_id, &p);
			return TC_ACT_OK;
		}
		if (!(ep->flags & ENDPOINT_F_IPV6) || !ip6_equal(p.saddr.ip6, ep->ip6.ip6))
			return drop(skb, DROP_SPOOFED_IP, DIR_FROM_CONTAINER, ep->endpoint_id, &p);
		break;
	default:
		return drop(skb, DROP_UNSUPPORTED_L3, DIR_FROM_CONTAINER, ep->endpoint_id, 0);
	}

	if (is_link_scope(&p)) {
		forwarded(skb, REASON_FORWARD_STACK, DIR_FROM_CONTAINER, ep->endpoint_id, &p);
		return TC_ACT_OK;
	}

	__u64 now = ct_now();
	struct admit_args a = { .now = now, .direction = DIR_FROM_CONTAINER, .endpoint_id = ep->endpoint_id };
	const struct lb_result *lb = &a.lb;
	/* The calls only for packets that may concern them: their first tests, made here, turn away most. */
	int verdict;
	if (dns_candidate(&p)) {
		verdict = dns_intercept(skb, &p, ep, &a.lb);
		if (verdict >= 0)
			return verdict;
	}
	if (!(lb->lb_flags & CT_LB_F_DNS) && lb_candidate(&p)) {
		verdict = lb_translate(skb, &p, ep, now, &a.lb);
		if (verdict >= 0)
			return verdict;
	}
	if (lb->refuse)
		return lb_refuse(skb, &p, ep, lb->refuse, lb->frontend_id);

	struct endpoint_key dst_key = { .addr = p.daddr, .family = p.family };
	const struct endpoint_info *dst = bpf_map_lookup_elem(&mb_endpoints, &dst_key);
	/* The routing rules isolate networks for traffic through the stack; this is the same rule. */
	if (dst && dst->network_id != ep->network_id)
		return drop(skb, DROP_CROSS_NETWORK, DIR_FROM_CONTAINER, ep->endpoint_id, &p);

	verdict = admit(skb, &p, &a);
	if (verdict >= 0)
		return verdict;
	const struct lb_result *reply = &a.reply;
	if (lb->new_flow) {
		const struct lb_config *lbc = lb_config_get();
		if (lbc && (lbc->flags & LB_CONFIG_F_EVENTS))
			emit_lb(EVENT_SERVICE, REASON_FORWARD_STACK, DIR_FROM_CONTAINER, skb, ep->endpoint_id, &p, lb->frontend_id, lb->backend_id);
	}
	/* A reply of a translated flow comes from the VIP by the time it reaches its client. */
	if (reply->lb_flags & CT_LB_F_TRANSLATED) {
		if (lb_reverse(skb, &p, reply))
			return drop(skb, DROP_INVALID, DIR_FROM_CONTAINER, ep->endpoint_id, &p);
		dst_key.addr = p.daddr;
		dst = bpf_map_lookup_elem(&mb_endpoints, &dst_key);
	}

	if (dst) {
		verdict = deliver_local(skb, &p, dst);
		if (verdict >= 0) {
			forwarded(skb, REASON_REDIRECT_PEER, DIR_FROM_CONTAINER, ep->endpoint_id, &p);
			return verdict;
		}
	}
	forwarded(skb, REASON_FORWARD_STACK, DIR_FROM_CONTAINER, ep->endpoint_id, &p);
	return TC_ACT_OK;
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	if (MEMBRANE_BUILD_VARIANT)
		bpf_get_prandom_u32();
	__u32 ifindex = skb->ifindex;
	const struct endpoint_info *ep = bpf_map_lookup_elem(&mb_endpoints_by_if, &ifindex);
	__u32 endpoint_id = ep ? ep->endpoint_id : 0;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	struct pkt p = {};
	int parsed = -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		parsed = parse_ipv4(data, data_end, &p);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		parsed = parse_ipv6(data, data_end, &p);
	if (parsed == 0 && !is_link_scope(&p)) {
		struct admit_args a = { .now = ct_now(), .direction = DIR_TO_CONTAINER, .endpoint_id = endpoint_id };
		int verdict = admit(skb, &p, &a);
		if (verdict >= 0)
			return verdict;
		/* The responder's answer to a redirected query comes from the server it was sent to. */
		if ((a.reply.lb_flags & CT_LB_F_DNS) && dns_reverse(skb, &p))
			return drop(skb, DROP_INVALID, DIR_TO_CONTAINER, endpoint_id, &p);
	}
	forwarded(skb, REASON_TO_CONTAINER, DIR_TO_CONTAINER, endpoint_id, parsed == 0 ? &p : 0);
	return TC_ACT_OK;
}

/*
 * Socket level (lib/sock_lb.h): attached with links at the root of the cgroup-v2 hierarchy, so
 * they see every process's sockets, the host's and every container's.
 */
SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_lb_translate4(ctx);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_lb_translate4(ctx);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_lb_reverse4(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_lb_reverse4(ctx);
}

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx)
{
	return sock_lb_translate6(ctx);
}

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_lb_translate6(ctx);
}

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_lb_reverse6(ctx);
}

SEC("cgroup/getpeername6")
int sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock_lb_reverse6(ctx);
}

/*
 * Socket iterators, run by the daemon inside each endpoint's network namespace and the host's:
 * connected sockets whose peer is a removed backend are destroyed (TCP sends its peer a reset and
 * the application sees ECONNABORTED), so clients reconnect through the VIP. Listening, closing and
 * unconnected sockets are never touched.
 */
SEC("iter/tcp")
int sock_destroy_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	if (!sk)
		return 0;
	unsigned char state = sk->skc_state;
	if (state == TCP_LISTEN_STATE || state == TCP_TIME_WAIT_STATE || state == TCP_NEW_SYN_RECV_STATE || state == TCP_CLOSE_STATE)
		return 0;
	sock_lb_destroy_if_doomed(ctx->meta, sk, IPPROTO_TCP);
	return 0;
}

SEC("iter/udp")
int sock_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	if (!udp)
		return 0;
	struct sock_common *sk = (struct sock_common *)udp;
	/* Connected UDP sockets only: an unconnected one has no peer to lose. */
	if (sk->skc_state != TCP_ESTABLISHED_STATE)
		return 0;
	sock_lb_destroy_if_doomed(ctx->meta, sk, IPPROTO_UDP);
	return 0;
}
