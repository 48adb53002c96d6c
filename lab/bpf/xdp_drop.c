/* The lab's XDP fault: drop every frame. No headers (this machine has no kernel headers):
 * enum xdp_action in uapi linux/bpf.h: XDP_ABORTED 0, XDP_DROP 1, XDP_PASS 2. */
struct xdp_md;

__attribute__((section("xdp"), used)) int xdp_drop(struct xdp_md *ctx)
{
	return 1;
}

__attribute__((section("license"), used)) char _license[] = "GPL";
