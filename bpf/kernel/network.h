/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * TCP connections: connect, failed connect, accept, close, retransmit, resets. tp_btf
 * sock/inet_sock_set_state, tcp/tcp_retransmit_skb, tcp/tcp_receive_reset,
 * tcp/tcp_send_reset. The owner of a socket is recorded in process context
 * (connect, listen) and reused in softirq.
 */
#ifndef __TAPIO_KERNEL_NETWORK_H
#define __TAPIO_KERNEL_NETWORK_H

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

static __always_inline void read_tuple(struct tapio_tuple *t, const struct sock *sk)
{
	t->family = sk->__sk_common.skc_family;
	t->sport = sk->__sk_common.skc_num;
	t->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	t->valid = 1;
	__builtin_memset(t->saddr, 0, sizeof(t->saddr));
	__builtin_memset(t->daddr, 0, sizeof(t->daddr));
	if (t->family == AF_INET) {
		bpf_probe_read_kernel(t->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_probe_read_kernel(t->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

/* floor(log2(v)) for v >= 1, 0 for v == 0, capped at the last RTT bucket. */
static __always_inline __u32 rtt_bucket(__u64 v)
{
	__u32 r = 0;

	if (v >= (1ULL << 16)) {
		v >>= 16;
		r += 16;
	}
	if (v >= (1ULL << 8)) {
		v >>= 8;
		r += 8;
	}
	if (v >= (1ULL << 4)) {
		v >>= 4;
		r += 4;
	}
	if (v >= (1ULL << 2)) {
		v >>= 2;
		r += 2;
	}
	if (v >= 2)
		r += 1;
	return r < TAPIO_FLOW_RTT_BUCKETS ? r : TAPIO_FLOW_RTT_BUCKETS - 1;
}

/* Add one TCP step of a socket with a known owner to its flow. */
static __always_inline void flow_account(const struct sock *sk, enum tapio_tcp_op op,
					 const struct tapio_sock_owner *owner,
					 const struct tapio_tuple *tuple)
{
	struct tapio_flow_key key = {};
	struct tapio_flow_stats *st;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u32 zero = 0;

	key.cgroup_id = owner->task.cgroup_id;
	__builtin_memcpy(key.addr, tuple->daddr, sizeof(key.addr));
	key.family = tuple->family;
	key.direction = owner->inbound ? TAPIO_FLOW_INBOUND : TAPIO_FLOW_OUTBOUND;
	key.port = owner->inbound ? tuple->sport : tuple->dport;
	key.protocol = IPPROTO_TCP;

	st = bpf_map_lookup_elem(&flows, &key);
	if (!st) {
		/* BPF_NOEXIST: if another CPU inserted it first, use theirs. */
		bpf_map_update_elem(&flows, &key, &empty_flow, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&flows, &key);
	}
	if (!st) {
		/* The map is full: this step is lost, and counted. */
		__u64 *lost = bpf_map_lookup_elem(&flow_drops, &zero);

		if (lost)
			*lost += 1;
		return;
	}
	switch (op) {
	case TAPIO_TCP_CONNECT:
	case TAPIO_TCP_ACCEPT:
		__sync_fetch_and_add(&st->opened, 1);
		break;
	case TAPIO_TCP_CONNECT_FAILED:
		__sync_fetch_and_add(&st->failed, 1);
		break;
	case TAPIO_TCP_CLOSE: {
		__u64 sent = BPF_CORE_READ(tp, bytes_sent);
		__u64 received = BPF_CORE_READ(tp, bytes_received);
		__u32 b;

		if ((BPF_CORE_READ(sk, __sk_common.skc_flags) >> SOCK_DONE) & 1 && received)
			received -= 1;
		__sync_fetch_and_add(&st->closed, 1);
		__sync_fetch_and_add(&st->bytes_sent, sent);
		__sync_fetch_and_add(&st->bytes_received, received);
		b = rtt_bucket(BPF_CORE_READ(tp, srtt_us) >> 3);
		__sync_fetch_and_add(&st->rtt_log2_us[b], 1);
		break;
	}
	case TAPIO_TCP_RETRANSMIT:
		__sync_fetch_and_add(&st->retransmits, 1);
		break;
	case TAPIO_TCP_RESET_RECEIVED:
		__sync_fetch_and_add(&st->resets_received, 1);
		break;
	case TAPIO_TCP_RESET_SENT:
		__sync_fetch_and_add(&st->resets_sent, 1);
		break;
	default:
		break;
	}
}

static __always_inline void emit_tcp_record(const struct sock *sk, enum tapio_tcp_op op,
					    struct tapio_sock_owner *owner)
{
	struct tapio_tcp_event *e;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct tapio_tuple tuple;
	__u64 cg = owner ? owner->task.cgroup_id : 0;

	if (!admit(cg, TAPIO_KIND_TCP, op))
		return;
	e = tapio_reserve(sizeof(*e));
	if (!e)
		return;
	fill_hdr(&e->hdr, TAPIO_KIND_TCP);
	if (owner) {
		e->task = owner->task;
		e->duration_ns = bpf_ktime_get_boot_ns() - owner->start_ns;
	} else {
		__builtin_memset(&e->task, 0, sizeof(e->task));
		e->duration_ns = 0;
	}
	if (owner && owner->tuple.valid)
		tuple = owner->tuple;
	else
		read_tuple(&tuple, sk);
	e->owner_known = owner != NULL;
	e->op = op;
	e->_pad = 0;
	e->family = tuple.family;
	e->sport = tuple.sport;
	e->dport = tuple.dport;
	__builtin_memcpy(e->saddr, tuple.saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, tuple.daddr, sizeof(e->daddr));
	/* Data octets only: bytes_acked would also count SYN and FIN, and
	 * bytes_received counts a received FIN (flagged by SOCK_DONE). */
	e->bytes_sent = BPF_CORE_READ(tp, bytes_sent);
	e->bytes_received = BPF_CORE_READ(tp, bytes_received);
	if ((BPF_CORE_READ(sk, __sk_common.skc_flags) >> SOCK_DONE) & 1 && e->bytes_received)
		e->bytes_received -= 1;
	e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	e->retransmits = BPF_CORE_READ(tp, total_retrans);
	tapio_submit(e, sizeof(*e));
}

/* One TCP step of a socket: a record, a flow update, or both (cfg_network_mode).
 * Flows need the owner: its cgroup is the flow's. */
static __always_inline void emit_tcp(const struct sock *sk, enum tapio_tcp_op op,
				     struct tapio_sock_owner *owner)
{
	if ((cfg_network_mode & TAPIO_NETWORK_FLOWS) && owner) {
		struct tapio_tuple tuple;

		if (owner->tuple.valid)
			tuple = owner->tuple;
		else
			read_tuple(&tuple, sk);
		flow_account(sk, op, owner, &tuple);
	}
	if (cfg_network_mode & TAPIO_NETWORK_EVENTS)
		emit_tcp_record(sk, op, owner);
}

static __always_inline struct tapio_listener_key listener_key(const struct sock *sk, __u16 family)
{
	struct tapio_listener_key key = {
		.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum),
		.family = family,
		.port = sk->__sk_common.skc_num,
	};

	return key;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tapio_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	struct tapio_sock_owner owner = {}, *known;
	__u16 family = sk->__sk_common.skc_family;
	__u16 proto = sk->sk_protocol;

	if (proto != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
		return 0;

	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) {
		/* Process context (connect(), listen()): remember the owner. */
		if (filtered_out())
			return 0;
		fill_task(&owner.task);
		owner.start_ns = bpf_ktime_get_boot_ns();
		if (newstate == TCP_SYN_SENT) {
			bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
		} else {
			struct tapio_listener_key lk = listener_key(sk, family);

			bpf_map_update_elem(&listeners, &lk, &owner.task, BPF_ANY);
		}
		return 0;
	}
	if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		struct tapio_listener_key lk = listener_key(sk, family);

		bpf_map_delete_elem(&listeners, &lk);
		return 0;
	}
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_SENT) {
		known = bpf_map_lookup_elem(&sock_owners, &key);
		if (known) {
			read_tuple(&known->tuple, sk);
			emit_tcp(sk, TAPIO_TCP_CONNECT, known);
		}
		return 0;
	}
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV) {
		/* Softirq: attribute to the process that listens on the port. */
		struct tapio_listener_key lk = listener_key(sk, family);
		struct tapio_task *listener = bpf_map_lookup_elem(&listeners, &lk);

		if (!listener)
			return 0;
		owner.task = *listener;
		owner.start_ns = bpf_ktime_get_boot_ns();
		owner.inbound = 1;
		read_tuple(&owner.tuple, sk);
		bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
		emit_tcp(sk, TAPIO_TCP_ACCEPT, &owner);
		return 0;
	}
	if (newstate == TCP_CLOSE) {
		known = bpf_map_lookup_elem(&sock_owners, &key);
		if (known) {
			/* A connect that never was established ended (refused,
			 * timed out, unreachable, aborted): reported as a failed
			 * connect, not a close. */
			emit_tcp(sk, oldstate == TCP_SYN_SENT ? TAPIO_TCP_CONNECT_FAILED
							       : TAPIO_TCP_CLOSE,
				 known);
			bpf_map_delete_elem(&sock_owners, &key);
		}
	}
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tapio_tcp_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	__u64 key = (__u64)sk;
	struct tapio_sock_owner *known = bpf_map_lookup_elem(&sock_owners, &key);

	if (known)
		emit_tcp(sk, TAPIO_TCP_RETRANSMIT, known);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tapio_tcp_receive_reset, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct tapio_sock_owner *known = bpf_map_lookup_elem(&sock_owners, &key);

	if (known)
		emit_tcp(sk, TAPIO_TCP_RESET_RECEIVED, known);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tapio_tcp_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	__u64 key = (__u64)sk;
	struct tapio_sock_owner *known;

	if (!sk)
		return 0;
	known = bpf_map_lookup_elem(&sock_owners, &key);
	if (known)
		emit_tcp(sk, TAPIO_TCP_RESET_SENT, known);
	return 0;
}

#endif /* __TAPIO_KERNEL_NETWORK_H */
