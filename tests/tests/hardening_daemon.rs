//! Attacks on the daemon itself, as a local user or a careless operator would make
//! them: running it out of file descriptors through the metrics port, slowloris
//! connections, a flood of concurrent scrapes, and every signal. The daemon must stay
//! up and keep enforcing, with bounded memory, and stop only on TERM/INT/QUIT.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use breaker_lab::{
    lab::{Lab, BLACKHOLE_V4, METRICS},
    testing::{check, outcomes},
};

fn lab(tag: &str) -> Option<Lab> {
    breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))
}

/// One upstream on a blackholed address: once tripped, it stays OPEN for an hour, so a
/// connect to it fails fast exactly while the programs are attached, and hangs otherwise.
fn dark_upstream() -> String {
    format!(
        r#"
[[upstream]]
name = "dark"
endpoints = ["{BLACKHOLE_V4}:80"]
failure_threshold = 1
open_duration = "1h"
"#
    )
}

fn dark_addr() -> String {
    format!("{BLACKHOLE_V4}:80")
}

/// Trips the dark upstream with one connect that times out.
fn trip(lab: &Lab) {
    let dark = lab
        .client(&["--to", &dark_addr(), "--count", "1", "--timeout-ms", "1500"])
        .unwrap();
    check(
        lab,
        dark[0].outcome == "timeout",
        &format!("the first connect times out: {:?}", outcomes(&dark)),
    );
}

/// The breaker still rejects: connects to the tripped upstream fail fast with ECONNREFUSED.
fn still_enforcing(lab: &Lab, when: &str) {
    let after = lab
        .client(&["--to", &dark_addr(), "--count", "3", "--timeout-ms", "1500"])
        .unwrap();
    check(
        lab,
        after
            .iter()
            .all(|a| a.errno == Some(libc::ECONNREFUSED) && a.latency_us < 100_000.0),
        &format!("{when}: connects to the tripped upstream fail fast: {after:?}"),
    );
}

fn alive(lab: &mut Lab, when: &str) {
    let exit = lab.daemon_exit().unwrap();
    check(
        lab,
        exit.is_none(),
        &format!("{when}: the daemon is still running (exited: {exit:?})"),
    );
}

/// Opens `n` connections to the metrics port from the client namespace, writing
/// `send` on each; connections the daemon refuses are left out.
fn open_connections(lab: &Lab, n: usize, send: &'static [u8]) -> Vec<TcpStream> {
    lab.client
        .within(move || {
            let addr = METRICS.parse().expect("metrics address");
            (0..n)
                .filter_map(|_| {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
                    // A connection the daemon has already closed may refuse the write.
                    let _ = s.write_all(send);
                    Some(s)
                })
                .collect()
        })
        .unwrap()
}

/// Waits until /metrics answers, up to `timeout`.
fn scrape_within(lab: &Lab, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + breaker_lab::testing::patience(timeout);
    loop {
        match lab.metrics_text() {
            Ok(text) => return Ok(text),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

const MIB: u64 = 1024 * 1024;

/// Resident set size of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    kb * 1024
}

/// Issue 7, item 1: idle connections to the metrics port ran the daemon out of file
/// descriptors, accept() failed with EMFILE, and the daemon exited, detaching
/// everything.
#[test]
fn running_out_of_file_descriptors_neither_stops_the_daemon_nor_enforcement() {
    let Some(mut lab) = lab("emfile") else { return };
    lab.start_daemon(&dark_upstream()).unwrap();
    trip(&lab);
    let pid = lab.daemon_pid().expect("daemon running");
    // A few descriptors to spare, so that a handful of connections exhausts them
    // (the daemon raised its soft limit to the hard one at start; this lowers both).
    let limit = open_fds(pid) + 4;
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit reads one rlimit from a valid pointer; a null old-limit pointer is allowed.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());

    let attackers = open_connections(&lab, 200, b"");
    std::thread::sleep(Duration::from_secs(2));
    alive(&mut lab, "with its descriptors exhausted");
    still_enforcing(&lab, "with its descriptors exhausted");
    check(
        &lab,
        lab.daemon_log().contains("accept failed"),
        "accept ran out of descriptors, and the daemon said so",
    );

    drop(attackers);
    let scrape = scrape_within(&lab, Duration::from_secs(10));
    check(
        &lab,
        scrape.is_ok_and(|t| t.contains("breaker_state")),
        "/metrics answers again once the connections are gone",
    );
    alive(&mut lab, "after the attack");
    still_enforcing(&lab, "after the attack");
}

/// Issue 7, item 1: slowloris connections (a partial request head, then nothing) were
/// held for ever, and each held memory.
#[test]
fn slowloris_connections_are_closed_and_memory_stays_bounded() {
    let Some(mut lab) = lab("slowloris") else {
        return;
    };
    lab.start_daemon(&dark_upstream()).unwrap();
    let pid = lab.daemon_pid().expect("daemon running");
    lab.metrics_text().unwrap();
    let rss_before = rss(pid);

    let mut attackers = open_connections(
        &lab,
        200,
        b"GET /metrics HTTP/1.1\r\nHost: breaker\r\nX-Slow: ",
    );
    let opened = Instant::now();
    check(
        &lab,
        attackers.len() >= 150,
        &format!("most of 200 attack connections opened: {}", attackers.len()),
    );
    // Scrapes go on during the attack.
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..3 {
        let during = lab.metrics_text();
        check(
            &lab,
            during.as_ref().is_ok_and(|t| t.contains("breaker_state")),
            &format!("a scrape during the attack is answered: {during:?}"),
        );
    }

    // Every attack connection is closed by the header timeout, plus a margin.
    let deadline = opened + breaker::metrics::server::HEADER_READ_TIMEOUT + Duration::from_secs(3);
    let mut still_open = 0;
    for s in &mut attackers {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            // Closed (EOF), reset, or answered with an error before closing.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(_) => still_open += 1,
        }
    }
    check(
        &lab,
        still_open == 0,
        &format!(
            "{still_open} of {} slowloris connections still open {:.1} s after they were opened",
            attackers.len(),
            opened.elapsed().as_secs_f64()
        ),
    );
    drop(attackers);
    alive(&mut lab, "after the attack");
    let grew = rss(pid).saturating_sub(rss_before);
    eprintln!("slowloris: RSS grew by {} KiB", grew / 1024);
    check(
        &lab,
        grew < 4 * MIB,
        &format!(
            "RSS grew by {:.1} MiB (under 4 MiB)",
            grew as f64 / MIB as f64
        ),
    );
}

/// Issue 7, item 1: concurrent scrapes of a large config each rendered their own copy
/// at once, and the memory stayed.
#[test]
fn concurrent_scrapes_of_many_upstreams_keep_memory_bounded() {
    let Some(mut lab) = lab("scrapes") else {
        return;
    };
    let mut config = String::new();
    for i in 0..2000u32 {
        let addr = format!("10.90.{}.{}:80", i / 250, i % 250 + 1);
        config.push_str(&format!(
            "[[upstream]]\nname = \"u{i}\"\nendpoints = [\"{addr}\"]\nprobe = {{ address = \"{addr}\" }}\n"
        ));
    }
    lab.start_daemon(&config).unwrap();
    let pid = lab.daemon_pid().expect("daemon running");
    // The first render's own allocations are not growth.
    lab.metrics_text().unwrap();
    let rss_before = rss(pid);

    const SCRAPERS: usize = 100;
    const FOR: Duration = Duration::from_secs(4);
    let (answered, failed) = lab
        .client
        .within(|| {
            // Threads inherit the namespace of the thread that starts them.
            let scrapers: Vec<_> = (0..SCRAPERS)
                .map(|_| {
                    std::thread::spawn(|| {
                        let addr = METRICS.parse().expect("metrics address");
                        let (mut ok, mut failed) = (0u32, 0u32);
                        let end = Instant::now() + FOR;
                        while Instant::now() < end {
                            let scrape = || -> std::io::Result<bool> {
                                let mut s =
                                    TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: breaker\r\n\r\n")?;
                                let mut body = Vec::new();
                                s.read_to_end(&mut body)?;
                                Ok(body.windows(13).any(|w| w == b"breaker_state"))
                            };
                            match scrape() {
                                Ok(true) => ok += 1,
                                _ => failed += 1,
                            }
                        }
                        (ok, failed)
                    })
                })
                .collect();
            scrapers
                .into_iter()
                .map(|t| t.join().unwrap_or((0, 0)))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        })
        .unwrap();
    let rss_peak_after = rss(pid);
    alive(&mut lab, "after the scrapes");
    check(
        &lab,
        answered > 0,
        &format!("scrapes were answered during the flood ({answered} answered, {failed} turned away or failed)"),
    );
    // Renders queued by the flood finish first: seconds under emulation, where
    // rendering 2 000 upstreams is slow; a wedged server never answers.
    let after = scrape_within(&lab, Duration::from_secs(30));
    check(
        &lab,
        after.is_ok_and(|t| t.contains("breaker_state")),
        "a scrape after the flood is answered",
    );
    let grew = rss_peak_after.saturating_sub(rss_before);
    eprintln!(
        "scrapes: {answered} answered, {failed} turned away; RSS grew by {} KiB",
        grew / 1024
    );
    check(
        &lab,
        grew < 32 * MIB,
        &format!(
            "RSS grew by {:.1} MiB (under 32 MiB) over {answered} answered scrapes",
            grew as f64 / MIB as f64
        ),
    );
}

/// Issue 7, item 6: HUP, USR1 and USR2 killed the daemon with the default action, no
/// log line, and everything detached. Now HUP reloads, USR1/USR2 are logged, and
/// TERM/INT/QUIT stop the daemon while the pinned programs keep enforcing.
#[test]
fn every_signal_is_handled_and_only_term_int_quit_stop_the_daemon() {
    let Some(mut lab) = lab("signals") else {
        return;
    };
    lab.start_daemon(&dark_upstream()).unwrap();
    trip(&lab);
    let pid = nix::unistd::Pid::from_raw(lab.daemon_pid().expect("daemon running") as i32);
    use nix::sys::signal::{kill, Signal};
    for (sig, says) in [
        (Signal::SIGHUP, "config reloaded"),
        (Signal::SIGUSR1, "SIGUSR1"),
        (Signal::SIGUSR2, "SIGUSR2"),
    ] {
        kill(pid, sig).unwrap();
        // A reload loads and verifies the programs again: seconds, not
        // milliseconds, and more in an emulated guest (a wait, so stretched).
        let deadline = Instant::now() + breaker_lab::testing::patience(Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        while !lab.daemon_log().contains(says) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        alive(&mut lab, &format!("after {sig}"));
        check(
            &lab,
            lab.daemon_log().contains(says),
            &format!("{sig} is logged"),
        );
        still_enforcing(&lab, &format!("after {sig}"));
    }

    kill(pid, Signal::SIGQUIT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = lab.daemon_exit().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    check(
        &lab,
        status.is_some_and(|s| s.code() == Some(0)),
        &format!("SIGQUIT: exit status 0, got {status:?}"),
    );
    let log = lab.daemon_log();
    check(
        &lab,
        log.contains("SIGQUIT") && log.contains("daemon stopped"),
        "the daemon says why it stopped",
    );
    // The pinned programs stay: the tripped upstream still fails fast.
    still_enforcing(&lab, "after SIGQUIT");
}
