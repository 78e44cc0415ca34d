//! A slow upstream: a TUN device in the client namespace that answers every TCP
//! SYN routed into it with a SYN-ACK after a delay chosen per destination, so a
//! connect succeeds, late. Nothing else is answered: the client's ACK, data and
//! FIN go nowhere, which a connect-time test does not need.
//!
//! This machine's kernels have no netem (nor fq for timed departures), so a real
//! upstream behind veth cannot be slowed down; a userspace answerer can.
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use etherparse::{IpNumber, Ipv4HeaderSlice, PacketBuilder, TcpHeaderSlice};

use crate::netns::Netns;

/// The sequence number the upstream's SYN-ACKs start from (any will do).
const UPSTREAM_ISN: u32 = 0x5eed_0000;

/// Starts an answerer named `name` (a device name) in `netns`, routing `prefix`
/// (an IPv4 CIDR) into it. Each SYN to an address and port is answered after
/// `delay(address, port)`, until the namespace goes away.
pub fn start(
    netns: &Netns,
    name: &'static str,
    prefix: &str,
    delay: impl Fn(Ipv4Addr, u16) -> Duration + Send + 'static,
) -> anyhow::Result<()> {
    let iface = Arc::new(netns.tun(name, prefix)?);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        // Ends when the namespace, and with it the device, is removed.
        while let Ok(n) = iface.recv(&mut buf) {
            let Some((to, port, reply)) = syn_ack(&buf[..n]) else {
                continue;
            };
            let wait = delay(to, port);
            let iface = iface.clone();
            // One thread per SYN: a slow answer never holds up a fast one.
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                let _ = iface.send(&reply);
            });
        }
    });
    Ok(())
}

/// The SYN-ACK answering `packet` with its destination address and port, or
/// `None` when it is not an IPv4 TCP SYN.
fn syn_ack(packet: &[u8]) -> Option<(Ipv4Addr, u16, Vec<u8>)> {
    let ip = Ipv4HeaderSlice::from_slice(packet).ok()?;
    if ip.protocol() != IpNumber::TCP {
        return None;
    }
    let tcp = TcpHeaderSlice::from_slice(packet.get(ip.slice().len()..)?).ok()?;
    if !tcp.syn() || tcp.ack() {
        return None;
    }
    let builder = PacketBuilder::ipv4(ip.destination(), ip.source(), 64)
        .tcp(
            tcp.destination_port(),
            tcp.source_port(),
            UPSTREAM_ISN,
            64_000,
        )
        .syn()
        .ack(tcp.sequence_number().wrapping_add(1));
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).ok()?;
    Some((ip.destination_addr(), tcp.destination_port(), out))
}
