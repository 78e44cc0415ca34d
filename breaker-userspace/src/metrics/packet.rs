//! The packet path's metrics: which interfaces it is attached to and how, and
//! what its programs did with the packets (`PACKET_COUNTERS`). Outcomes and
//! rejections are the upstreams' own counters, shared with the socket path.
use std::sync::Mutex;

use breaker_common::packet::PacketCounters;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::kernel::packet::Attached;

pub struct PacketMetrics {
    interfaces: IntGaugeVec,
    events: IntCounterVec,
    /// The counters as last read, from the running load's map (made anew at each
    /// load): the metric adds what they grew since.
    last: Mutex<PacketCounters>,
}

impl PacketMetrics {
    pub fn register(registry: &Registry) -> PacketMetrics {
        let interfaces = IntGaugeVec::new(
            Opts::new(
                "breaker_packet_interface_attached",
                "1 for each configured interface the packet path is attached to, labelled with how SYNs are looked at (xdp (native), xdp (generic), tc (tcx), tc (clsact)); 0 while it is missing.",
            ),
            &["interface", "ingress"],
        )
        .expect("static metric definition");
        let events = IntCounterVec::new(
            Opts::new(
                "breaker_packet_events_total",
                "What the packet path did, by event: syn_tracked, syn_retransmitted, reset_sent, syn_dropped, icmp_sent, flow_redirected, segment_rewritten (both ways), answer_matched, icmp_unmatched (an ICMP error quoting no flow: late or forged), flow_timed_out, flow_untracked (the flow table refused one), skipped (a packet it could not read, passed untouched).",
            ),
            &["event"],
        )
        .expect("static metric definition");
        for registered in [
            registry.register(Box::new(interfaces.clone())),
            registry.register(Box::new(events.clone())),
        ] {
            registered.expect("metric registered once");
        }
        for (event, _) in PacketCounters::default().events() {
            events.with_label_values(&[event]).inc_by(0);
        }
        PacketMetrics {
            interfaces,
            events,
            last: Mutex::new(PacketCounters::default()),
        }
    }

    /// A new load's counters start at zero.
    pub fn new_load(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = PacketCounters::default();
    }

    /// Adds what the kernel's counters grew since the last read.
    pub fn observe(&self, now: &PacketCounters) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for ((event, was), (_, is)) in last.events().into_iter().zip(now.events()) {
            self.events
                .with_label_values(&[event])
                .inc_by(is.saturating_sub(was));
        }
        *last = *now;
    }

    /// The configured interfaces and how each is attached (`None`: missing).
    pub fn set_interfaces(&self, interfaces: &[(String, Option<Attached>)]) {
        self.interfaces.reset();
        for (name, attached) in interfaces {
            match attached {
                Some(a) => self.interfaces.with_label_values(&[name, a.ingress]).set(1),
                None => self.interfaces.with_label_values(&[name, "none"]).set(0),
            }
        }
    }
}
