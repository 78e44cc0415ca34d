//! The kernel's tick rate (CONFIG_HZ). Trial SYN timeouts are given to the kernel in
//! jiffies, and HZ differs between kernels (100, 250, 300, 1000), so it is measured,
//! never assumed: the kernel's own jiffies, read by a BPF program under
//! BPF_PROG_TEST_RUN, against CLOCK_MONOTONIC over a short wait. That works
//! wherever the daemon can load programs, containers included, where
//! /proc/timer_list and the kernel's config are often hidden.
use std::time::{Duration, Instant};

use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf,
};
use breaker_common::abi::program_names;

/// Tick rates a kernel can be built with; a measurement snaps to the nearest.
const KNOWN_HZ: [u32; 4] = [100, 250, 300, 1000];
/// Used only when the measurement fails; logged.
const FALLBACK_HZ: u32 = 250;
/// Long enough that one tick of error is under 5 % at HZ 250.
const WAIT: Duration = Duration::from_millis(100);

/// HZ measured with the `brk_jiffies` program, else [`FALLBACK_HZ`] with a warning.
pub fn kernel_hz(ebpf: &mut Ebpf) -> u32 {
    match measure(ebpf) {
        Ok(hz) => hz,
        Err(why) => {
            tracing::warn!(
                "cannot measure the kernel's HZ ({why}); assuming {FALLBACK_HZ}: trial connect timeouts may be off by that ratio"
            );
            FALLBACK_HZ
        }
    }
}

fn measure(ebpf: &mut Ebpf) -> Result<u32, String> {
    let name = program_names::JIFFIES;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("no program {name}"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))?;
    prog.load().map_err(|e| format!("loading {name}: {e}"))?;
    // skb test runs need at least an Ethernet header of data.
    let data = [0u8; 14];
    let jiffies = || {
        prog.test_run(TestRunOptions {
            data_in: Some(&data),
            ..TestRunOptions::new()
        })
        .map(|r| r.return_value)
        .map_err(|e| format!("running {name}: {e}"))
    };
    let (j0, t0) = (jiffies()?, Instant::now());
    std::thread::sleep(WAIT);
    let (j1, t1) = (jiffies()?, Instant::now());
    let ticks = j1.wrapping_sub(j0) as f64;
    Ok(snap(ticks / (t1 - t0).as_secs_f64()))
}

fn snap(measured: f64) -> u32 {
    KNOWN_HZ
        .into_iter()
        .min_by(|a, b| {
            (*a as f64 - measured)
                .abs()
                .total_cmp(&(*b as f64 - measured).abs())
        })
        .unwrap_or(FALLBACK_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_snap_to_a_real_hz() {
        assert_eq!(snap(247.6), 250);
        assert_eq!(snap(1003.0), 1000);
        assert_eq!(snap(99.0), 100);
        assert_eq!(snap(290.0), 300);
    }
}
