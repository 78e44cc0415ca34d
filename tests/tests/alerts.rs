//! Webhook alerts, against receivers the test runs: one POST per transition; a
//! receiver that takes 10 s to answer slows neither rejects nor probes; a dead
//! one's alerts are counted as failed.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use breaker_lab::{
    lab::{Lab, BLACKHOLE_V4},
    testing::{check, eventually, outcomes},
};

fn lab(tag: &str) -> Option<Lab> {
    breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))
}

/// The bodies of the POSTs a receiver got.
type Received = Arc<Mutex<Vec<String>>>;

/// An HTTP receiver in the lab's client namespace (where the daemon runs) that
/// answers each POST with 200 after `delay`; returns its URL.
fn receiver(lab: &Lab, delay: Duration) -> (String, Received) {
    let listener = lab
        .client
        .within(|| TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let bodies = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                bodies
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                std::thread::sleep(delay);
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    (url, received)
}

fn dark(name: &str) -> String {
    format!(
        "[[upstream]]\nname = {name:?}\nendpoints = [\"{BLACKHOLE_V4}:80\"]\nfailure_threshold = 1\nopen_duration = \"1h\"\n"
    )
}

fn trip(lab: &Lab) {
    let a = lab
        .client(&[
            "--to",
            &format!("{BLACKHOLE_V4}:80"),
            "--count",
            "1",
            "--timeout-ms",
            "1500",
        ])
        .unwrap();
    check(lab, outcomes(&a) == ["timeout"], "tripped");
}

#[test]
fn each_transition_is_posted_once() {
    let Some(mut lab) = lab("alerts") else {
        return;
    };
    let (url, received) = receiver(&lab, Duration::ZERO);
    let (slack_url, slack) = receiver(&lab, Duration::ZERO);
    lab.start_daemon(&format!(
        "{}[[alert]]\nurl = {url:?}\n[[alert]]\nurl = {slack_url:?}\nformat = \"slack\"\ntransitions = [\"open\"]\n",
        dark("dark")
    ))
    .unwrap();
    trip(&lab);
    let out = lab.cli(&["reset", "dark"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let both = eventually(Duration::from_secs(5), || {
        received.lock().unwrap().len() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = received.lock().unwrap().clone();
    let events: Vec<serde_json::Value> = got
        .iter()
        .map(|b| serde_json::from_str(b).unwrap_or_default())
        .collect();
    check(
        &lab,
        both && events.len() == 2
            && events[0]["upstream"] == "dark"
            && events[0]["to"] == "open"
            && events[1]["to"] == "closed"
            && events[1]["cause"] == "operator_reset",
        &format!("one POST per transition: {got:?}"),
    );
    let slack = slack.lock().unwrap().clone();
    check(
        &lab,
        slack.len() == 1 && slack[0].contains("breaker: upstream dark went closed -> open"),
        &format!("the slack alert wants only transitions to open: {slack:?}"),
    );
    check(
        &lab,
        lab.metric(
            "breaker_alerts_total",
            &[("alert", "alert[0]"), ("result", "sent")],
        )
        .unwrap()
            == 2.0,
        "sent alerts are counted",
    );
}

#[test]
fn a_slow_or_dead_receiver_delays_neither_rejects_nor_probes() {
    let Some(mut lab) = lab("slowalert") else {
        return;
    };
    let (slow_url, slow) = receiver(&lab, Duration::from_secs(10));
    // Nothing listens there: every delivery fails.
    let dead_url = {
        let l = lab
            .client
            .within(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    lab.serve("10.77.0.2:8080", "api").unwrap();
    lab.start_daemon(&format!(
        r#"{}
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
failure_threshold = 1
open_duration = "300ms"
probe_interval = "100ms"
probe = {{ address = "10.77.0.2:8080" }}

[[alert]]
url = {slow_url:?}
timeout = "15s"

[[alert]]
url = {dead_url:?}
timeout = "1s"
"#,
        dark("dark")
    ))
    .unwrap();
    trip(&lab);
    // The slow receiver now holds its first alert for 10 s. Rejects stay fast...
    check(
        &lab,
        eventually(Duration::from_secs(3), || !slow.lock().unwrap().is_empty()),
        "the slow receiver got its first alert",
    );
    let rejected = lab
        .client(&["--to", &format!("{BLACKHOLE_V4}:80"), "--count", "20"])
        .unwrap();
    check(
        &lab,
        rejected
            .iter()
            .all(|a| a.outcome == "refused" && a.latency_us < 50_000.0),
        &format!("rejects stay fast: {rejected:?}"),
    );
    // ...and probes run on time: "api" trips, and its probe closes it well within
    // the 10 s the slow receiver takes.
    let started = Instant::now();
    lab.client(&["--to", "10.77.0.2:81", "--count", "1"])
        .unwrap();
    let closed = eventually(Duration::from_secs(4), || {
        lab.metric("breaker_state", &[("upstream", "api"), ("state", "closed")])
            .unwrap_or(0.0)
            == 1.0
            && lab
                .metric(
                    "breaker_transitions_total",
                    &[("upstream", "api"), ("from", "half_open"), ("to", "closed")],
                )
                .unwrap_or(0.0)
                == 1.0
    });
    check(
        &lab,
        closed && started.elapsed() < Duration::from_secs(4),
        &format!("the probe closed api after {:?}", started.elapsed()),
    );
    // The dead receiver's alerts fail, after their retries, and are counted.
    let failed = eventually(Duration::from_secs(10), || {
        lab.metric(
            "breaker_alerts_total",
            &[("alert", "alert[1]"), ("result", "failed")],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    check(
        &lab,
        failed,
        "a dead receiver's alerts are counted as failed",
    );
}
