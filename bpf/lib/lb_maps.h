/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The service load balancer's maps. A service frontend is a virtual IP, a port and a protocol
 * (one per family: the IPv4 VIP and the IPv6 VIP of a service are two frontends). Its backends
 * have stable ids, and a Maglev table per frontend maps a flow's hash to one of them. The layouts
 * are declared once more, with the same names, in plugin/datapath/maps.ts (checked against BTF).
 * Pinned under /sys/fs/bpf/membrane/ like every map; the daemon is their only writer
 * (plugin/datapath/lb-maps.ts).
 */
#ifndef MEMBRANE_LB_MAPS_H
#define MEMBRANE_LB_MAPS_H

#include "maps.h"

struct lb_frontend_key {
	union addr vip; /* network order */
	__be16 port;    /* network order */
	__u8 proto;     /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;    /* FAMILY_IPV4 or FAMILY_IPV6 */
}; /* 20 bytes */

struct lb_frontend {
	__u32 frontend_id;      /* >= 1: key of mb_lb_maglev and mb_lb_revnat, kept in conntrack */
	__u32 backend_count;    /* backends in the table (ready, weight > 0); 0: new flows are refused */
	__u32 network_id;       /* the service's Docker network: only its endpoints are translated per packet */
	__u32 table_size;       /* M, the Maglev table's size (prime); 0: no table */
	__u16 table_generation; /* which generation of mb_lb_maglev groups is the table */
	__u16 flags;            /* none yet */
}; /* 20 bytes */

/* Backend states (lb_backend.state): only the Maglev table decides new flows; these are for people. */
enum lb_backend_state {
	LB_BACKEND_ACTIVE = 0,      /* in the table */
	LB_BACKEND_TERMINATING = 1, /* `docker stop` began, or weight 0: out of the table, its flows go on */
	LB_BACKEND_QUARANTINED = 2, /* unhealthy, or not healthy yet: out of the table, its flows go on */
};

struct lb_backend {
	union addr addr;    /* network order */
	__be16 port;        /* target port, network order */
	__u8 family;
	__u8 state;         /* enum lb_backend_state */
	__u32 frontend_id;  /* the frontend it serves */
	__u32 endpoint_id;  /* its Membrane endpoint */
}; /* 28 bytes */

struct lb_revnat {
	union addr vip; /* what replies must come from */
	__be16 port;
	__u8 family;
	__u8 pad;
}; /* 20 bytes */

/* mb_lb_frontends: every service frontend. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_frontend_key);
	__type(value, struct lb_frontend);
} mb_lb_frontends SEC(".maps");

/*
 * mb_lb_backends: backends by id (u32). A backend stays here while it drains (terminating or
 * quarantined), so established flows keep reaching it; it goes when its container dies.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct lb_backend);
} mb_lb_backends SEC(".maps");

/* mb_lb_revnat: frontend id (u32) -> the VIP and port replies are rewritten to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct lb_revnat);
} mb_lb_revnat SEC(".maps");

/*
 * The Maglev tables, in groups of LB_MAGLEV_GROUP_SLOTS slots: slot s of a frontend's table (M
 * slots, M = lb_frontend.table_size, prime) is slots[s % 256] of the group keyed (frontend id,
 * table generation, s / 256). One plain hash map rather than a map of per-frontend arrays: a map
 * of maps pays an RCU grace period (synchronize_rcu, ~10 ms measured here) on every insert and
 * delete of an inner map, which made adding a service cost 9 ms and 17,900 services take 165 s,
 * and the daemon held one fd per table. A hash update costs microseconds and needs no fd.
 * A new table size is written under the next generation, then the frontend names it (one update:
 * packets see the old table or the new one, never a mix), then the old generation goes.
 */
#define LB_MAGLEV_GROUP_SLOTS 256

struct lb_maglev_key {
	__u32 frontend_id;
	__u16 generation; /* lb_frontend.table_generation */
	__u16 group;      /* slot / LB_MAGLEV_GROUP_SLOTS */
}; /* 8 bytes */

struct lb_maglev_group {
	__u32 slots[LB_MAGLEV_GROUP_SLOTS]; /* backend ids; slots past M are 0 */
}; /* 1024 bytes */

/* mb_lb_maglev: allocated as groups are written (131071 slots at most: 512 groups per frontend). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_maglev_key);
	__type(value, struct lb_maglev_group);
} mb_lb_maglev SEC(".maps");

/*
 * The socket-level balancer rewrites connect() and sendmsg() destinations; recvmsg() and
 * getpeername() must show the VIP again. Keyed by the socket's cookie and the backend it was
 * sent to.
 */
struct lb_sock_key {
	__u64 cookie;
	union addr addr; /* the backend, network order */
	__be16 port;
	__u8 family;
	__u8 pad[5];
}; /* 32 bytes */

struct lb_sock_value {
	union addr vip;
	__be16 port;
	__u8 family;
	__u8 pad;
	__u32 frontend_id;
}; /* 24 bytes */

/* mb_lb_sock: LRU, so sockets that closed long ago make room by themselves. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb_sock_key);
	__type(value, struct lb_sock_value);
} mb_lb_sock SEC(".maps");

#define LB_CONFIG_F_SOCKET (1U << 0) /* the cgroup programs translate connect() and sendmsg() */
#define LB_CONFIG_F_EVENTS (1U << 1) /* an EVENT_SERVICE for every new translated flow */
#define LB_CONFIG_F_DNS (1U << 2)    /* queries for dns_zone go to the daemon's responder (dns.h) */

#define DNS_ZONE_MAX 64

struct lb_config {
	__u32 flags;          /* LB_CONFIG_F_* */
	__be16 dns_port;      /* the daemon's DNS responder, on the endpoint's gateway address */
	__u8 dns_zone_len;    /* bytes of dns_zone, the final zero label included */
	__u8 dns_zone_labels; /* labels of the zone (svc.membrane: 2) */
	__u8 dns_zone[DNS_ZONE_MAX]; /* the zone in wire format, lowercase: \3svc\10membrane\0 */
	/* The VIP ranges: every VIP lies in them, so a packet elsewhere needs no frontend lookup. Network order. */
	__be32 vip4_net;
	__be32 vip4_mask;
	__be32 vip6_net[4];
	__be32 vip6_mask[4];
}; /* 112 bytes */

/* mb_lb_config: array of one struct lb_config at key 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} mb_lb_config SEC(".maps");

/*
 * A DNS query redirected to the daemon's responder: where it was going, so the answer can come
 * from there. Keyed by the client's address and port (each query of Docker's resolver has a port
 * of its own).
 */
struct dns_nat_key {
	union addr client;
	__be16 port;
	__u8 family;
	__u8 pad;
}; /* 20 bytes */

struct dns_nat_value {
	union addr server;
	__be16 port;
	__u8 family;
	__u8 pad;
}; /* 20 bytes */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dns_nat_key);
	__type(value, struct dns_nat_value);
} mb_dns_nat SEC(".maps");

#endif
