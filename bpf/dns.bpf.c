// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tapio DNS collector: DNS packets seen by the sockets of every local process.
 *
 * Two cgroup_skb programs (ingress and egress) are attached to the cgroup v2
 * root, so they run for every packet of every socket on the host, in every
 * network namespace. They only observe: both ALWAYS return 1 (allow), never
 * modify the packet, and copy at most `capture_len` bytes of the UDP/TCP
 * payload of packets whose DNS-side port is in `dns_port_bits` into the shared
 * ring buffer. Parsing and matching happen in userspace.
 *
 * A record is built in a per-CPU scratch buffer and copied into the ring
 * with tapio_output() (tapio/common.h): only the captured bytes take ring
 * space, with the shared drop counting and wake-up policy
 * (`tapio_wakeup_bytes`, `tapio_wakeup_delay_ns`).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "tapio/common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Record kind and version: the single source of truth, read by the Rust
 * decoder from the skeleton's `types` (both enums are referenced by
 * `tapio_dns_abi`, so they are in the object's BTF). Changing the record's
 * layout means bumping TAPIO_DNS_VERSION.
 */
/* Layout version of the record (`tapio_hdr.version`). */
enum tapio_dns_version { TAPIO_DNS_VERSION = 1 };

/* `tapio_hdr.kind`. */
enum tapio_dns_kind { TAPIO_DNS_KIND_PACKET = 1 };

/* Largest payload prefix a record can carry (power of two). */
#define TAPIO_DNS_MAX_CAPTURE 1024

#define TAPIO_ETH_P_IP 0x0800
#define TAPIO_ETH_P_IPV6 0x86DD
#define TAPIO_IPPROTO_TCP 6
#define TAPIO_IPPROTO_UDP 17

#define TAPIO_DIR_EGRESS 0
#define TAPIO_DIR_INGRESS 1

/* Record layout, mirrored by `DnsPacketRecord` in src/record.rs. */
struct tapio_dns_pkt {
	struct tapio_hdr hdr;
	__u64 sock_cookie; /* bpf_get_socket_cookie: unique per socket, 0 if none */
	__u64 cgroup_id;   /* cgroup v2 id of the socket's owner */
	__u32 pid;         /* tgid of the sender on egress (process context), else 0 */
	__u32 payload_len; /* full L4 payload length of the packet */
	__u8 saddr[16];    /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport; /* host byte order */
	__u16 dport;
	__u8 family;    /* 4 or 6 */
	__u8 proto;     /* 6 TCP, 17 UDP */
	__u8 direction; /* 0 egress, 1 ingress */
	__u8 _pad;
	__u32 cap_len; /* bytes of payload in data[] */
	__u32 _pad2;
	__u8 data[TAPIO_DNS_MAX_CAPTURE];
};

/* Referenced so that libbpf-cargo emits the record layout into the skeleton's types. */
struct tapio_dns_pkt tapio_dns_pkt_layout = {};

/* The ABI anchor: puts every enum userspace decodes with into the BTF. Never read. */
struct tapio_dns_abi {
	enum tapio_dns_version version;
	enum tapio_dns_kind kind;
} tapio_dns_abi = {};

/* Set by userspace before load. */
const volatile __u32 capture_len = 512;
const volatile __u8 observe_client = 1; /* queries sent and responses received locally */
const volatile __u8 observe_server = 0; /* queries received and responses sent locally */
/* Bitmap of DNS server ports (65536 bits). */
const volatile __u64 dns_port_bits[1024] = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tapio_dns_pkt);
} tapio_dns_scratch SEC(".maps");

static __always_inline int is_dns_port(__u16 port)
{
	return (dns_port_bits[(port >> 6) & 1023] >> (port & 63)) & 1;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 zero = 0, l4off, l4hdr, len;
	__u64 n;
	__u8 proto, family;
	__u16 ports[2], sport, dport;
	struct tapio_dns_pkt *e;

	if (skb->protocol == bpf_htons(TAPIO_ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return 1;
		/* Fragments never reach cgroup hooks; skip defensively. */
		if (ip.frag_off & bpf_htons(0x3fff))
			return 1;
		proto = ip.protocol;
		l4off = ip.ihl * 4;
		family = 4;
	} else if (skb->protocol == bpf_htons(TAPIO_ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return 1;
		/* Extension headers are not followed: DNS stubs and servers do not send them. */
		proto = ip6.nexthdr;
		l4off = sizeof(ip6);
		family = 6;
	} else {
		return 1;
	}
	if (proto != TAPIO_IPPROTO_UDP && proto != TAPIO_IPPROTO_TCP)
		return 1;
	if (l4off < 20 || l4off > 60 + 40)
		return 1;
	if (bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)))
		return 1;
	sport = bpf_ntohs(ports[0]);
	dport = bpf_ntohs(ports[1]);

	/* The remote end is the DNS server (client side) or the local end is (server side). */
	{
		__u16 remote = dir == TAPIO_DIR_EGRESS ? dport : sport;
		__u16 local = dir == TAPIO_DIR_EGRESS ? sport : dport;

		if (!((observe_client && is_dns_port(remote)) || (observe_server && is_dns_port(local))))
			return 1;
	}

	if (proto == TAPIO_IPPROTO_TCP) {
		__u8 off_byte;

		if (bpf_skb_load_bytes(skb, l4off + 12, &off_byte, 1))
			return 1;
		l4hdr = (off_byte >> 4) * 4;
		if (l4hdr < 20)
			return 1;
	} else {
		l4hdr = 8;
	}
	if (skb->len <= l4off + l4hdr)
		return 1; /* no payload: TCP handshake, ACK, FIN */
	len = skb->len - l4off - l4hdr;

	e = bpf_map_lookup_elem(&tapio_dns_scratch, &zero);
	if (!e)
		return 1;
	tapio_fill_hdr(&e->hdr, TAPIO_DNS_KIND_PACKET, TAPIO_DNS_VERSION);
	e->sock_cookie = bpf_get_socket_cookie(skb);
	e->cgroup_id = bpf_skb_cgroup_id(skb);
	e->pid = dir == TAPIO_DIR_EGRESS ? bpf_get_current_pid_tgid() >> 32 : 0;
	e->payload_len = len;
	e->sport = sport;
	e->dport = dport;
	e->family = family;
	e->proto = proto;
	e->direction = dir;
	e->_pad = 0;
	e->_pad2 = 0;
	if (family == 4) {
		__builtin_memset(e->saddr, 0, sizeof(e->saddr));
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		bpf_skb_load_bytes(skb, 12, e->saddr, 4);
		bpf_skb_load_bytes(skb, 16, e->daddr, 4);
	} else {
		bpf_skb_load_bytes(skb, 8, e->saddr, 16);
		bpf_skb_load_bytes(skb, 24, e->daddr, 16);
	}

	n = len < capture_len ? len : capture_len;
	/* Keep the bounds check below on the 64-bit register passed as length. */
	asm volatile("" : "+r"(n));
	if (n == 0 || n > TAPIO_DNS_MAX_CAPTURE)
		return 1;
	if (bpf_skb_load_bytes(skb, l4off + l4hdr, e->data, n))
		return 1;
	e->cap_len = n;

	/* Only the captured bytes go into the ring. */
	tapio_output(e, offsetof(struct tapio_dns_pkt, data) + n);
	return 1;
}

/* Observe only: both programs always allow the packet. */
SEC("cgroup_skb/egress")
int tapio_dns_egress(struct __sk_buff *skb)
{
	handle(skb, TAPIO_DIR_EGRESS);
	return 1;
}

SEC("cgroup_skb/ingress")
int tapio_dns_ingress(struct __sk_buff *skb)
{
	handle(skb, TAPIO_DIR_INGRESS);
	return 1;
}
