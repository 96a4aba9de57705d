/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared definitions of Membrane's BPF object: includes, constants, verdicts, reasons. */
#ifndef MEMBRANE_COMMON_H
#define MEMBRANE_COMMON_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <stdbool.h>

#define ALWAYS_INLINE static __always_inline

/* From linux/if_arp.h, which cannot be included here (it pulls in libc's socket headers). */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

/* Address families as Membrane writes them in keys (not AF_*: one byte, stable across ABIs). */
#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

/*
 * Why a packet was forwarded or dropped. The metrics map is indexed by reason and direction;
 * drop events carry the reason. Values are part of the ABI with plugin/datapath/codec.ts:
 * append, never renumber.
 */
enum reason {
	REASON_FORWARD_STACK = 0,   /* handed to the host stack (host, outside world, other nets) */
	REASON_REDIRECT_PEER = 1,   /* delivered straight to a local endpoint on the same network */
	REASON_ARP_REPLY = 2,       /* ARP request answered by the program */
	REASON_NDP_REPLY = 3,       /* neighbour solicitation answered by the program */
	REASON_TO_CONTAINER = 4,    /* host stack -> container */
	REASON_MAX_FORWARD = 63,
	DROP_UNKNOWN_ENDPOINT = 64, /* program runs on an interface with no endpoint entry */
	DROP_SPOOFED_MAC = 65,      /* source MAC is not the endpoint's */
	DROP_SPOOFED_IP = 66,       /* source IP is not the endpoint's */
	DROP_INVALID = 67,          /* truncated or malformed header */
	DROP_UNSUPPORTED_L3 = 68,   /* neither IPv4, IPv6 nor ARP */
	DROP_CROSS_NETWORK = 69,    /* destination is a local endpoint of another network */
	DROP_ARP = 70,              /* ARP the program does not answer (probes, replies, own address) */
	DROP_NDP = 71,              /* NDP the program does not answer (DAD probes, malformed) */
	DROP_POLICY_DENY = 72,      /* a deny rule matched */
	DROP_POLICY_DEFAULT = 73,   /* policy is enforced and no rule allows it (includes ID_INIT endpoints) */
	DROP_NO_SERVICE_BACKEND = 74, /* to a VIP without a ready backend: answered with a reset or ICMP unreachable */
	DROP_SERVICE_BACKEND_GONE = 75, /* a translated TCP flow whose backend was removed: reset so the client reconnects */
	REASON_COUNT = 128,
};

enum direction {
	DIR_FROM_CONTAINER = 0, /* tc ingress of the host-side veth: the container sends */
	DIR_TO_CONTAINER = 1,   /* tc egress of the host-side veth: the host stack delivers */
};

/* Endpoint flags (endpoint_info.flags). */
#define ENDPOINT_F_IPV4 (1U << 0)            /* ip4/gw4 are valid */
#define ENDPOINT_F_IPV6 (1U << 1)            /* ip6/gw6 are valid */
#define ENDPOINT_F_ENFORCE_INGRESS (1U << 2) /* traffic to it needs an allow in its policy map */
#define ENDPOINT_F_ENFORCE_EGRESS (1U << 3)  /* traffic from it needs an allow in its policy map */
#define ENDPOINT_F_AUDIT (1U << 4)           /* policy denies are reported, not enforced */

/*
 * Identities. Below ID_FIRST_ENDPOINT they are reserved; ID_ANY and ID_CLASS_* only appear
 * in policy keys, as wildcards. Part of the ABI with plugin/identity/identities.ts.
 */
#define ID_ANY 0               /* policy keys: every remote identity */
#define ID_HOST 1              /* this machine's own addresses */
#define ID_CLASS_ENDPOINTS 3   /* policy keys: every endpoint identity (>= ID_FIRST_ENDPOINT) */
#define ID_INIT 5              /* an endpoint whose labels are not known yet */
#define ID_WORLD_IPV4 9        /* an IPv4 address nobody claims (no ipcache entry) */
#define ID_WORLD_IPV6 10       /* an IPv6 address nobody claims */
#define ID_CLASS_WORLD_IPV4 11 /* policy keys: ID_WORLD_IPV4 and every IPv4 CIDR identity */
#define ID_CLASS_WORLD_IPV6 12 /* policy keys: ID_WORLD_IPV6 and every IPv6 CIDR identity */
#define ID_FIRST_ENDPOINT 256 /* endpoint identities: 256 .. ID_FIRST_CIDR - 1 */
#define ID_FIRST_CIDR (1U << 24) /* identities of CIDRs named by policy rules */

/* Policy directions (policy_key.direction): whose policy, seen from the endpoint. */
#define POLICY_INGRESS 0
#define POLICY_EGRESS 1

/* Verdicts (policy_entry.verdict, event.verdict). */
#define POLICY_ALLOW 1
#define POLICY_DENY 2
#define POLICY_DEFAULT_DENY 3 /* events only: enforced, and no rule allows */

#endif
