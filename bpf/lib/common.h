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
	REASON_COUNT = 128,
};

enum direction {
	DIR_FROM_CONTAINER = 0, /* tc ingress of the host-side veth: the container sends */
	DIR_TO_CONTAINER = 1,   /* tc egress of the host-side veth: the host stack delivers */
};

/* Endpoint flags (endpoint_info.flags). */
#define ENDPOINT_F_IPV4 (1U << 0) /* ip4/gw4 are valid */
#define ENDPOINT_F_IPV6 (1U << 1) /* ip6/gw6 are valid */

#endif
