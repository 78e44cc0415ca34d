//! A router, a TUN device in the client namespace, that answers every IPv4 packet
//! routed into it with an ICMP destination-unreachable error, after a delay.
//!
//! That is how a hard ICMP error reaches a host from a router an RTT away. A router
//! namespace behind veth cannot show it: its error comes back within the SYN's own
//! softirq, while connect() still holds the socket, and the kernel then acts on it
//! only at the first RTO.
use std::{net::Ipv4Addr, time::Duration};

use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, Ipv4HeaderSlice, PacketBuilder};

use crate::netns::Netns;

/// The router's own address: the source of its ICMP errors.
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 77, 8, 254);
/// What ICMP errors carry of the packet they answer (RFC 792: its IP header and
/// the first 8 bytes of its payload, which hold the TCP ports and sequence number).
const QUOTED_PAYLOAD: usize = 8;

/// Starts a router named `name` (a device name) in `netns`, routing `prefix` (an
/// IPv4 CIDR) into it. It answers each packet with `code` after `delay`, until the
/// namespace goes away.
pub fn start(
    netns: &Netns,
    name: &'static str,
    prefix: &str,
    code: DestUnreachableHeader,
    delay: Duration,
) -> anyhow::Result<()> {
    let iface = netns.tun(name, prefix)?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        // Ends when the namespace, and with it the device, is removed.
        while let Ok(n) = iface.recv(&mut buf) {
            if let Some(reply) = unreachable(&buf[..n], code.clone()) {
                std::thread::sleep(delay);
                let _ = iface.send(&reply);
            }
        }
    });
    Ok(())
}

/// The ICMP error answering `packet`, or `None` when it is not IPv4.
fn unreachable(packet: &[u8], code: DestUnreachableHeader) -> Option<Vec<u8>> {
    let header = Ipv4HeaderSlice::from_slice(packet).ok()?;
    let quoted = &packet[..(header.slice().len() + QUOTED_PAYLOAD).min(packet.len())];
    let builder = PacketBuilder::ipv4(ROUTER.octets(), header.source(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(code));
    let mut out = Vec::with_capacity(builder.size(quoted.len()));
    builder.write(&mut out, quoted).ok()?;
    Some(out)
}
