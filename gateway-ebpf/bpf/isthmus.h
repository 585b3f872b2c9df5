/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map layouts shared by the eBPF programs (isthmus.bpf.c) and the loader (src/layout.rs).
 * A change here must be made in src/layout.rs too; the layout test compares the two.
 *
 * Addresses are 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address (::ffff:a.b.c.d),
 * so one map serves both families. Addresses and ports are in network byte order; every other
 * integer is in host order.
 */
#ifndef ISTHMUS_H
#define ISTHMUS_H

#include <linux/types.h>

/* Every key is padded explicitly: the kernel hashes every byte of a key. */

struct ist_addr {
	__u32 w[4];
};

/* ist_services: (VIP, port, protocol) -> the service's current selection. */
struct ist_svc_key {
	struct ist_addr vip;
	__be16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

struct ist_svc_value {
	__u32 service_id;
	/* The slot table in use (ist_slots key); replaced as a whole, never edited in place. */
	__u32 selection;
	/* Slots in that table; 0 means no healthy backend: drop and count. */
	__u32 count;
	__u32 pad;
};

/* ist_vips: a VIP (any port) -> its service, to tell "no such port" from "not a VIP". */
struct ist_vip_key {
	struct ist_addr vip;
};

struct ist_vip_value {
	__u32 service_id;
};

/* ist_slots: (selection, index) -> backend; the policy expanded by the agent. */
struct ist_slot_key {
	__u32 selection;
	__u32 index;
};

struct ist_slot_value {
	__u32 backend_id;
};

/* ist_backends: backend id -> address. Ids are never reused while a flow may hold one. */
struct ist_backend_key {
	__u32 backend_id;
};

struct ist_backend_value {
	struct ist_addr addr;
	/* 0 keeps the VIP's port (a service with several port numbers). */
	__be16 port;
	__u16 pad;
	__u32 service_id;
};

/*
 * ist_flows (client -> VIP, the forward tuple) and ist_rnat (backend -> client, the reply
 * tuple) share this key.
 */
struct ist_flow_key {
	struct ist_addr src;
	struct ist_addr dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ist_flow_value {
	__u32 backend_id;
	__u32 service_id;
};

/* ist_rnat value: what a reply's source is rewritten to. */
struct ist_rnat_value {
	struct ist_addr vip;
	__be16 port;
	__u16 pad;
	__u32 service_id;
};

/* ist_sock_rev: (socket cookie, backend) -> VIP, for replies to unconnected UDP sockets. */
struct ist_sock_key {
	__u64 cookie;
	struct ist_addr addr;
	__be16 port;
	__u8 pad[6];
};

/* ist_stats (per CPU): (service, reason) -> packets and bytes. Service 0: no service known. */
struct ist_stat_key {
	__u32 service_id;
	__u32 reason;
};

struct ist_stat_value {
	__u64 packets;
	__u64 bytes;
};

/* ist_config[0]. */
struct ist_config {
	/* Socket programs act only for sockets of this network namespace (0: every one). */
	__u64 netns_cookie;
};

/* ist_rr[service_id]: the service's round-robin position. */
struct ist_rr_value {
	__u64 next;
};

enum ist_reason {
	IST_FORWARD = 0,      /* a packet to a VIP translated to its backend */
	IST_REVERSE = 1,      /* a reply translated back to the VIP */
	IST_NEW_FLOW = 2,     /* a flow (or socket) given a backend */
	IST_RESELECT = 3,     /* a flow whose backend left the service, given a new one */
	IST_DROP_NO_PORT = 4, /* a VIP with no such port/protocol */
	IST_DROP_NO_BACKEND = 5, /* a service with no healthy backend */
	IST_DROP_ERROR = 6,   /* the maps disagree (slot or backend missing), or a rewrite failed */
	IST_SOCK_CONNECT = 7, /* a socket's destination translated (local processes) */
	IST_FRAGMENT = 8,     /* a non-first IPv4 fragment to a VIP: cannot be translated */
	IST_REASONS = 9,
};

#endif
