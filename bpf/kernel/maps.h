/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Load-time configuration and maps of the kernel object (besides
 * `tapio_events` and `tapio_drops` from tapio/common.h).
 */
#ifndef __TAPIO_KERNEL_MAPS_H
#define __TAPIO_KERNEL_MAPS_H

/* ---- configuration, set by userspace before load ---- */
const volatile __u32 cfg_self_pid = 0;      /* the collector's own process: never reported */
const volatile __u32 cfg_filter_pid = 0;    /* 0: any */
const volatile __u64 cfg_filter_cgroup = 0; /* 0: any */
const volatile char cfg_filter_comm[COMM_LEN] = {};
const volatile __u32 cfg_args_len = 256;    /* argv bytes copied (<= ARGS_LEN) */
const volatile __u32 cfg_file_reads = 0;    /* report read-only opens too */
const volatile __u32 cfg_n_prefixes = 0;
const volatile char cfg_prefixes[TAPIO_MAX_PREFIXES][TAPIO_PREFIX_LEN] = {};
const volatile __u32 cfg_prefix_lens[TAPIO_MAX_PREFIXES] = {};
const volatile __u64 cfg_rate_per_sec = 0;  /* per-cgroup events/s, 0: unlimited */
const volatile __u64 cfg_rate_burst = 0;
const volatile __u64 cfg_rss_step_bytes = 64 << 20;
const volatile __u64 cfg_page_size = 4096;
const volatile __u32 cfg_network_mode = TAPIO_NETWORK_EVENTS; /* enum tapio_network_mode bits */
const volatile __u32 cfg_shed = 0;            /* shed high-volume kinds to summaries */
const volatile __u64 cfg_shed_watermark = 0;  /* ring bytes unread past which to shed; 0: never */

/* ---- network: socket owners ---- */
/* A connection's 4-tuple, captured while established: at TCP_CLOSE the
 * kernel has already released the local port (inet_put_port). */
struct tapio_tuple {
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 valid;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct tapio_sock_owner {
	struct tapio_task task;
	__u64 start_ns;
	struct tapio_tuple tuple;
	__u32 inbound; /* accepted, not connected */
	__u32 _pad;
};

/* socket -> owning process, recorded in process context (connect, listen). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tapio_sock_owner);
} sock_owners SEC(".maps");

/*
 * Listening socket -> owner, for accepts in softirq, keyed by the network
 * namespace, family and local port an accepted socket shares with its
 * listener: on a Kubernetes node many pods listen on the same port, each in
 * its own namespace.
 */
struct tapio_listener_key {
	__u32 netns; /* inode number of the socket's network namespace */
	__u16 family;
	__u16 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tapio_listener_key);
	__type(value, struct tapio_task);
} listeners SEC(".maps");

/* ---- network: flow summaries (network mode "flows"), drained by userspace ---- */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* resized by userspace before load */
	__type(key, struct tapio_flow_key);
	__type(value, struct tapio_flow_stats);
} flows SEC(".maps");

/* A flow's first value (read-only data: too large for the BPF stack). */
static const struct tapio_flow_stats empty_flow = {};

/* Flow updates lost because `flows` was full (one per-CPU slot). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} flow_drops SEC(".maps");

/* ---- load shedding: observations counted instead of reported, drained by userspace ---- */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tapio_summary_key);
	__type(value, __u64);
} summaries SEC(".maps");

static const __u64 zero_count = 0;

/* ---- syscalls in flight (enter stashed the arguments; exit emits with the result) ---- */
struct tapio_pending {
	__u32 kind; /* enum tapio_kind */
	__u32 op;
	union {
		struct tapio_file_event file;
		struct tapio_cred_event cred;
		struct tapio_ptrace_event ptrace;
		struct tapio_bpf_event bpf;
		struct tapio_mount_event mount;
	};
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct tapio_pending);
} pendings SEC(".maps");

/* Per-CPU staging area for a pending syscall (too large for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tapio_pending);
} scratch SEC(".maps");

/* ---- memory ---- */
/* Last reported RSS per address space, for threshold-crossing events. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} rss_reported SEC(".maps");

/* ---- rate limiting: one token bucket per cgroup ---- */
struct tapio_bucket {
	__u64 tokens_milli; /* tokens * 1000 */
	__u64 last_ns;
	__u64 dropped;
	__u32 throttled;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tapio_bucket);
} buckets SEC(".maps");

#endif /* __TAPIO_KERNEL_MAPS_H */
