//! The kernel's tick rate (CONFIG_HZ). Trial SYN timeouts are given to the kernel in
//! jiffies, and HZ differs between kernels (100, 250, 300, 1000), so it is measured,
//! never assumed.

/// Tick rates a kernel can be built with; a measurement snaps to the nearest.
const KNOWN_HZ: [u32; 4] = [100, 250, 300, 1000];
/// Used only when neither source can be read; logged.
const FALLBACK_HZ: u32 = 250;

/// HZ from /proc/timer_list (jiffies against monotonic nanoseconds over a short
/// wait), else from the kernel's build config, else [`FALLBACK_HZ`].
pub fn kernel_hz() -> u32 {
    if let Some(hz) = measure_from_timer_list() {
        return hz;
    }
    if let Some(hz) = from_build_config() {
        return hz;
    }
    tracing::warn!(
        "cannot tell the kernel's HZ (no /proc/timer_list or kernel config); assuming {FALLBACK_HZ}: trial connect timeouts may be off by that ratio"
    );
    FALLBACK_HZ
}

fn measure_from_timer_list() -> Option<u32> {
    let first = timer_list_sample()?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let second = timer_list_sample()?;
    let (dj, dns) = (
        second.0.checked_sub(first.0)?,
        second.1.checked_sub(first.1)?,
    );
    if dns == 0 {
        return None;
    }
    Some(snap(dj as f64 * 1e9 / dns as f64))
}

/// (jiffies, now in ns) from /proc/timer_list. Read line by line up to the first
/// `jiffies:` (the end of CPU 0's part): the whole file grows with CPUs and timers.
fn timer_list_sample() -> Option<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let file = std::fs::File::open("/proc/timer_list").ok()?;
    let mut head = String::new();
    for line in BufReader::new(file).lines() {
        let line = line.ok()?;
        let last = line.trim_start().starts_with("jiffies: ");
        head.push_str(&line);
        head.push('\n');
        if last {
            break;
        }
    }
    parse_timer_list(&head)
}

fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let now = text
        .lines()
        .find_map(|l| l.strip_prefix("now at ")?.strip_suffix(" nsecs"))?
        .trim()
        .parse()
        .ok()?;
    let jiffies = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: "))?
        .trim()
        .parse()
        .ok()?;
    Some((jiffies, now))
}

fn from_build_config() -> Option<u32> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let text = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))?
        .trim()
        .parse()
        .ok()
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
    fn reads_jiffies_and_now_from_timer_list() {
        let text = "Timer List Version: v0.9\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 167919113056 nsecs\n\ncpu: 0\n clock 0:\njiffies: 4294934212\n";
        assert_eq!(
            parse_timer_list(text),
            Some((4_294_934_212, 167_919_113_056))
        );
        assert_eq!(parse_timer_list("nothing here"), None);
    }

    #[test]
    fn measurements_snap_to_a_real_hz() {
        assert_eq!(snap(247.6), 250);
        assert_eq!(snap(1003.0), 1000);
        assert_eq!(snap(99.0), 100);
        assert_eq!(snap(290.0), 300);
    }
}
