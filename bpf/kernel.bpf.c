// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tapio kernel collector: process, network, file, security and memory events.
 *
 * One object, one header per hook family under kernel/ (no kprobes/fentry:
 * this must run on locked-down kernels):
 *   kernel/records.h   record structs and the enums userspace decodes them
 *                      with (kinds, op codes, credential syscalls, version)
 *   kernel/maps.h      load-time configuration and maps
 *   kernel/helpers.h   record header, task fill, filters, per-cgroup rate limit
 *   kernel/syscalls.h  enter-stash / exit-emit plumbing of syscall tracepoints
 *   kernel/process.h   tp_btf sched_process_{exec,fork,exit} (classic tp
 *                      fallback for exec, exit)
 *   kernel/network.h   tp_btf sock/inet_sock_set_state, tcp/tcp_retransmit_skb,
 *                      tcp/tcp_receive_reset, tcp/tcp_send_reset
 *   kernel/file.h      classic syscall tracepoints, enter (stash path) + exit
 *                      (emit with result)
 *   kernel/security.h  classic syscall tracepoints for set*id/capset/ptrace/
 *                      bpf/mount/umount
 *   kernel/memory.h    tp_btf oom/mark_victim, kmem/rss_stat (aggregated in kernel)
 *   kernel/cgroup.h    tp_btf cgroup/cgroup_{mkdir,rmdir} (classic tp fallback),
 *                      feeding the userspace cgroup resolver; no events of
 *                      their own
 *
 * Records leave through the shared output path of tapio/common.h
 * (tapio_reserve / tapio_submit / tapio_discard: drop counting, batched
 * wake-ups when userspace configures them).
 *
 * Every event passes the filters (pid, cgroup, comm) and the per-cgroup
 * token bucket; throttling is announced with start/stop records and
 * counted in tapio_drops.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tapio/common.h"
#include "tapio/prefix.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#include "kernel/records.h"
#include "kernel/maps.h"
#include "kernel/helpers.h"
#include "kernel/syscalls.h"
#include "kernel/process.h"
#include "kernel/network.h"
#include "kernel/file.h"
#include "kernel/security.h"
#include "kernel/memory.h"
#include "kernel/cgroup.h"
