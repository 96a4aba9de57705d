// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test fixture for the addon's bpf calls (plugin/kernel/bpf-native.test.ts): a hash map, a ring
 * buffer, a load-time constant and a tc program that touches all three. Compiled by
 * build-fixture.sh.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} fixture_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} fixture_events SEC(".maps");

/* Set through bpfObjectLoad's rodata option; what the program returns. */
const volatile __u32 verdict = 0;

SEC("tc")
int fixture_prog(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	__u64 one = 1;
	__u64 *count = bpf_map_lookup_elem(&fixture_counts, &len);

	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&fixture_counts, &len, &one, BPF_NOEXIST);

	__u64 *record = bpf_ringbuf_reserve(&fixture_events, sizeof(*record), 0);
	if (record) {
		*record = len;
		bpf_ringbuf_submit(record, 0);
	}
	return verdict;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
