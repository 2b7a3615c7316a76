/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Records of the kernel object and the enums userspace decodes them with.
 *
 * This header is the single source of truth for record kinds, op codes, the
 * credential-syscall list and the record version: the Rust decoder
 * (crates/tapio-collector-kernel/src/record.rs) reads them from the
 * skeleton's `types` module, where libbpf-cargo emits every enum referenced
 * by `tapio_kernel_abi` below (`types::tapio_kind::TAPIO_KIND_EXEC`, ...).
 * The record structs reach the skeleton the same way; their layout is
 * checked by a test on the Rust side. Changing a record's layout means
 * bumping TAPIO_KERNEL_VERSION.
 */
#ifndef __TAPIO_KERNEL_RECORDS_H
#define __TAPIO_KERNEL_RECORDS_H

#define COMM_LEN 16
#define PATH_LEN 256
#define ARGS_LEN 1024
#define CGROUP_PATH_LEN 1024 /* the kernel's TRACE_CGROUP_PATH_LEN */
#define FSTYPE_LEN 32

/* Layout version of every record of this object (`tapio_hdr.version`). */
enum tapio_kernel_version { TAPIO_KERNEL_VERSION = 1 };

/* `tapio_hdr.kind`. */
enum tapio_kind {
	TAPIO_KIND_EXEC = 1,
	TAPIO_KIND_FORK = 2,
	TAPIO_KIND_EXIT = 3,
	TAPIO_KIND_TCP = 4,
	TAPIO_KIND_FILE = 5,
	TAPIO_KIND_CRED = 6,
	TAPIO_KIND_PTRACE = 7,
	TAPIO_KIND_BPF = 8,
	TAPIO_KIND_MOUNT = 9,
	TAPIO_KIND_OOM = 10,
	TAPIO_KIND_RSS = 11,
	TAPIO_KIND_THROTTLE = 12,
	TAPIO_KIND_CGROUP = 13,
};

/* `tapio_tcp_event.op`. */
enum tapio_tcp_op {
	TAPIO_TCP_CONNECT = 1,
	TAPIO_TCP_ACCEPT = 2,
	TAPIO_TCP_CLOSE = 3,
	TAPIO_TCP_RETRANSMIT = 4,
	TAPIO_TCP_RESET_RECEIVED = 5,
	TAPIO_TCP_RESET_SENT = 6,
	TAPIO_TCP_CONNECT_FAILED = 7,
};

/* `tapio_file_event.op`. */
enum tapio_file_op {
	TAPIO_FILE_OPEN = 1,
	TAPIO_FILE_UNLINK = 2,
	TAPIO_FILE_RENAME = 3,
	TAPIO_FILE_CHMOD = 4,
	TAPIO_FILE_CHOWN = 5,
};

/* `tapio_cred_event.syscall`: the credential syscalls that are traced. */
enum tapio_cred_syscall {
	TAPIO_CRED_SETUID = 0,
	TAPIO_CRED_SETGID = 1,
	TAPIO_CRED_SETREUID = 2,
	TAPIO_CRED_SETREGID = 3,
	TAPIO_CRED_SETRESUID = 4,
	TAPIO_CRED_SETRESGID = 5,
	TAPIO_CRED_CAPSET = 6,
};

/* `tapio_ptrace_event.request`: the ptrace requests that are traced (the
 * kernel's PTRACE_ATTACH and PTRACE_SEIZE, macros in uapi, not in BTF). */
enum tapio_ptrace_request {
	TAPIO_PTRACE_ATTACH = 16,
	TAPIO_PTRACE_SEIZE = 0x4206,
};

/* `tapio_mount_event.umount`. */
enum tapio_mount_op { TAPIO_MOUNT_MOUNT = 0, TAPIO_MOUNT_UMOUNT = 1 };

/* `tapio_throttle_event.start`. */
enum tapio_throttle_op { TAPIO_THROTTLE_STOP = 0, TAPIO_THROTTLE_START = 1 };

/* `tapio_cgroup_event.op`. */
enum tapio_cgroup_op { TAPIO_CGROUP_MKDIR = 1, TAPIO_CGROUP_RMDIR = 2 };

/* `tapio_flow_key.direction`. */
enum tapio_flow_direction { TAPIO_FLOW_OUTBOUND = 1, TAPIO_FLOW_INBOUND = 2 };

/* `cfg_network_mode` bits: per-connection records, in-kernel flow summaries. */
enum tapio_network_mode { TAPIO_NETWORK_EVENTS = 1, TAPIO_NETWORK_FLOWS = 2 };

/* RTT histogram buckets of a flow: bucket b counts closed connections whose
 * smoothed RTT in microseconds was in [2^b, 2^(b+1)) (bucket 0 also holds
 * 0 us, the last bucket everything above). */
#define TAPIO_FLOW_RTT_BUCKETS 24

/* ---- flows: not records, the key and value of the `flows` hash map ---- */

/* One flow: a cgroup's TCP traffic with one peer and service port, one way. */
struct tapio_flow_key {
	__u64 cgroup_id;
	__u8 addr[16];	 /* the peer's address (IPv4 in the first 4 bytes) */
	__u16 family;	 /* AF_INET or AF_INET6 */
	__u16 port;	 /* outbound: the peer's port; inbound: the local (listening) port */
	__u8 direction;	 /* enum tapio_flow_direction */
	__u8 protocol;	 /* IPPROTO_TCP */
	__u16 _pad;
};

/* What happened on a flow since userspace last drained it. Bytes and RTT of
 * a connection are added when it closes. */
struct tapio_flow_stats {
	__u64 opened;	      /* connections established */
	__u64 failed;	      /* connects that never were established */
	__u64 closed;	      /* established connections closed */
	__u64 bytes_sent;     /* data octets, of connections closed */
	__u64 bytes_received; /* data octets, of connections closed */
	__u64 retransmits;    /* segments retransmitted */
	__u64 resets_received;
	__u64 resets_sent;
	__u64 rtt_log2_us[TAPIO_FLOW_RTT_BUCKETS];
};

/* ---- shed observations: the key of the `summaries` hash map (value: a count) ---- */
struct tapio_summary_key {
	__u64 cgroup_id;
	__u16 kind; /* enum tapio_kind */
	__u16 op;   /* the kind's op code, 0 where it has none */
	__u32 _pad;
};

/* ---- records: every one starts with struct tapio_hdr ---- */

/* The process a record is about (the current task unless noted). */
struct tapio_task {
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 euid;
	__u64 cgroup_id;
	char comm[COMM_LEN];
};

struct tapio_exec_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u64 start_ns;
	__u32 secure_exec;
	__u32 args_len;
	__u32 args_truncated;
	__u32 _pad;
	char filename[PATH_LEN];
	char args[ARGS_LEN];
};

struct tapio_fork_event {
	struct tapio_hdr hdr;
	struct tapio_task task; /* the parent */
	__u32 child_pid;
	__u32 _pad;
	__u64 child_start_ns;
};

struct tapio_exit_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__s32 exit_code;
	__u32 signal;
	__u64 start_ns;
	__u64 max_rss_pages;
	__u64 min_flt;
	__u64 maj_flt;
};

struct tapio_tcp_event {
	struct tapio_hdr hdr;
	struct tapio_task task; /* owner (recorded in process context) */
	__u32 op;		/* enum tapio_tcp_op */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 _pad;
	__u32 srtt_us;
	__u8 saddr[16];
	__u8 daddr[16];
	__u64 bytes_sent;
	__u64 bytes_received;
	__u32 retransmits;
	__u32 owner_known;
	__u64 duration_ns;
};

struct tapio_file_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u32 op; /* enum tapio_file_op */
	__u32 flags;
	__u32 mode;
	__u32 uid_arg;
	__u32 gid_arg;
	__s32 ret;
	char path[PATH_LEN];
	char path2[PATH_LEN];
};

struct tapio_cred_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u32 syscall; /* enum tapio_cred_syscall */
	__s32 ret;
	__u32 old_uid, old_euid, old_suid, old_gid, old_egid, old_sgid;
	__u32 new_uid, new_euid, new_suid, new_gid, new_egid, new_sgid;
	__u64 old_cap_effective;
	__u64 new_cap_effective;
};

struct tapio_ptrace_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__s64 request; /* enum tapio_ptrace_request */
	__u32 target_pid;
	__s32 ret;
};

struct tapio_bpf_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u32 cmd; /* enum bpf_cmd */
	__s32 ret;
};

struct tapio_mount_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u32 umount; /* enum tapio_mount_op */
	__s32 ret;
	__u64 flags;
	char source[PATH_LEN];
	char target[PATH_LEN];
	char fstype[FSTYPE_LEN];
};

struct tapio_oom_event {
	struct tapio_hdr hdr;
	struct tapio_task task; /* the process that triggered the kill */
	__u32 victim_pid;
	__u32 victim_uid;
	__u64 victim_cgroup_id;
	__u64 total_vm_pages;
	__u64 rss_pages;
	char victim_comm[COMM_LEN];
};

struct tapio_rss_event {
	struct tapio_hdr hdr;
	struct tapio_task task;
	__u64 rss_bytes;
	__u64 previous_bytes;
};

struct tapio_throttle_event {
	struct tapio_hdr hdr;
	__u64 cgroup_id;
	__u32 start; /* enum tapio_throttle_op */
	__u32 _pad;
	__u64 dropped; /* events dropped during the throttle (on stop) */
};

/* A cgroup v2 directory was created or removed: userspace learns the
 * id → path mapping before any event from the cgroup is decoded, so a
 * short-lived container's events keep their identity after its cgroup is
 * gone. Never filtered or rate limited (the runtime, not the workload,
 * makes the directory). */
struct tapio_cgroup_event {
	struct tapio_hdr hdr;
	__u64 id;
	__u32 op;	   /* enum tapio_cgroup_op */
	__s32 level;	   /* depth below the root (the root is 0) */
	__u32 path_len;	   /* bytes of `path` incl. the NUL; CGROUP_PATH_LEN: maybe truncated */
	__u32 _pad;
	char path[CGROUP_PATH_LEN]; /* relative to the hierarchy root, leading '/' */
};

/* Referenced so that libbpf-cargo emits every record layout into the skeleton. */
struct {
	struct tapio_exec_event exec;
	struct tapio_fork_event fork;
	struct tapio_exit_event exit;
	struct tapio_tcp_event tcp;
	struct tapio_file_event file;
	struct tapio_cred_event cred;
	struct tapio_ptrace_event ptrace;
	struct tapio_bpf_event bpf;
	struct tapio_mount_event mount;
	struct tapio_oom_event oom;
	struct tapio_rss_event rss;
	struct tapio_throttle_event throttle;
	struct tapio_cgroup_event cgroup;
} tapio_record_layouts = {};

/* The ABI anchor: references every enum userspace decodes with, so that
 * each is in the object's BTF and in the skeleton's `types`. Never read. */
struct tapio_kernel_abi {
	enum tapio_kernel_version version;
	enum tapio_kind kind;
	enum tapio_tcp_op tcp_op;
	enum tapio_file_op file_op;
	enum tapio_cred_syscall cred_syscall;
	enum tapio_ptrace_request ptrace_request;
	enum bpf_cmd bpf_cmd;
	enum tapio_mount_op mount_op;
	enum tapio_throttle_op throttle_op;
	enum tapio_cgroup_op cgroup_op;
	enum tapio_flow_direction flow_direction;
	enum tapio_network_mode network_mode;
	struct tapio_flow_key flow_key;
	struct tapio_flow_stats flow_stats;
	struct tapio_summary_key summary_key;
} tapio_kernel_abi = {};

#endif /* __TAPIO_KERNEL_RECORDS_H */
