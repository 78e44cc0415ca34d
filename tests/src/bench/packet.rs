//! Scenario 8: the packet path's cost per packet, in the kernel, under
//! BPF_PROG_TEST_RUN over the daemon's real maps, net of an empty program of the
//! same type measured the same way. One run per packet (the kernel times each):
//! a SYN changes the maps (a flow starts) and a rejected SYN is rewritten, so a
//! repeated run would measure something else from its second round on.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use anyhow::Context;
use breaker::{
    config::Config,
    kernel::{Kernel, PinFolder},
};
use breaker_common::{
    abi::program_names,
    machine::{BreakerWord, State, Step},
};

use super::Plan;
use crate::{packets, stats::Summary};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 7, 0, 2), 80);
const DARK: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 7, 0, 3), 80);

const CONFIG: &str = r#"
[[upstream]]
name = "web"
endpoints = ["10.7.0.2:80"]
probe = { address = "127.0.0.1:9" }

[[upstream]]
name = "dark"
endpoints = ["10.7.0.3:80"]
probe = { address = "127.0.0.1:9" }
open_duration = "1h"

[[interface]]
name = "brk-bench0"
"#;

/// One kind of packet, on both hooks: medians of the kernel's time per run, and
/// those less the empty program's median.
pub struct CostRow {
    pub case: &'static str,
    pub target_ns: f64,
    pub xdp: Summary,
    pub tc: Summary,
    pub xdp_net: f64,
    pub tc_net: f64,
}

/// Batches of the repeated runs, and runs per batch (the kernel reports their
/// average), for the packet that changes nothing.
const BATCHES: u32 = 20;
const REPEAT: u32 = 10_000;

pub struct PacketCost {
    pub runs: u32,
    pub empty_xdp: Summary,
    pub empty_tc: Summary,
    /// How far two batches of the empty program's medians lie apart (the larger
    /// of XDP's and TC's): differences below it are noise.
    pub noise_ns: f64,
    pub rows: Vec<CostRow>,
    pub floors: Vec<Floor>,
}

/// The least a row's packet can cost as the design has it: a program that does
/// only what the design requires of it (XDP), timed as the rows are.
pub struct Floor {
    /// The row it is the least of.
    pub of: &'static str,
    pub program: &'static str,
    /// What the program does, for the report.
    pub does: &'static str,
    pub summary: Summary,
    /// Less the empty XDP program's median.
    pub net: f64,
}

const SYN_TO_CLOSED: &str = "a SYN to a CLOSED upstream (a flow starts)";
const SYN_RESET: &str = "a SYN answered with a reset (OPEN upstream)";

struct Pins(PinFolder);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.uninstall();
    }
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 7, 1, 2), port)
}

/// The kernel's time (ns) for one run of `program` on each frame.
fn times(
    kernel: &mut Kernel,
    program: &'static str,
    frames: &[Vec<u8>],
) -> anyhow::Result<Vec<f64>> {
    frames
        .iter()
        .map(|f| {
            kernel
                .run_packet(program, f, 1)
                .map(|r| r.per_run.as_nanos() as f64)
                .with_context(|| format!("running {program}"))
        })
        .collect()
}

pub fn packet_cost(plan: &Plan) -> anyhow::Result<PacketCost> {
    let runs = plan.packet_runs;
    let config = Config::parse(Path::new("bench-packet.toml"), CONFIG)?;
    let pins = Pins(PinFolder::new(format!(
        "/sys/fs/bpf/breaker-bench-packet-{}",
        std::process::id()
    )));
    let lock = pins.0.prepare_and_lock()?;
    let mut kernel = Kernel::load(&config, &pins.0)?;
    drop(lock);
    let ids = kernel.upstreams(&config);
    let dark = ids
        .iter()
        .find(|(_, u)| u.name == "dark")
        .map(|(id, _)| *id)
        .context("the dark upstream's id")?;
    let now = breaker::state::now_ms();
    kernel.states().update(dark, |_| Step {
        next: BreakerWord::pack(State::Open, now, 0, 0, 1),
        result: (),
    });

    // Distinct client ports: each SYN a new flow (the XDP and TC runs apart).
    let port = |i: u32, tc: bool| 1024 + (i % 30_000) as u16 + if tc { 30_000 } else { 0 };
    let data: Vec<Vec<u8>> = (0..runs)
        .map(|_| packets::data_v4(client(40_000), WEB, 1001, 5001))
        .collect();
    let syns = |to: SocketAddrV4, tc: bool| -> Vec<Vec<u8>> {
        (0..runs)
            .map(|i| packets::syn_v4(client(port(i, tc)), to, 1000 + i))
            .collect()
    };

    let empty = |kernel: &mut Kernel| -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        Ok((
            times(kernel, program_names::NOP_XDP, &data)?,
            times(kernel, program_names::NOP_TC, &data)?,
        ))
    };
    let (empty_xdp, empty_tc) = empty(&mut kernel)?;
    let mut rows = Vec::new();
    // A segment of an established flow changes nothing: the kernel's average over
    // a long repeat, batch by batch, is finer than a single run's clock.
    let segment = packets::data_v4(client(40_000), WEB, 1001, 5001);
    let mut averages = |program: &'static str| -> anyhow::Result<Summary> {
        let batches = (0..BATCHES)
            .map(|_| {
                kernel
                    .run_packet(program, &segment, REPEAT)
                    .map(|r| r.per_run.as_nanos() as f64)
                    .with_context(|| format!("running {program}"))
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        Ok(Summary::of(&batches))
    };
    let (xdp, tc) = (
        averages(program_names::XDP_INGRESS)?,
        averages(program_names::TC_INGRESS)?,
    );
    let (xdp_empty, tc_empty) = (
        averages(program_names::NOP_XDP)?,
        averages(program_names::NOP_TC)?,
    );
    rows.push(CostRow {
        case: "a segment of an established flow",
        target_ns: 20.0,
        xdp_net: xdp.p50 - xdp_empty.p50,
        tc_net: tc.p50 - tc_empty.p50,
        xdp,
        tc,
    });
    let cases = [
        (SYN_TO_CLOSED, 80.0, syns(WEB, false), syns(WEB, true)),
        (SYN_RESET, 150.0, syns(DARK, false), syns(DARK, true)),
    ];
    for (case, target_ns, xdp_frames, tc_frames) in cases {
        let xdp = Summary::of(&times(
            &mut kernel,
            program_names::XDP_INGRESS,
            &xdp_frames,
        )?);
        let tc = Summary::of(&times(&mut kernel, program_names::TC_INGRESS, &tc_frames)?);
        rows.push(CostRow {
            case,
            target_ns,
            xdp_net: xdp.p50 - Summary::of(&empty_xdp).p50,
            tc_net: tc.p50 - Summary::of(&empty_tc).p50,
            xdp,
            tc,
        });
    }
    // The floors, each from clients of its own: flows of their own, as each
    // case's.
    let mut floors = Vec::new();
    for (of, program, does, client_host, to) in [
        (
            SYN_TO_CLOSED,
            program_names::FLOW_FLOOR,
            "parses the SYN as `brk_xdp_ingress` does and inserts its flow into `PACKET_FLOWS` (the bounded LRU hash map the packet path keeps its flows in), nothing looked up or decided",
            3,
            WEB,
        ),
        (
            SYN_RESET,
            program_names::RESET_FLOOR,
            "parses the SYN, looks its ports up in `PACKET_FLOWS` (a SYN sent again is no new attempt) and writes the reset over it, no breaker asked",
            4,
            DARK,
        ),
    ] {
        let frames: Vec<Vec<u8>> = (0..runs)
            .map(|i| {
                let from = SocketAddrV4::new(Ipv4Addr::new(10, 7, 1, client_host), port(i, false));
                packets::syn_v4(from, to, 1000 + i)
            })
            .collect();
        let summary = Summary::of(&times(&mut kernel, program, &frames)?);
        floors.push(Floor {
            of,
            program,
            does,
            net: summary.p50 - Summary::of(&empty_xdp).p50,
            summary,
        });
    }
    // A second batch of the empty programs, after the others: how far apart two
    // measurements of the same thing lie in this run.
    let (again_xdp, again_tc) = empty(&mut kernel)?;
    let (empty_xdp, empty_tc) = (Summary::of(&empty_xdp), Summary::of(&empty_tc));
    let noise_ns = (Summary::of(&again_xdp).p50 - empty_xdp.p50)
        .abs()
        .max((Summary::of(&again_tc).p50 - empty_tc.p50).abs());
    Ok(PacketCost {
        runs,
        empty_xdp,
        empty_tc,
        noise_ns,
        rows,
        floors,
    })
}
