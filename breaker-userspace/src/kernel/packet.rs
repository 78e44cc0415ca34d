//! The packet path as the daemon drives it: its programs on the watched
//! interfaces, the sweep that ends flows past their timeout (in the kernel, by
//! `brk_flow_expire`), its counters, and its programs under BPF_PROG_TEST_RUN for
//! the tests and the bench.
use std::{os::fd::AsFd, time::Duration};

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{
        links::FdLink,
        tc::{self, SchedClassifierLinkId, TcAttachType},
        xdp::XdpLinkId,
        SchedClassifier, TestRun, TestRunOptions, Xdp, XdpMode,
    },
};
use breaker_common::{
    abi::{map_names, program_names, UpstreamPolicy, RESOLVE_QUERY_OFFSET},
    packet::{
        timed_out, ExpireQuery, FlowKey, FlowRecord, PacketCounters, ENDED_FLOW_KEPT_SECS,
        EXPIRE_COUNTED, FLOW_ENDED, FLOW_TRIAL,
    },
};

use super::{
    interface_pins::{self, InterfacePin, Role},
    links::fd_link,
    map_err, prog_err, program, Kernel, KernelError,
};
use crate::config::{Hook, Interface};

/// Where a watched interface's SYNs are looked at, as attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub interface: String,
    /// "xdp (native)", "xdp (generic)", "tc (tcx)" or "tc (clsact)".
    pub ingress: &'static str,
    /// "tc (tcx)" or "tc (clsact)".
    pub egress: &'static str,
}

/// The links of one attached interface, to detach them when it goes.
#[derive(Debug)]
pub struct InterfaceLinks {
    pub attached: Attached,
    /// The interface index attached to: another index under the same name is a
    /// new interface (a VM restarted recreates its tap), to attach again.
    ifindex: u32,
    /// Links this `Kernel` holds (clsact filters; none once pinned).
    xdp: Option<XdpLinkId>,
    tc_ingress: Option<SchedClassifierLinkId>,
    tc_egress: Option<SchedClassifierLinkId>,
    /// Links pinned in `links/` (XDP and TCX), which outlive the daemon.
    pinned: Vec<InterfacePin>,
}

/// What one pass over the configured interfaces found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterfaceChange {
    Attached(Attached),
    /// Pinned links taken over: this load's programs swapped in under them.
    TakenOver(Attached),
    /// Gone since the last pass (its links went with it).
    Gone(String),
    /// A pin of its links removed by another hand, which took the link along,
    /// or a link detached (`bpftool link detach`): attached again in the same
    /// pass.
    Unpinned(String),
    /// Could not attach: the interface, and why.
    Failed(String, String),
}

/// One run of a packet program under BPF_PROG_TEST_RUN.
#[derive(Clone, Debug)]
pub struct PacketRun {
    pub return_value: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// The kernel's time per run (of `repeat`).
    pub per_run: Duration,
}

impl Kernel {
    /// Loads (verifies) the packet path's programs, if not yet.
    pub fn load_packet_programs(&mut self) -> Result<(), KernelError> {
        let xdp: &mut Xdp = program(&mut self.ebpf, program_names::XDP_INGRESS)?;
        if xdp.fd().is_err() {
            xdp.load().map_err(prog_err(program_names::XDP_INGRESS))?;
        }
        for name in [
            program_names::TC_INGRESS,
            program_names::TC_EGRESS,
            program_names::FLOW_EXPIRE,
        ] {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            if prog.fd().is_err() {
                prog.load().map_err(prog_err(name))?;
            }
        }
        Ok(())
    }

    /// Brings the packet path's links in line with the configured interfaces:
    /// attaches to each that exists and is not attached (or was recreated since),
    /// and forgets those that went. Ingress as the interface's hook says (`auto`:
    /// XDP, native then generic, then TC), egress as TC. On 6.6+ the links are
    /// pinned and taken over from an earlier daemon; clsact filters belong to
    /// this `Kernel` and go with it. Returns what changed.
    pub fn sync_interfaces(&mut self, interfaces: &[Interface]) -> Vec<InterfaceChange> {
        let mut changes = Vec::new();
        // Pins of an interface not watched (any more), or of one since
        // recreated: their links go (a link on a removed interface is defunct).
        for pin in interface_pins::pinned(&self.pins) {
            let current = interfaces.iter().any(|i| i.name == pin.interface)
                && ifindex(&pin.interface) == Some(pin.ifindex);
            if !current {
                interface_pins::remove(&self.pins, &pin);
            }
        }
        if interfaces.is_empty() && self.interface_links.is_empty() {
            return changes;
        }
        if let Err(e) = self.load_packet_programs() {
            // An earlier daemon's programs would go on under the pins with
            // that daemon's config: gone, fail open.
            for pin in interface_pins::pinned(&self.pins) {
                interface_pins::remove(&self.pins, &pin);
            }
            changes.extend(
                interfaces
                    .iter()
                    .map(|i| InterfaceChange::Failed(i.name.clone(), e.to_string())),
            );
            return changes;
        }
        for link in std::mem::take(&mut self.interface_links) {
            let wanted = interfaces.iter().any(|i| i.name == link.attached.interface);
            // A pin removed by hand took its link along, and a link detached
            // by hand runs nothing: attach again.
            let links_live = link
                .pinned
                .iter()
                .all(|p| interface_pins::live(&self.pins, p));
            if wanted && links_live && ifindex(&link.attached.interface) == Some(link.ifindex) {
                self.interface_links.push(link);
                continue;
            }
            let name = link.attached.interface.clone();
            let recreated = ifindex(&name) != Some(link.ifindex);
            self.detach_interface(link);
            if wanted {
                changes.push(if recreated || links_live {
                    InterfaceChange::Gone(name)
                } else {
                    InterfaceChange::Unpinned(name)
                });
            }
        }
        for iface in interfaces {
            if self
                .interface_links
                .iter()
                .any(|l| l.attached.interface == iface.name)
            {
                continue;
            }
            let Some(index) = ifindex(&iface.name) else {
                continue;
            };
            // Left pinned by an earlier daemon or generation: these programs
            // swapped in under them, no moment unwatched.
            if let Some(links) = self.adopt_interface(iface, index) {
                changes.push(InterfaceChange::TakenOver(links.attached.clone()));
                self.interface_links.push(links);
                continue;
            }
            match self.attach_interface(iface, index) {
                Ok(links) => {
                    changes.push(InterfaceChange::Attached(links.attached.clone()));
                    self.interface_links.push(links);
                }
                Err(e) => changes.push(InterfaceChange::Failed(iface.name.clone(), e.to_string())),
            }
        }
        changes
    }

    /// The interfaces attached now.
    pub fn attached_interfaces(&self) -> Vec<Attached> {
        self.interface_links
            .iter()
            .map(|l| l.attached.clone())
            .collect()
    }

    /// Before a reload attaches its own programs: detaches the links this
    /// `Kernel` holds (clsact filters), and leaves the pinned ones running for
    /// the new programs to be swapped in under them.
    pub fn release_interfaces(&mut self) {
        for mut link in std::mem::take(&mut self.interface_links) {
            link.pinned.clear();
            self.detach_interface(link);
        }
    }

    /// Detaches one interface's links, pinned ones too. A link whose interface
    /// went is gone already: detaching it again changes nothing.
    fn detach_interface(&mut self, link: InterfaceLinks) {
        for pin in &link.pinned {
            interface_pins::remove(&self.pins, pin);
        }
        if let Some(id) = link.xdp {
            if let Ok(xdp) = program::<Xdp>(&mut self.ebpf, program_names::XDP_INGRESS) {
                let _ = xdp.detach(id);
            }
        }
        if let Some(id) = link.tc_ingress {
            if let Ok(tc) = program::<SchedClassifier>(&mut self.ebpf, program_names::TC_INGRESS) {
                let _ = tc.detach(id);
            }
        }
        if let Some(id) = link.tc_egress {
            if let Ok(tc) = program::<SchedClassifier>(&mut self.ebpf, program_names::TC_EGRESS) {
                let _ = tc.detach(id);
            }
        }
    }

    /// Takes over the links an earlier daemon (or generation) pinned for
    /// interface `iface` at `index`, running this `Kernel`'s programs under
    /// them. None, with those pins removed, when there are none, when they do
    /// not suit the interface's hook now, or when a swap fails: the caller
    /// attaches anew.
    fn adopt_interface(&mut self, iface: &Interface, index: u32) -> Option<InterfaceLinks> {
        let found: Vec<InterfacePin> = interface_pins::pinned(&self.pins)
            .into_iter()
            .filter(|p| p.interface == iface.name && p.ifindex == index)
            .collect();
        if found.is_empty() {
            return None;
        }
        let ingress: Vec<Role> = found
            .iter()
            .map(|p| p.role)
            .filter(|r| *r != Role::TcEgress)
            .collect();
        let egress = found.iter().any(|p| p.role == Role::TcEgress);
        // Only what `attach_interface` could pick now: a redirect (which needs
        // TC) and `hook = "tc"` take TC, `auto` never generic XDP nor XDP on a
        // veth, `hook = "xdp"` XDP.
        let veth = driver(&iface.name).is_some_and(|d| d == "veth");
        let suits = match (ingress.as_slice(), iface.hook) {
            ([Role::TcIngress], hook) => self.packet_nat || hook != Hook::Xdp,
            (_, _) if self.packet_nat => false,
            ([Role::XdpNative], Hook::Xdp) | ([Role::XdpGeneric], Hook::Xdp) => true,
            ([Role::XdpNative], Hook::Auto) => !veth,
            _ => false,
        };
        let swapped = suits
            && egress
            && found.iter().all(|pin| {
                let fd = self
                    .ebpf
                    .program(pin.role.program())
                    .and_then(|p| p.fd().ok());
                fd.is_some_and(|fd| {
                    interface_pins::swap(&self.pins, pin, fd.as_fd())
                        .inspect_err(|e| {
                            tracing::warn!(interface = %iface.name, error = %e, "a pinned interface link could not take the new program: attaching anew")
                        })
                        .is_ok()
                })
            });
        if !swapped {
            for pin in &found {
                interface_pins::remove(&self.pins, pin);
            }
            return None;
        }
        Some(InterfaceLinks {
            attached: Attached {
                interface: iface.name.clone(),
                ingress: ingress[0].label(),
                egress: Role::TcEgress.label(),
            },
            ifindex: index,
            xdp: None,
            tc_ingress: None,
            tc_egress: None,
            pinned: found,
        })
    }

    /// Pins the XDP and TCX links of a freshly attached interface, on 6.6+
    /// only: before, its TC programs are clsact filters, no links, and an
    /// interface's links are pinned all or none (an XDP ingress left running
    /// without its egress would track flows nothing ends). On an error every
    /// link of the interface is detached.
    fn pin_interface(&mut self, links: &mut InterfaceLinks, tcx: bool) -> Result<(), KernelError> {
        if !tcx {
            return Ok(());
        }
        let name = links.attached.interface.clone();
        let mut made: Vec<(InterfacePin, FdLink)> = Vec::new();
        let mut taken = || -> Result<(), KernelError> {
            if let Some(id) = links.xdp.take() {
                let role = if links.attached.ingress == Role::XdpNative.label() {
                    Role::XdpNative
                } else {
                    Role::XdpGeneric
                };
                let xdp: &mut Xdp = program(&mut self.ebpf, program_names::XDP_INGRESS)?;
                let link = xdp
                    .take_link(id)
                    .map_err(prog_err(program_names::XDP_INGRESS))?;
                made.push((
                    InterfacePin::new(role, links.ifindex, &name),
                    fd_link(role.program(), link)?,
                ));
            }
            for (role, id) in [
                (Role::TcIngress, links.tc_ingress.take()),
                (Role::TcEgress, links.tc_egress.take()),
            ] {
                let Some(id) = id else { continue };
                let tc: &mut SchedClassifier = program(&mut self.ebpf, role.program())?;
                let link = tc.take_link(id).map_err(prog_err(role.program()))?;
                made.push((
                    InterfacePin::new(role, links.ifindex, &name),
                    fd_link(role.program(), link)?,
                ));
            }
            Ok(())
        };
        let result = taken();
        // Until pinned, each taken link lives only in `made`: an error drops
        // (detaches) them, and the rest go below.
        // Egress first: a daemon killed in between leaves no ingress tracking
        // flows that nothing ends.
        made.sort_by_key(|(pin, _)| pin.role != Role::TcEgress);
        let result = result.and_then(|()| {
            for (pin, link) in made.drain(..) {
                interface_pins::pin(&self.pins, &pin, link)?;
                links.pinned.push(pin);
            }
            Ok(())
        });
        if result.is_err() {
            drop(made);
            let failed = InterfaceLinks {
                attached: links.attached.clone(),
                ifindex: links.ifindex,
                xdp: links.xdp.take(),
                tc_ingress: links.tc_ingress.take(),
                tc_egress: links.tc_egress.take(),
                pinned: std::mem::take(&mut links.pinned),
            };
            self.detach_interface(failed);
        }
        result
    }

    fn attach_interface(
        &mut self,
        iface: &Interface,
        index: u32,
    ) -> Result<InterfaceLinks, KernelError> {
        let name = iface.name.as_str();
        let fail = |reason: String| KernelError::Interface {
            interface: name.to_string(),
            reason,
        };
        // The programs read Ethernet frames: on an L3 device (tun, WireGuard,
        // GRE) they would take IP addresses for MAC addresses and ethertypes.
        match link_type(name) {
            Some(ARPHRD_ETHER) => {}
            other => {
                return Err(fail(format!(
                "not an Ethernet interface (link type {}): the packet path reads Ethernet frames",
                other.map_or("unknown".to_string(), |t| t.to_string())
            )))
            }
        }
        let tcx = tcx_links();
        let tc_kind = if tcx { "tc (tcx)" } else { "tc (clsact)" };
        if !tcx {
            // clsact filters are no links: a daemon that died left its own
            // behind, still running. Ours go before ours come.
            for (hook, program) in [
                (TcAttachType::Ingress, program_names::TC_INGRESS),
                (TcAttachType::Egress, program_names::TC_EGRESS),
            ] {
                if tc::qdisc_detach_program(name, hook, program).is_ok() {
                    tracing::warn!(
                        interface = name,
                        program,
                        "removed a filter left behind by an earlier daemon"
                    );
                }
            }
        }
        if !tcx {
            // clsact may be there already (ours from before, or someone else's).
            if let Err(e) = tc::qdisc_add_clsact(name) {
                let exists = matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
                if !exists {
                    return Err(fail(format!("adding the clsact qdisc: {e}")));
                }
            }
        }
        let mut ingress = None;
        let mut xdp_link = None;
        let mut xdp_refusal = String::new();
        // Generic XDP copies every non-linear packet (GSO aggregates of 64 KiB)
        // and drops it when that copy fails: `auto` takes native XDP or TC, never
        // generic. On a veth native XDP_TX reaches the peer only when the peer
        // runs XDP too: `auto` takes TC there.
        let veth = driver(name).is_some_and(|d| d == "veth");
        // A redirect's rewrites need TC's checksum helpers: a tap's frames may
        // carry offloaded (partial) checksums, which XDP cannot tell from whole
        // ones. check-config refuses `hook = "xdp"` beside a redirect; NAT maps
        // kept from an earlier config keep an explicit one on TC too.
        if self.packet_nat && iface.hook == Hook::Xdp {
            tracing::warn!(
                interface = name,
                "hook = \"xdp\", but redirected flows may still be going: SYNs are looked at with TC"
            );
        }
        let modes: &[(XdpMode, &'static str)] = match (iface.hook, veth) {
            _ if self.packet_nat => &[],
            (Hook::Tc, _) | (Hook::Auto, true) => &[],
            (Hook::Auto, false) => &[(XdpMode::Driver, "xdp (native)")],
            (Hook::Xdp, true) => &[(XdpMode::Skb, "xdp (generic)")],
            (Hook::Xdp, false) => &[
                (XdpMode::Driver, "xdp (native)"),
                (XdpMode::Skb, "xdp (generic)"),
            ],
        };
        if !modes.is_empty() {
            let xdp: &mut Xdp = program(&mut self.ebpf, program_names::XDP_INGRESS)?;
            for &(mode, kind) in modes {
                match xdp.attach_to_if_index(index, mode) {
                    Ok(id) => {
                        ingress = Some(kind);
                        xdp_link = Some(id);
                        break;
                    }
                    Err(e) => xdp_refusal = format!("{e}"),
                }
            }
            match (ingress, iface.hook) {
                (None, Hook::Xdp) => {
                    return Err(fail(format!(
                        "hook = \"xdp\", but XDP cannot be attached (another XDP program there?): {xdp_refusal}"
                    )))
                }
                (None, _) => tracing::warn!(
                    interface = name,
                    reason = %xdp_refusal,
                    "native XDP cannot be attached (no driver support, or another XDP program there): SYNs are looked at with TC instead"
                ),
                _ => {}
            }
        }
        let mut tc_ingress = None;
        if ingress.is_none() {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, program_names::TC_INGRESS)?;
            let id = prog.attach(name, TcAttachType::Ingress).map_err(|e| {
                fail(format!(
                    "attaching {} at TC ingress: {e}",
                    program_names::TC_INGRESS
                ))
            })?;
            tc_ingress = Some(id);
            ingress = Some(tc_kind);
        }
        let prog: &mut SchedClassifier = program(&mut self.ebpf, program_names::TC_EGRESS)?;
        let attached = prog.attach(name, TcAttachType::Egress);
        let tc_egress = match attached {
            Ok(id) => id,
            Err(e) => {
                // Half attached is not attached: take the ingress back.
                if let Some(id) = xdp_link {
                    if let Ok(xdp) = program::<Xdp>(&mut self.ebpf, program_names::XDP_INGRESS) {
                        let _ = xdp.detach(id);
                    }
                }
                if let Some(id) = tc_ingress {
                    if let Ok(tc) =
                        program::<SchedClassifier>(&mut self.ebpf, program_names::TC_INGRESS)
                    {
                        let _ = tc.detach(id);
                    }
                }
                return Err(fail(format!(
                    "attaching {} at TC egress: {e}",
                    program_names::TC_EGRESS
                )));
            }
        };
        let mut links = InterfaceLinks {
            attached: Attached {
                interface: name.to_string(),
                ingress: ingress.unwrap_or(tc_kind),
                egress: tc_kind,
            },
            ifindex: index,
            xdp: xdp_link,
            tc_ingress,
            tc_egress: Some(tc_egress),
            pinned: Vec::new(),
        };
        self.pin_interface(&mut links, tcx)
            .map_err(|e| fail(format!("pinning its links: {}", chain(&e))))?;
        Ok(links)
    }

    /// Ends every flow that has waited past its timeout for an answer: the
    /// upstream's `connect_timeout` (the kernel's first SYN RTO, 1 s, without
    /// one), or a trial's `trial_connect_timeout`. The kernel decides with its own
    /// clock and counts each flow once. Returns how many timed out.
    pub fn expire_flows(&mut self) -> Result<usize, KernelError> {
        let Some(map) = self.ebpf.map(map_names::PACKET_FLOWS) else {
            return Err(KernelError::MissingMap {
                name: map_names::PACKET_FLOWS,
            });
        };
        let flows: HashMap<_, FlowKey, FlowRecord> =
            HashMap::try_from(map).map_err(map_err(map_names::PACKET_FLOWS))?;
        let candidates: Vec<(FlowKey, FlowRecord)> = flows.iter().filter_map(Result::ok).collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let now = self.jiffies()?;
        let policies: Array<_, UpstreamPolicy> = Array::try_from(
            self.ebpf
                .map(map_names::POLICIES)
                .ok_or(KernelError::MissingMap {
                    name: map_names::POLICIES,
                })?,
        )
        .map_err(map_err(map_names::POLICIES))?;
        // One read of each upstream's policy per sweep, not one per flow.
        let mut known = std::collections::HashMap::new();
        let mut stale = Vec::new();
        let grace = STALE_FLOW_SECS.saturating_mul(self.hz.max(1));
        let due: Vec<ExpireQuery> = candidates
            .into_iter()
            .filter_map(|(flow, record)| {
                let policy = *known
                    .entry(record.upstream)
                    .or_insert_with(|| policies.get(&record.upstream, 0).unwrap_or_default());
                let timeout = flow_timeout(&policy, &record, self.hz);
                if timed_out(
                    record.started_jiffies,
                    now as u64,
                    timeout.saturating_add(grace),
                ) {
                    stale.push(flow);
                    return None;
                }
                timed_out(record.started_jiffies, now as u64, timeout).then_some(ExpireQuery {
                    flow,
                    timeout_jiffies: timeout,
                    _pad: 0,
                })
            })
            .collect();
        // Flows past their timeout by seconds were not swept in time: no
        // daemon ran (the pinned programs went on tracking), or this one
        // stalled. Their timeouts are old news; counted now, in a burst, they
        // could trip an upstream that has answered since. Forgotten (fail
        // open).
        if !stale.is_empty() {
            if let Some(map) = self.ebpf.map_mut(map_names::PACKET_FLOWS) {
                if let Ok(mut flows) = HashMap::<_, FlowKey, FlowRecord>::try_from(map) {
                    for flow in &stale {
                        let _ = flows.remove(flow);
                    }
                }
            }
            tracing::debug!(
                flows = stale.len(),
                "flows past their timeout by {STALE_FLOW_SECS} s forgotten, not counted"
            );
        }
        let mut counted = 0;
        for query in due {
            let run = self.run_classifier(program_names::FLOW_EXPIRE, &query_frame(&query), 1)?;
            if run.return_value == EXPIRE_COUNTED {
                counted += 1;
            }
        }
        Ok(counted)
    }

    /// The packet path's own counters, summed over CPUs.
    pub fn packet_counters(&self) -> Result<PacketCounters, KernelError> {
        let map = self
            .ebpf
            .map(map_names::PACKET_COUNTERS)
            .ok_or(KernelError::MissingMap {
                name: map_names::PACKET_COUNTERS,
            })?;
        let per_cpu: PerCpuArray<_, PacketCounters> =
            PerCpuArray::try_from(map).map_err(map_err(map_names::PACKET_COUNTERS))?;
        let values = per_cpu
            .get(&0, 0)
            .map_err(map_err(map_names::PACKET_COUNTERS))?;
        Ok(values.iter().fold(PacketCounters::default(), |sum, c| {
            sum.zip(c, u64::wrapping_add)
        }))
    }

    /// Runs packet program `name` (XDP or TC) on `frame` under
    /// BPF_PROG_TEST_RUN, `repeat` times, over this kernel's maps.
    pub fn run_packet(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<PacketRun, KernelError> {
        self.load_packet_programs()?;
        if [
            program_names::XDP_INGRESS,
            program_names::NOP_XDP,
            program_names::FLOW_FLOOR,
            program_names::RESET_FLOOR,
        ]
        .contains(&name)
        {
            let prog: &mut Xdp = program(&mut self.ebpf, name)?;
            if prog.fd().is_err() {
                prog.load().map_err(prog_err(name))?;
            }
            run(prog, name, frame, repeat)
        } else {
            self.run_classifier(name, frame, repeat)
        }
    }

    fn run_classifier(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<PacketRun, KernelError> {
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(prog_err(name))?;
        }
        run(prog, name, frame, repeat)
    }

    /// The kernel's jiffies, low 32 bits, as the programs read them.
    fn jiffies(&mut self) -> Result<u32, KernelError> {
        let run = self.run_classifier(program_names::JIFFIES, &[0u8; RESOLVE_QUERY_OFFSET], 1)?;
        Ok(run.return_value)
    }
}

fn run<P>(
    prog: &mut P,
    name: &'static str,
    frame: &[u8],
    repeat: u32,
) -> Result<PacketRun, KernelError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    // Room for a program that grows the packet; ours only shrink it.
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ..TestRunOptions::new()
        })
        .map_err(prog_err(name))?;
    out.truncate(result.data_size_out as usize);
    Ok(PacketRun {
        return_value: result.return_value,
        data: out,
        per_run: result.duration,
    })
}

/// How far past its timeout a flow may be swept and still count (the sweep
/// runs every 100 ms): beyond, it waited through a daemon's absence.
const STALE_FLOW_SECS: u32 = 2;

/// How long flow `record` may wait for an answer, in jiffies.
fn flow_timeout(policy: &UpstreamPolicy, record: &FlowRecord, hz: u32) -> u32 {
    if record.flags & FLOW_ENDED != 0 {
        // Counted already: kept only for its retransmitted SYNs.
        return ENDED_FLOW_KEPT_SECS.saturating_mul(hz.max(1));
    }
    let jiffies = if record.flags & FLOW_TRIAL != 0 {
        // A trial socket's budget is three of its initial RTOs (one SYN, one
        // retransmission at twice the first): the same for a trial flow.
        policy.trial_rto_jiffies.saturating_mul(3)
    } else {
        policy.connect_rto_jiffies
    };
    if jiffies > 0 {
        jiffies
    } else {
        // The kernel's initial SYN RTO: 1 s.
        hz.max(1)
    }
}

/// The packet of a `brk_flow_expire` run: the query after an Ethernet-sized gap.
fn query_frame(q: &ExpireQuery) -> Vec<u8> {
    let mut data = vec![0u8; RESOLVE_QUERY_OFFSET];
    // SAFETY: ExpireQuery is repr(C) plain integers; its bytes are its wire form.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(q).cast::<u8>(),
            std::mem::size_of::<ExpireQuery>(),
        )
    };
    data.extend_from_slice(bytes);
    data
}

/// The interface's index, if it exists.
pub(super) fn ifindex(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `ARPHRD_ETHER`: an Ethernet (or Ethernet-like: veth, tap, bridge) device.
const ARPHRD_ETHER: u16 = 1;

/// The link type (ARPHRD_*) of interface `name`, asked in this network namespace.
fn link_type(name: &str) -> Option<u16> {
    #[repr(C)]
    struct IfReqHwAddr {
        name: [u8; libc::IFNAMSIZ],
        family: u16,
        data: [u8; 22],
    }
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut req = IfReqHwAddr {
        name: [0; libc::IFNAMSIZ],
        family: 0,
        data: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq it is given, which lives on.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut req) };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    (rc == 0).then_some(req.family)
}

/// The driver of interface `name` (ETHTOOL_GDRVINFO), if it says.
fn driver(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: DrvInfo is plain integers; all zero is a valid value.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_drvinfo.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Whether TC programs attach as TCX links (6.6+) rather than clsact filters.
fn tcx_links() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}
