// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A program the verifier must reject: it reads packet data without checking it against
 * data_end. The test checks that the failed load carries the verifier's explanation.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int broken_prog(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;

	return *(__u32 *)(data + 14);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
