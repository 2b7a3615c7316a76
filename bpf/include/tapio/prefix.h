/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Path-prefix matching for tapio BPF objects, on component boundaries:
 * "/usr/lib/cni" matches "/usr/lib/cni/bridge" and "/usr/lib/cni", not
 * "/usr/lib/cni2/bridge". Prefixes are configured by userspace in .rodata
 * before load:
 *
 *     const volatile __u32 cfg_n_prefixes = 0;
 *     const volatile char cfg_prefixes[TAPIO_MAX_PREFIXES][TAPIO_PREFIX_LEN] = {};
 *     const volatile __u32 cfg_prefix_lens[TAPIO_MAX_PREFIXES] = {};
 *     ...
 *     if (tapio_path_under(path, cfg_prefixes, cfg_prefix_lens, cfg_n_prefixes)) ...
 *
 * `path` must point to a buffer of at least TAPIO_PREFIX_LEN bytes (a
 * NUL-terminated string copied with bpf_probe_read_*_str).
 */
#ifndef __TAPIO_PREFIX_H
#define __TAPIO_PREFIX_H

#define TAPIO_MAX_PREFIXES 8
#define TAPIO_PREFIX_LEN 64

static __always_inline bool tapio_path_under(const char *path,
					     const volatile char (*prefixes)[TAPIO_PREFIX_LEN],
					     const volatile __u32 *lens, __u32 n)
{
	for (int i = 0; i < TAPIO_MAX_PREFIXES; i++) {
		__u32 len;
		bool match = true;

		if (i >= n)
			break;
		len = lens[i];
		if (len == 0 || len >= TAPIO_PREFIX_LEN)
			continue;
		for (int j = 0; j < TAPIO_PREFIX_LEN; j++) {
			if (j >= len)
				break;
			if (path[j] != prefixes[i][j]) {
				match = false;
				break;
			}
		}
		if (match && (len == 1 || path[len & (TAPIO_PREFIX_LEN - 1)] == '/' ||
			      path[len & (TAPIO_PREFIX_LEN - 1)] == 0))
			return true;
	}
	return false;
}

#endif /* __TAPIO_PREFIX_H */
