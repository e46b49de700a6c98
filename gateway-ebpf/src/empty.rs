//! An empty TC program: passes every packet on at once (`TC_ACT_PIPE`, which TCX treats as
//! `TCX_NEXT`, the real program's verdict for traffic it does not steer).
//!
//! Never loaded by the daemon. The benchmark's datapath figure attaches it where the daemon
//! attaches `sshgw-datapath` (TCX ingress of the device-side interface) while the daemon is
//! stopped, so the kernel's `run_time_ns / run_cnt` for it is the cost of the hook and of
//! the accounting itself, measured in the same run and subtracted from the real program's.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_PIPE, macros::classifier, programs::TcContext};

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[classifier]
pub fn sshgw_empty(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
