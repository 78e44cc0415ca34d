//! The kernel programs. Entry points are thin; the work is in the modules and the
//! breaker logic itself in `breaker-common`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The bpf target's `core` has no compare-and-swap; the intrinsic emits BPF cmpxchg.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod atomic;
#[cfg(target_arch = "bpf")]
mod breaker;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod destination;
#[cfg(target_arch = "bpf")]
mod detect;
#[cfg(target_arch = "bpf")]
mod features;
#[cfg(target_arch = "bpf")]
mod hops;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod probe_mark;
#[cfg(target_arch = "bpf")]
mod record;
#[cfg(target_arch = "bpf")]
mod release;
#[cfg(target_arch = "bpf")]
mod resolve_test;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
        helpers::generated::bpf_redirect,
        macros::{cgroup_sock, cgroup_sock_addr, classifier, sock_ops, xdp},
        programs::{SockAddrContext, SockContext, SockOpsContext, TcContext, XdpContext},
    };

    use crate::{connect::Verdict, packet::ingress};

    /// The sock_addr return codes. Anything but an explicit deny allows: a fault in
    /// our own bookkeeping must never break the host's connects.
    #[inline(always)]
    fn sock_addr_code(verdict: Result<Verdict, i32>) -> i32 {
        match verdict {
            Ok(Verdict::Deny) => 0,
            _ => 1,
        }
    }

    /// Enforcement for IPv4 connect(): pass, fail fast, or redirect to the fallback.
    #[cgroup_sock_addr(connect4)]
    pub fn brk_connect4(ctx: SockAddrContext) -> i32 {
        sock_addr_code(crate::connect::try_connect4(&ctx))
    }

    /// Enforcement for IPv6 connect() (v4-mapped destinations count as IPv4).
    #[cgroup_sock_addr(connect6)]
    pub fn brk_connect6(ctx: SockAddrContext) -> i32 {
        sock_addr_code(crate::connect::try_connect6(&ctx))
    }

    /// Does nothing: `breaker calibrate` attaches it so the benchmarks can measure
    /// what any connect4 program costs (dispatch and BPF stats), and subtract it.
    #[cgroup_sock_addr(connect4)]
    pub fn brk_nop_connect(_ctx: SockAddrContext) -> i32 {
        1
    }

    /// Does nothing, as `brk_nop_connect`, for connect6.
    #[cgroup_sock_addr(connect6)]
    pub fn brk_nop_conn6(_ctx: SockAddrContext) -> i32 {
        1
    }

    /// Does nothing, as `brk_nop_connect`, for sock_ops.
    #[sock_ops]
    pub fn brk_nop_sockops(_ctx: SockOpsContext) -> u32 {
        1
    }

    /// Does nothing, as `brk_nop_connect`, for cgroup/sock_release.
    #[cgroup_sock(sock_release)]
    pub fn brk_nop_release(_ctx: SockContext) -> i32 {
        1
    }

    /// Detection: the outcome of each watched connect.
    #[sock_ops]
    pub fn brk_sock_ops(ctx: SockOpsContext) -> u32 {
        // sock_ops ignores the return for these callbacks; 1 is "ok".
        let _ = crate::detect::try_sock_ops(&ctx);
        1
    }

    /// Cleanup: a watched connect closed before its outcome gives back what it held.
    #[cgroup_sock(sock_release)]
    pub fn brk_release(ctx: SockContext) -> i32 {
        // 1 lets the release go on; it is never ours to refuse.
        let _ = crate::release::try_sock_release(&ctx);
        1
    }

    /// Packet path, XDP: a SYN from a workload behind the interface passes, is
    /// answered with a reset or an ICMP error sent straight back (XDP_TX), is
    /// dropped, or its flow goes to the fallback.
    #[xdp]
    pub fn brk_xdp_ingress(ctx: XdpContext) -> u32 {
        match ingress::on_ingress(&ctx) {
            ingress::Verdict::Pass => xdp_action::XDP_PASS,
            ingress::Verdict::Drop => xdp_action::XDP_DROP,
            ingress::Verdict::Reply => xdp_action::XDP_TX,
        }
    }

    /// Packet path, TC ingress: as `brk_xdp_ingress`, where XDP cannot go.
    #[classifier]
    pub fn brk_tc_ingress(ctx: TcContext) -> i32 {
        match ingress::on_ingress(&ctx) {
            // On to whatever comes after us on the hook (other filters, TCX
            // programs): TC_ACT_OK would end the chain here.
            ingress::Verdict::Pass => TC_ACT_UNSPEC,
            ingress::Verdict::Drop => TC_ACT_SHOT,
            // SAFETY: reads the skb's interface, then a helper on integers: out of
            // the interface the SYN came in by.
            ingress::Verdict::Reply => unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 },
        }
    }

    /// Packet path, TC egress: the upstreams' answers towards the workloads end
    /// their flows; a redirected flow's segments get the upstream's address back.
    /// Never drops a packet.
    #[classifier]
    pub fn brk_tc_egress(ctx: TcContext) -> i32 {
        crate::packet::egress::on_egress(&ctx);
        // On to whatever comes after us on the hook.
        TC_ACT_UNSPEC
    }

    /// Empty XDP and TC programs, never attached: the bench's baseline for the
    /// packet path's cost per packet.
    #[xdp]
    pub fn brk_nop_xdp(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[classifier]
    pub fn brk_nop_tc(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// The bench's floor for a SYN that starts a flow: its parse and its flow's
    /// insert, nothing decided (see `ingress::flow_floor`); never attached.
    #[xdp]
    pub fn brk_flow_floor(ctx: XdpContext) -> u32 {
        ingress::flow_floor(&ctx);
        xdp_action::XDP_PASS
    }

    /// The bench's floor for a SYN answered with a reset: its parse, the flow
    /// table's lookup and the reset, no breaker asked (see
    /// `ingress::reset_floor`); never attached.
    #[xdp]
    pub fn brk_reset_floor(ctx: XdpContext) -> u32 {
        match ingress::reset_floor(&ctx) {
            ingress::Verdict::Reply => xdp_action::XDP_TX,
            ingress::Verdict::Drop => xdp_action::XDP_DROP,
            ingress::Verdict::Pass => xdp_action::XDP_PASS,
        }
    }

    /// A flow past its timeout, under BPF_PROG_TEST_RUN from the daemon; never
    /// attached.
    #[classifier]
    pub fn brk_flow_expire(ctx: TcContext) -> i32 {
        match crate::packet::expire::try_expire(&ctx) {
            Ok(verdict) => verdict as i32,
            Err(_) => -2,
        }
    }

    /// The kernel's jiffies (low 32 bits) under BPF_PROG_TEST_RUN, so the daemon can
    /// measure HZ wherever it runs; never attached.
    #[classifier]
    pub fn brk_jiffies(_ctx: TcContext) -> i32 {
        crate::breaker::jiffies() as i32
    }

    /// Never run nor attached: the daemon loads it on a kernel older than 5.18 to
    /// tell whether it has BPF atomics (compare-and-swap on a map value, 5.12).
    #[classifier]
    pub fn brk_need_atomics(_ctx: TcContext) -> i32 {
        crate::features::compare_and_swap()
    }

    /// Never run nor attached: as `brk_need_atomics`, for `bpf_set_retval` in a
    /// cgroup connect hook (5.18).
    #[cgroup_sock_addr(connect4)]
    pub fn brk_need_retval(_ctx: SockAddrContext) -> i32 {
        crate::features::set_retval()
    }

    /// The destination lookup under BPF_PROG_TEST_RUN; never attached.
    #[classifier]
    pub fn brk_test_resolve(ctx: TcContext) -> i32 {
        match crate::resolve_test::try_resolve(&ctx) {
            Ok(id) => id as i32,
            // A query the program could not read: neither an id nor "none".
            Err(_) => -2,
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
