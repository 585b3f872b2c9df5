// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Clusterset VIPs for pods and local processes.
 *
 * ist_from_pod (tc ingress on the host side of a pod's veth): a TCP/UDP packet to a
 * VIP:port gets a backend (the flow's, or a new one from the service's slot table) and its
 * destination rewritten; a VIP with no such port, or a service with no backend, is dropped and
 * counted. ist_to_pod (tc egress there): a reply from a backend gets its source rewritten
 * back to the VIP:port. ist_connect4/6, ist_sendmsg4/6, ist_recvmsg4/6 (cgroup socket hooks) do
 * the same for processes of the agent's own network namespace at the socket, so their packets
 * carry the backend's address from the start.
 *
 * Policy lives in the route agent: it expands each service's backends into a slot table (by
 * weight) that these programs walk round-robin, and it replaces a table by writing a new one
 * and then the service entry that names it, so a service never points at a half-written set.
 * Everything else passes untouched.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "isthmus.h"

/* The loader sets every size from the agent's capacity flags; these are placeholders. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct ist_svc_key);
	__type(value, struct ist_svc_value);
} ist_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct ist_vip_key);
	__type(value, struct ist_vip_value);
} ist_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ist_slot_key);
	__type(value, struct ist_slot_value);
} ist_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct ist_backend_key);
	__type(value, struct ist_backend_value);
} ist_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ist_flow_key);
	__type(value, struct ist_flow_value);
} ist_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ist_flow_key);
	__type(value, struct ist_rnat_value);
} ist_rnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ist_sock_key);
	__type(value, struct ist_rnat_value);
} ist_sock_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1025);
	__type(key, __u32);
	__type(value, struct ist_rr_value);
} ist_rr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 9225);
	__type(key, struct ist_stat_key);
	__type(value, struct ist_stat_value);
} ist_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ist_config);
} ist_config SEC(".maps");

enum verdict {
	PASS,
	DROP,
};

/* A TCP or UDP packet as parsed off the wire; tuple is in the packet's own direction. */
struct packet {
	struct ist_flow_key tuple;
	__u32 l4_off;
	__u32 csum_off;
	__u64 csum_flags; /* BPF_F_MARK_MANGLED_0 for UDP: a zero checksum stays zero */
	__u8 v6;
	__u8 fragment;
	__u8 syn; /* a TCP SYN without ACK: a connection opening on this tuple */
};

#define IP4_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP4_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP4_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP6_SRC_OFF (ETH_HLEN + offsetof(struct ipv6hdr, saddr))
#define IP6_DST_OFF (ETH_HLEN + offsetof(struct ipv6hdr, daddr))
/* Both TCP and UDP carry the source port first, then the destination port. */
#define L4_SPORT 0
#define L4_DPORT 2
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* The start of a TCP header up to its flags byte; UDP's ports are its first 4 bytes. */
struct l4_head {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;
	__u8 flags;
};

static __always_inline void addr_from_v4(struct ist_addr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = v4;
}

static __always_inline int addr_is_v4(const struct ist_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void count(__u32 service_id, __u32 reason, __u64 bytes)
{
	struct ist_stat_key k = { .service_id = service_id, .reason = reason };
	struct ist_stat_value *v = bpf_map_lookup_elem(&ist_stats, &k);

	if (!v) {
		struct ist_stat_value zero = {};

		/* A full map only loses this count; the packet's fate does not depend on it. */
		bpf_map_update_elem(&ist_stats, &k, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&ist_stats, &k);
		if (!v)
			return;
	}
	v->packets += 1;
	v->bytes += bytes;
}

/*
 * The next backend of svc in round-robin order over its slot table, or NULL if the tables
 * disagree (a table replaced between reading the service and its slot).
 */
static __always_inline struct ist_backend_value *choose(__u32 service_id, __u32 selection,
							__u32 slots, __u32 *backend_id)
{
	struct ist_rr_value *rr = bpf_map_lookup_elem(&ist_rr, &service_id);
	struct ist_slot_value *slot;
	struct ist_slot_key sk = {};
	__u64 n;

	if (!rr || slots == 0)
		return NULL;
	n = __sync_fetch_and_add(&rr->next, 1);
	sk.selection = selection;
	sk.index = (__u32)(n % slots);
	slot = bpf_map_lookup_elem(&ist_slots, &sk);
	if (!slot)
		return NULL;
	*backend_id = slot->backend_id;
	return bpf_map_lookup_elem(&ist_backends, backend_id);
}

/* 0: a TCP or UDP packet in p; 1: something else (passes). */
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	__u8 proto;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u32 ihl;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return 1;
		ihl = (__u32)ip.ihl * 4;
		if (ip.version != 4 || ihl < sizeof(ip))
			return 1;
		proto = ip.protocol;
		addr_from_v4(&p->tuple.src, ip.saddr);
		addr_from_v4(&p->tuple.dst, ip.daddr);
		p->l4_off = ETH_HLEN + ihl;
		/* MF set or a fragment offset: later fragments carry no ports. */
		p->fragment = (ip.frag_off & bpf_htons(0x3fff)) != 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return 1;
		if (ip6.version != 6)
			return 1;
		/* Extension headers are not walked: such packets pass untranslated. */
		proto = ip6.nexthdr;
		__builtin_memcpy(&p->tuple.src, &ip6.saddr, sizeof(p->tuple.src));
		__builtin_memcpy(&p->tuple.dst, &ip6.daddr, sizeof(p->tuple.dst));
		p->l4_off = ETH_HLEN + sizeof(ip6);
		p->v6 = 1;
	} else {
		return 1;
	}
	if (proto == IPPROTO_TCP) {
		p->csum_off = p->l4_off + offsetof(struct tcphdr, check);
		p->csum_flags = 0;
	} else if (proto == IPPROTO_UDP) {
		p->csum_off = p->l4_off + offsetof(struct udphdr, check);
		p->csum_flags = BPF_F_MARK_MANGLED_0;
	} else {
		return 1;
	}
	p->tuple.proto = proto;
	if (p->fragment)
		return 0;
	if (proto == IPPROTO_TCP) {
		struct l4_head h;

		if (bpf_skb_load_bytes(skb, p->l4_off, &h, sizeof(h)))
			return 1;
		p->tuple.sport = h.sport;
		p->tuple.dport = h.dport;
		p->syn = (h.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	} else {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
			return 1;
		p->tuple.sport = ports[0];
		p->tuple.dport = ports[1];
	}
	return 0;
}

/* The ist_rnat key of replies to p: p's tuple with source and destination swapped. */
static __always_inline void reply_key(const struct packet *p, const struct ist_addr *be_addr,
				      __be16 be_port, struct ist_flow_key *reply)
{
	reply->src = *be_addr;
	reply->dst = p->tuple.src;
	reply->sport = be_port;
	reply->dport = p->tuple.sport;
	reply->proto = p->tuple.proto;
}

/* Whether ist_rnat already translates replies of p's flow from (be_addr, be_port) back. */
static __always_inline int reply_is(const struct packet *p, const struct ist_addr *be_addr,
				    __be16 be_port, __u32 service_id)
{
	struct ist_flow_key reply = {};
	struct ist_rnat_value *back;

	reply_key(p, be_addr, be_port, &reply);
	back = bpf_map_lookup_elem(&ist_rnat, &reply);
	return back && back->port == p->tuple.dport && back->service_id == service_id &&
	       back->vip.w[0] == p->tuple.dst.w[0] && back->vip.w[1] == p->tuple.dst.w[1] &&
	       back->vip.w[2] == p->tuple.dst.w[2] && back->vip.w[3] == p->tuple.dst.w[3];
}

/* Writes the reply translation of p's flow to (be_addr, be_port); 0 on success. */
static __always_inline int remember_reply(const struct packet *p, const struct ist_addr *be_addr,
					  __be16 be_port, __u32 service_id)
{
	struct ist_flow_key reply = {};
	struct ist_rnat_value back = {};

	reply_key(p, be_addr, be_port, &reply);
	back.vip = p->tuple.dst;
	back.port = p->tuple.dport;
	back.service_id = service_id;
	return bpf_map_update_elem(&ist_rnat, &reply, &back, BPF_ANY) ? -1 : 0;
}

/* Rewrites the address at addr_off (source or destination) and the port at port_off. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct packet *p,
				   const struct ist_addr *from, const struct ist_addr *to,
				   __u32 addr_off_v4, __u32 addr_off_v6, __be16 from_port,
				   __be16 to_port, __u32 port_off)
{
	if (!p->v6) {
		__be32 old = from->w[3];
		__be32 new = to->w[3];

		if (old != new) {
			if (bpf_l4_csum_replace(skb, p->csum_off, old, new,
						BPF_F_PSEUDO_HDR | p->csum_flags | sizeof(new)))
				return -1;
			if (bpf_l3_csum_replace(skb, IP4_CSUM_OFF, old, new, sizeof(new)))
				return -1;
			if (bpf_skb_store_bytes(skb, addr_off_v4, &new, sizeof(new), 0))
				return -1;
		}
	} else {
		struct ist_addr old = *from;
		struct ist_addr new = *to;
		__s64 diff = bpf_csum_diff(old.w, sizeof(old), new.w, sizeof(new), 0);

		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, p->csum_off, 0, diff, BPF_F_PSEUDO_HDR | p->csum_flags))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off_v6, &new, sizeof(new), 0))
			return -1;
	}
	if (from_port != to_port) {
		if (bpf_l4_csum_replace(skb, p->csum_off, from_port, to_port,
					p->csum_flags | sizeof(to_port)))
			return -1;
		if (bpf_skb_store_bytes(skb, p->l4_off + port_off, &to_port, sizeof(to_port), 0))
			return -1;
	}
	return 0;
}

static __always_inline enum verdict from_pod(struct __sk_buff *skb)
{
	struct packet p = {};
	struct ist_svc_key key = {};
	struct ist_vip_value *vip;
	struct ist_svc_value *svc;
	struct ist_flow_value *flow;
	struct ist_backend_value *be = NULL;
	struct ist_addr be_addr;
	__u32 service_id, selection, slots, backend_id = 0;
	__be16 be_port;
	int reselect = 0;

	if (parse(skb, &p))
		return PASS;
	/* Most packets are not to a VIP: one lookup tells, before anything else is read. */
	vip = bpf_map_lookup_elem(&ist_vips, &p.tuple.dst);
	if (!vip) {
		/*
		 * A connection straight to an address that once served this pod through a VIP,
		 * from the same port: the LRU may still hold that flow's reply entry, which would
		 * rewrite this connection's replies to the VIP. It is dead (the pod reuses the
		 * tuple), so forget it.
		 */
		if (p.syn) {
			struct ist_flow_key reply = {};

			reply_key(&p, &p.tuple.dst, p.tuple.dport, &reply);
			/* Looked up first: a delete locks its bucket even when there is nothing. */
			if (bpf_map_lookup_elem(&ist_rnat, &reply))
				bpf_map_delete_elem(&ist_rnat, &reply);
		}
		return PASS;
	}
	if (p.fragment) {
		count(vip->service_id, IST_FRAGMENT, skb->len);
		return DROP;
	}
	key.vip = p.tuple.dst;
	key.port = p.tuple.dport;
	key.proto = p.tuple.proto;
	svc = bpf_map_lookup_elem(&ist_services, &key);
	if (!svc) {
		count(vip->service_id, IST_DROP_NO_PORT, skb->len);
		return DROP;
	}
	service_id = svc->service_id;
	selection = svc->selection;
	slots = svc->count;
	if (slots == 0) {
		count(service_id, IST_DROP_NO_BACKEND, skb->len);
		return DROP;
	}

	flow = bpf_map_lookup_elem(&ist_flows, &p.tuple);
	if (flow && flow->service_id == service_id) {
		backend_id = flow->backend_id;
		be = bpf_map_lookup_elem(&ist_backends, &backend_id);
		/* Its backend left the service (its cluster failed): choose again now. */
		reselect = be == NULL;
	}
	if (!be) {
		struct ist_flow_value fresh = {};

		be = choose(service_id, selection, slots, &backend_id);
		if (!be || be->service_id != service_id || addr_is_v4(&be->addr) == p.v6) {
			count(service_id, IST_DROP_ERROR, skb->len);
			return DROP;
		}
		fresh.backend_id = backend_id;
		fresh.service_id = service_id;
		be_addr = be->addr;
		be_port = be->port ? be->port : p.tuple.dport;
		/* The reply entry first: a reply can never beat the packet that causes it. */
		if (remember_reply(&p, &be_addr, be_port, service_id) ||
		    bpf_map_update_elem(&ist_flows, &p.tuple, &fresh, BPF_ANY)) {
			count(service_id, IST_DROP_ERROR, skb->len);
			return DROP;
		}
		count(service_id, reselect ? IST_RESELECT : IST_NEW_FLOW, 0);
	} else {
		be_addr = be->addr;
		be_port = be->port ? be->port : p.tuple.dport;
		/*
		 * A new connection on the tuple of an old one keeps its backend, but the two LRU
		 * maps evict independently: the old reply entry may be gone (or have been
		 * forgotten above). Write it again if so (only then: an LRU update is costly).
		 */
		if (p.syn && !reply_is(&p, &be_addr, be_port, service_id) &&
		    remember_reply(&p, &be_addr, be_port, service_id)) {
			count(service_id, IST_DROP_ERROR, skb->len);
			return DROP;
		}
	}

	if (rewrite(skb, &p, &p.tuple.dst, &be_addr, IP4_DST_OFF, IP6_DST_OFF, p.tuple.dport,
		    be_port, L4_DPORT)) {
		count(service_id, IST_DROP_ERROR, skb->len);
		return DROP;
	}
	count(service_id, IST_FORWARD, skb->len);
	return PASS;
}

static __always_inline enum verdict to_pod(struct __sk_buff *skb)
{
	struct packet p = {};
	struct ist_rnat_value *back;
	struct ist_addr vip;
	__be16 port;
	__u32 service_id;

	if (parse(skb, &p) || p.fragment)
		return PASS;
	back = bpf_map_lookup_elem(&ist_rnat, &p.tuple);
	if (!back)
		return PASS;
	vip = back->vip;
	port = back->port;
	service_id = back->service_id;
	if (rewrite(skb, &p, &p.tuple.src, &vip, IP4_SRC_OFF, IP6_SRC_OFF, p.tuple.sport, port,
		    L4_SPORT)) {
		count(service_id, IST_DROP_ERROR, skb->len);
		return DROP;
	}
	count(service_id, IST_REVERSE, skb->len);
	return PASS;
}

SEC("classifier")
int ist_from_pod(struct __sk_buff *skb)
{
	return from_pod(skb) == PASS ? TC_ACT_OK : TC_ACT_SHOT;
}

SEC("classifier")
int ist_to_pod(struct __sk_buff *skb)
{
	return to_pod(skb) == PASS ? TC_ACT_OK : TC_ACT_SHOT;
}

/* --- Socket hooks: processes of the agent's own network namespace. --- */

/* Socket verdicts: 1 lets the call go on, 0 fails it with EPERM. */
#define SOCK_ALLOW 1
#define SOCK_REFUSE 0

static __always_inline int netns_ours(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct ist_config *c = bpf_map_lookup_elem(&ist_config, &zero);

	if (!c || c->netns_cookie == 0)
		return 0;
	return bpf_get_netns_cookie(ctx) == c->netns_cookie;
}

static __always_inline void read_user_addr(struct bpf_sock_addr *ctx, int v6, struct ist_addr *a)
{
	if (!v6) {
		addr_from_v4(a, ctx->user_ip4);
	} else {
		a->w[0] = ctx->user_ip6[0];
		a->w[1] = ctx->user_ip6[1];
		a->w[2] = ctx->user_ip6[2];
		a->w[3] = ctx->user_ip6[3];
	}
}

static __always_inline void write_user_addr(struct bpf_sock_addr *ctx, int v6,
					    const struct ist_addr *a, __be16 port)
{
	if (!v6) {
		ctx->user_ip4 = a->w[3];
	} else {
		ctx->user_ip6[0] = a->w[0];
		ctx->user_ip6[1] = a->w[1];
		ctx->user_ip6[2] = a->w[2];
		ctx->user_ip6[3] = a->w[3];
	}
	ctx->user_port = port;
}

/* connect() and sendmsg(): a VIP destination becomes a backend's. */
static __always_inline int sock_forward(struct bpf_sock_addr *ctx, int v6)
{
	struct ist_svc_key key = {};
	struct ist_svc_value *svc;
	struct ist_backend_value *be;
	struct ist_addr be_addr;
	__u32 service_id, backend_id = 0;
	__be16 vip_port, be_port;
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SOCK_ALLOW;
	if (!netns_ours(ctx))
		return SOCK_ALLOW;
	read_user_addr(ctx, v6, &key.vip);
	vip_port = (__be16)ctx->user_port;
	key.port = vip_port;
	key.proto = (__u8)proto;
	svc = bpf_map_lookup_elem(&ist_services, &key);
	if (!svc) {
		struct ist_vip_value *vip = bpf_map_lookup_elem(&ist_vips, &key.vip);

		if (!vip)
			return SOCK_ALLOW;
		count(vip->service_id, IST_DROP_NO_PORT, 0);
		return SOCK_REFUSE;
	}
	service_id = svc->service_id;
	if (svc->count == 0) {
		count(service_id, IST_DROP_NO_BACKEND, 0);
		return SOCK_REFUSE;
	}
	be = choose(service_id, svc->selection, svc->count, &backend_id);
	if (!be || be->service_id != service_id || addr_is_v4(&be->addr) == v6) {
		count(service_id, IST_DROP_ERROR, 0);
		return SOCK_REFUSE;
	}
	be_addr = be->addr;
	be_port = be->port ? be->port : vip_port;
	if (proto == IPPROTO_UDP) {
		struct ist_sock_key sk = {};
		struct ist_rnat_value back = {};

		sk.cookie = bpf_get_socket_cookie(ctx);
		sk.addr = be_addr;
		sk.port = be_port;
		back.vip = key.vip;
		back.port = vip_port;
		back.service_id = service_id;
		if (bpf_map_update_elem(&ist_sock_rev, &sk, &back, BPF_ANY)) {
			count(service_id, IST_DROP_ERROR, 0);
			return SOCK_REFUSE;
		}
	}
	write_user_addr(ctx, v6, &be_addr, be_port);
	count(service_id, IST_SOCK_CONNECT, 0);
	return SOCK_ALLOW;
}

/* recvmsg() on a UDP socket: a backend's answer shows the VIP as its source. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx, int v6)
{
	struct ist_sock_key sk = {};
	struct ist_rnat_value *back;

	if (!netns_ours(ctx))
		return SOCK_ALLOW;
	sk.cookie = bpf_get_socket_cookie(ctx);
	read_user_addr(ctx, v6, &sk.addr);
	sk.port = (__be16)ctx->user_port;
	back = bpf_map_lookup_elem(&ist_sock_rev, &sk);
	if (!back)
		return SOCK_ALLOW;
	write_user_addr(ctx, v6, &back->vip, back->port);
	count(back->service_id, IST_REVERSE, 0);
	return SOCK_ALLOW;
}

SEC("cgroup/connect4")
int ist_connect4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, 0);
}

SEC("cgroup/connect6")
int ist_connect6(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, 1);
}

SEC("cgroup/sendmsg4")
int ist_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, 0);
}

SEC("cgroup/sendmsg6")
int ist_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, 1);
}

SEC("cgroup/recvmsg4")
int ist_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 0);
}

SEC("cgroup/recvmsg6")
int ist_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
