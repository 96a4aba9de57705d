/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map of Membrane's BPF object. All are pinned by the daemon under
 * /sys/fs/bpf/membrane/<map name> and outlive it. The struct layouts are an ABI shared with
 * plugin/datapath/codec.ts (a test compares sizes with this object's BTF): change a struct only
 * by appending fields, and migrate pinned maps when a size changes.
 *
 * Byte order: addresses and ports are in network byte order (as in the packet); every other
 * integer is in host byte order.
 */
#ifndef MEMBRANE_MAPS_H
#define MEMBRANE_MAPS_H

#include "common.h"

/* An IPv4 or IPv6 address: IPv4 in the first 4 bytes, the rest zero. Network byte order. */
union addr {
	__be32 ip4;
	__u8 ip6[16];
};

struct endpoint_key {
	union addr addr; /* the endpoint's address, network order */
	__u8 family;     /* FAMILY_IPV4 or FAMILY_IPV6 */
	__u8 pad[3];
}; /* 20 bytes */

struct endpoint_info {
	__u32 ifindex;     /* host-side veth; packets for the endpoint are redirected to its peer */
	__u32 endpoint_id; /* Membrane's numeric endpoint id (appears in events and metrics) */
	__u32 identity;    /* security identity (ID_INIT until the endpoint's labels are known) */
	__u32 network_id;  /* numeric network id: direct delivery only within one network */
	__u32 flags;       /* ENDPOINT_F_* */
	__u8 mac[6];       /* the container's MAC */
	__u8 host_mac[6];  /* the host-side veth's MAC: the gateway's MAC as the container sees it */
	union addr ip4;    /* the endpoint's IPv4, network order (valid with ENDPOINT_F_IPV4) */
	union addr ip6;    /* its IPv6 (valid with ENDPOINT_F_IPV6) */
	union addr gw4;    /* its network's IPv4 gateway */
	union addr gw6;    /* its network's IPv6 gateway */
}; /* 96 bytes */

/*
 * mb_endpoints: local endpoints by address. Key struct endpoint_key, value struct endpoint_info.
 * Written by the daemon when an endpoint is created, deleted with it. Read on every packet to
 * decide whether the destination is a local container.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
} mb_endpoints SEC(".maps");

/*
 * mb_endpoints_by_if: the same endpoints keyed by host-side veth ifindex (u32, host order), so
 * a program knows whose interface it runs on without per-endpoint compilation.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct endpoint_info);
} mb_endpoints_by_if SEC(".maps");

/*
 * Connection tracking key: the flow in its original direction (the direction of its first
 * packet). Addresses and ports in network order. ICMP echo: sport = dport = echo identifier.
 */
struct ct_key {
	union addr saddr;
	union addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6 */
	__u8 family; /* FAMILY_IPV4 or FAMILY_IPV6 */
	__u8 flags;  /* CT_KEY_F_*: 0 for the flow itself */
	__u8 pad;
}; /* 40 bytes */

/*
 * A service entry: the flow as the client sent it, to the VIP, before translation. It remembers
 * the backend chosen for it, so every packet of the flow goes to the same one whatever the table
 * does meanwhile. The translated flow (client to backend) has an ordinary entry of its own.
 */
#define CT_KEY_F_SERVICE 1

/* TCP states tracked (ct_entry.state). */
enum ct_state {
	CT_NEW = 0,         /* first packet seen (TCP: SYN sent) */
	CT_ESTABLISHED = 1, /* both directions seen (TCP: handshake completed) */
	CT_CLOSING = 2,     /* FIN or RST seen */
};

struct ct_entry {
	__u64 expires_ns;  /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) after which the entry is dead */
	__u64 created_ns;
	__u64 packets_orig; /* packets in the original direction */
	__u64 bytes_orig;
	__u64 packets_reply;
	__u64 bytes_reply;
	__u32 endpoint_id;  /* endpoint that saw the first packet */
	__u8 state;         /* enum ct_state */
	__u8 tcp_flags_orig;  /* OR of TCP flags seen in the original direction */
	__u8 tcp_flags_reply; /* ... and in the reply direction */
	__u8 lb_flags;      /* CT_LB_F_*: how the flow was translated */
	__u32 policy_epoch; /* config.policy_epoch when policy last allowed the flow; another value: check again */
	__u32 frontend_id;  /* a translated flow: the service frontend (replies come from its VIP); 0 otherwise */
	__u32 backend_id;   /* ... and the backend chosen for it */
	__u32 pad;
}; /* 72 bytes */

#define CT_LB_F_TRANSLATED 1 /* the destination was a VIP, rewritten to a backend */
#define CT_LB_F_HAIRPIN 2    /* the client is its own backend: its source was rewritten to the VIP too */
#define CT_LB_F_DNS 4        /* a DNS query for the service zone, redirected to the daemon's responder */

/*
 * mb_conntrack: every flow through a Membrane endpoint, IPv4 and IPv6. LRU so a full table
 * evicts the oldest flows instead of refusing new ones; the daemon also removes expired
 * entries. Key struct ct_key, value struct ct_entry. Pinned: survives daemon restarts and
 * program replacement. max_entries comes from the daemon's persisted configuration.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} mb_conntrack SEC(".maps");

struct metric {
	__u64 packets;
	__u64 bytes;
};

/*
 * mb_metrics: per-CPU counters. Key u32 = reason * 2 + direction (enum reason, enum direction),
 * value struct metric. The daemon sums the CPUs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_COUNT * 2);
	__type(key, __u32);
	__type(value, struct metric);
} mb_metrics SEC(".maps");

/* Event types in struct event.type. */
#define EVENT_DROP 1
#define EVENT_TRACE 2
#define EVENT_POLICY 3 /* a policy verdict on a new flow, or on a known flow after a policy change */
#define EVENT_SERVICE 4 /* a new flow to a service VIP was given a backend (socket or packet level) */

struct event {
	__u8 type;      /* EVENT_DROP or EVENT_TRACE */
	__u8 reason;    /* enum reason */
	__u8 direction; /* enum direction */
	__u8 family;    /* FAMILY_IPV4, FAMILY_IPV6, or 0 for non-IP (ARP) */
	__u32 ifindex;
	__u32 endpoint_id;
	__u8 proto;
	__u8 pad[3];
	union addr saddr;
	union addr daddr;
	__be16 sport;
	__be16 dport;
	__u32 len; /* packet length */
	__u64 ts_ns;
	/* Policy verdicts (EVENT_POLICY, and drops for policy reasons); zero otherwise. */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;       /* the rule that decided; 0 = no rule (default deny, or not enforced) */
	__u8 verdict;        /* POLICY_ALLOW, POLICY_DENY, POLICY_DEFAULT_DENY */
	__u8 audit;          /* 1: the endpoint is in audit mode, a deny was let through */
	__u8 policy_direction; /* POLICY_INGRESS or POLICY_EGRESS: whose policy decided */
	__u8 pad2;
	__u32 policy_endpoint; /* endpoint_id whose policy decided */
	__u32 pad3;
	/* Service translations (EVENT_SERVICE, and any event of a translated flow); zero otherwise. */
	__u32 frontend_id;
	__u32 backend_id;
}; /* 96 bytes */

/*
 * mb_events: drop notifications and sampled trace events for `membrane monitor`. Ring buffer of
 * struct event records.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} mb_events SEC(".maps");

struct config {
	__u32 trace_sample; /* emit a trace event for 1 in N forwarded packets; 0 = none */
	__u32 policy_epoch; /* bumped by the daemon after each applied policy or identity change */
	__u32 flags;        /* CONFIG_F_* */
	__u32 pad;
}; /* 16 bytes */

#define CONFIG_F_POLICY_VERDICT_EVENTS (1U << 0) /* an EVENT_POLICY for every new flow policy judged */

/* mb_config: daemon-wide settings. Array of one struct config at key 0 (u32). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} mb_config SEC(".maps");

/*
 * mb_ipcache: the identity of every address the datapath may see as a peer. LPM trie; key
 * struct ipcache_key (prefixlen counts the 32 bits of family+pad, then address bits), value
 * struct ipcache_value. Holds the host's own addresses (ID_HOST), every local endpoint, and each
 * CIDR that a policy rule names (its CIDR identity). An address with no entry is world.
 */
struct ipcache_key {
	__u32 prefixlen;
	__u8 family; /* FAMILY_IPV4 / FAMILY_IPV6 */
	__u8 pad[3];
	union addr addr; /* network order */
}; /* 24 bytes */

struct ipcache_value {
	__u32 identity;
	__u32 class_identity; /* wildcard identity that also covers it (ID_CLASS_*), or 0 */
}; /* 8 bytes */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} mb_ipcache SEC(".maps");

/*
 * One endpoint's policy: an LPM trie keyed by struct policy_key, value struct policy_entry.
 * The daemon creates one per endpoint (pinned under policy/<endpoint_id>) and compiles rules
 * into it so that the longest match for (remote identity, direction, protocol, port) is the
 * verdict of every rule about that identity; the wildcard identities (ID_ANY and the remote's
 * ID_CLASS_*) are separate lookups whose verdicts combine with deny winning.
 */
struct policy_key {
	__u32 prefixlen;  /* bits that count from `identity` on: 40 = identity and direction (every
	                     protocol), 48 = and protocol (every port), 48 + n = and n bits of port */
	__u32 identity;   /* remote identity, host order (always matched in full) */
	__u8 direction;   /* POLICY_INGRESS or POLICY_EGRESS */
	__u8 proto;       /* IPPROTO_* */
	__be16 port;      /* TCP/UDP destination port, or the ICMP type; network order */
}; /* 12 bytes */

struct policy_entry {
	__u32 rule_id; /* the rule that decided (verdict counters, events, `membrane policy trace`) */
	__u8 verdict;  /* POLICY_ALLOW or POLICY_DENY */
	__u8 pad[3];
}; /* 8 bytes */

/*
 * Sizes, not __type: clang only emits forward declarations for types named inside __array().
 * The two structs reach the object's BTF through btf_anchor() at the end of this file instead.
 */
struct policy_map {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(struct policy_key));
	__uint(value_size, sizeof(struct policy_entry));
};

/*
 * mb_policy: every endpoint's policy map, by endpoint_id (u32, host order). A map of maps, so
 * each endpoint's trie has its own size and is replaced or emptied without touching the others.
 * An enforcing endpoint without an entry here denies (fail closed).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__array(values, struct policy_map);
} mb_policy SEC(".maps");

struct policy_counter {
	__u64 allowed; /* flows allowed by this rule */
	__u64 denied;  /* flows denied by this rule (in audit mode: would have been) */
}; /* 16 bytes */

/*
 * mb_policy_verdicts: per-CPU verdict counters by rule id (u32 key; 0 = default deny / no rule),
 * value struct policy_counter. Counted once per flow decision, not per packet.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct policy_counter);
} mb_policy_verdicts SEC(".maps");

/*
 * Never called: it names, in a function signature, the structs that no map, global or program
 * signature names (inner map types, structs only read through the ring buffer), so that clang
 * emits their BTF and the daemon's layouts (plugin/datapath/maps.ts) are checked against it.
 */
__attribute__((used)) static int btf_anchor(struct policy_key *a, struct policy_entry *b, struct event *c)
{
	return a == 0 && b == 0 && c == 0;
}

#endif
