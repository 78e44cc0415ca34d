//! The kernel's destination lookup itself, run with BPF_PROG_TEST_RUN over the
//! daemon's real maps: which configured upstream each destination belongs to, as
//! connect4/6 decide it. Table-driven: endpoint sets, then destinations and the
//! upstream each must resolve to. Needs root (loading BPF), not a lab.
use std::path::Path;

use breaker::{
    config::Config,
    kernel::{Kernel, PinFolder},
};
use breaker_lab::privileges;

/// One endpoint set and what each destination resolves to (`None`: no upstream).
struct Case {
    what: &'static str,
    upstreams: &'static [(&'static str, &'static [&'static str])],
    expect: &'static [(&'static str, Option<&'static str>)],
}

const CASES: &[Case] = &[
    Case {
        what: "exact endpoints, both families, v4-mapped destinations",
        upstreams: &[
            ("a", &["10.0.0.1:80"]),
            ("b", &["10.0.0.1:81", "[fd00::1]:80"]),
        ],
        expect: &[
            ("10.0.0.1:80", Some("a")),
            ("10.0.0.1:81", Some("b")),
            ("[::ffff:10.0.0.1]:80", Some("a")),
            ("[fd00::1]:80", Some("b")),
            ("10.0.0.1:82", None),
            ("10.0.0.2:80", None),
            ("[fd00::2]:80", None),
        ],
    },
    Case {
        what: "overlapping prefixes: the longest wins",
        upstreams: &[
            ("wide", &["10.1.0.0/16:443", "[fd01::/32]:443"]),
            ("narrow", &["10.1.2.0/24:443", "[fd01:0:0:2::/64]:443"]),
            ("host", &["10.1.2.3/32:443"]),
        ],
        expect: &[
            ("10.1.9.9:443", Some("wide")),
            ("10.1.2.9:443", Some("narrow")),
            ("10.1.2.3:443", Some("host")),
            ("[fd01::9]:443", Some("wide")),
            ("[fd01:0:0:2::9]:443", Some("narrow")),
            ("10.2.0.1:443", None),
            ("10.1.2.9:80", None),
        ],
    },
    Case {
        what: "an exact port beats any port, whatever the prefix lengths",
        upstreams: &[
            ("anyport", &["10.3.0.7", "fd03::/64"]),
            ("port80", &["10.3.0.0/16:80", "[fd03::/48]:80"]),
        ],
        expect: &[
            ("10.3.0.7:80", Some("port80")),
            ("10.3.0.7:22", Some("anyport")),
            ("10.3.1.1:80", Some("port80")),
            ("10.3.1.1:22", None),
            ("[fd03::7]:80", Some("port80")),
            ("[fd03::7]:22", Some("anyport")),
            ("[::ffff:10.3.0.7]:22", Some("anyport")),
        ],
    },
    Case {
        what: "v4-mapped endpoints in the config are their IPv4 twins",
        upstreams: &[(
            "mapped",
            &["[::ffff:10.4.0.0/120]:80", "[::ffff:10.4.1.1]:80"],
        )],
        expect: &[
            ("10.4.0.9:80", Some("mapped")),
            ("[::ffff:10.4.0.9]:80", Some("mapped")),
            ("10.4.1.1:80", Some("mapped")),
            ("10.4.2.1:80", None),
        ],
    },
];

fn config_text(case: &Case) -> String {
    let mut text = String::new();
    for (name, endpoints) in case.upstreams {
        let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        text.push_str(&format!(
            "[[upstream]]\nname = {name:?}\nendpoints = [{}]\nprobe = {{ address = \"127.0.0.1:9\" }}\n",
            eps.join(", ")
        ));
    }
    text
}

/// Removes its pin folder when dropped.
struct Pins(PinFolder);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.uninstall();
    }
}

#[test]
fn kernel_lookup_resolves_each_destination_to_its_upstream() {
    if !privileges::should_run("kernel_lookup") {
        return;
    }
    let mut wrong = Vec::new();
    for case in CASES {
        let config = Config::parse(Path::new("lookup.toml"), &config_text(case))
            .unwrap_or_else(|e| panic!("{}: {e}", case.what));
        // Pins of its own, removed at the end of the case.
        let pins = Pins(PinFolder::new(format!(
            "/sys/fs/bpf/breaker-lookup-{}",
            std::process::id()
        )));
        let lock = pins.0.prepare_and_lock().expect("a pin folder");
        let mut kernel = Kernel::load(&config, &pins.0).expect("loading the programs");
        drop(lock);
        let upstreams = kernel.upstreams(&config);
        let name_of = |id: u32| {
            upstreams
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, u)| u.name.clone())
        };
        for (dest, want) in case.expect {
            let got = kernel
                .resolve(dest.parse().expect("a destination"))
                .unwrap_or_else(|e| panic!("{}: {dest}: {e}", case.what));
            let got = got.map(|id| name_of(id).unwrap_or_else(|| format!("unknown id {id}")));
            if got.as_deref() != *want {
                wrong.push(format!("{}: {dest} -> {got:?}, want {want:?}", case.what));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Many single-address endpoints: the kernel finds each in `ENDPOINT_TABLE`,
/// or, for the few the daemon's layout had no place for, in `ENDPOINTS_EXACT`
/// (the layout is asked which those are, and the test needs some); addresses
/// beside them resolve to nothing.
#[test]
fn kernel_lookup_finds_every_one_of_many_endpoints_and_their_overflow() {
    if !privileges::should_run("kernel_lookup_many") {
        return;
    }
    use breaker::kernel::endpoint_table::{place, EndpointLayout};
    use breaker_common::abi::DestKey;
    // A third of each family's: IPv4, IPv6, and IPv4 looked up v4-mapped too.
    let addr = |i: u32| {
        if i % 3 == 1 {
            format!("[fd09::{:x}:{:x}]:80", i / 65_536, i % 65_536)
        } else {
            format!("10.{}.{}.{}:80", 10 + i / 65_536, (i / 256) % 256, i % 256)
        }
    };
    let n = 30_000u32;
    let split = |up: &str, range: std::ops::Range<u32>| {
        let eps: Vec<String> = range.map(|i| format!("{:?}", addr(i))).collect();
        format!(
            "[[upstream]]\nname = {up:?}\nendpoints = [{}]\nprobe = {{ address = \"127.0.0.1:9\" }}\n",
            eps.join(", ")
        )
    };
    let text = split("low", 0..n / 2) + &split("high", n / 2..n);
    let config = Config::parse(Path::new("many.toml"), &text).expect("a valid config");
    let layout = EndpointLayout::of(|| config.single_endpoints().map(|(_, d)| d));
    let mut overflow: Vec<DestKey> = Vec::new();
    place(
        config.single_endpoints().map(|(_, d)| (d, 1)),
        layout.len,
        |_, _| Ok::<_, ()>(()),
        |s| {
            overflow.push(s.dest);
            Ok(())
        },
    )
    .expect("placed");
    assert!(
        !overflow.is_empty(),
        "no endpoint overflowed: the kernel's ENDPOINTS_EXACT path goes untested"
    );
    let pins = Pins(PinFolder::new(format!(
        "/sys/fs/bpf/breaker-lookup-many-{}",
        std::process::id()
    )));
    let lock = pins.0.prepare_and_lock().expect("a pin folder");
    let mut kernel = Kernel::load(&config, &pins.0).expect("loading the programs");
    drop(lock);
    let upstreams = kernel.upstreams(&config);
    let id = |name: &str| {
        upstreams
            .iter()
            .find(|(_, u)| u.name == name)
            .map(|(i, _)| *i)
    };
    let (low, high) = (id("low"), id("high"));
    let mut wrong = Vec::new();
    for i in 0..n {
        let dest: std::net::SocketAddr = addr(i).parse().expect("an address");
        let want = if i < n / 2 { low } else { high };
        let got = kernel.resolve(dest).expect("a lookup");
        if got != want {
            wrong.push(format!("{dest} -> {got:?}, want {want:?}"));
        }
        if let std::net::IpAddr::V4(v4) = dest.ip() {
            let mapped = std::net::SocketAddr::new(v4.to_ipv6_mapped().into(), 80);
            let got = kernel.resolve(mapped).expect("a lookup");
            if got != want {
                wrong.push(format!("{mapped} -> {got:?}, want {want:?}"));
            }
        }
        let beside = std::net::SocketAddr::new(dest.ip(), 81);
        if let Some(got) = kernel.resolve(beside).expect("a lookup") {
            wrong.push(format!("{beside} -> {got}, want nothing"));
        }
    }
    for d in &overflow {
        let dest = d.to_socket_addr();
        if kernel.resolve(dest).expect("a lookup").is_none() {
            wrong.push(format!("overflowed {dest} not found"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
