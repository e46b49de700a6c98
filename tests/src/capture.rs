//! Packet capture with tcpdump inside a lab namespace.
//!
//! ```ignore
//! let cap = lab.capture(&lab.dev, "d0", &syn_ack_filter(Family::V4.audited(), 22), 1)?;
//! lab.ssh(...).run("true")?;
//! let pkts = cap.wait(Duration::from_secs(5))?;
//! assert_eq!(pkts[0].ttl(), Some(64));
//! ```

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::process::{Proc, describe_status};
use crate::topology::Lab;

/// How long tcpdump may take to start capturing.
pub const CAPTURE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One packet as printed by `tcpdump -nn -v` (continuation lines joined with a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub text: String,
}

impl Packet {
    /// The IPv4 `ttl N` or IPv6 `hlim N` value.
    pub fn ttl(&self) -> Option<u8> {
        self.field("ttl").or_else(|| self.field("hlim"))
    }

    /// The numeric value following `name ` (e.g. `ttl 64,`).
    pub fn field(&self, name: &str) -> Option<u8> {
        let mut words = self
            .text
            .split(|c: char| c.is_whitespace() || c == '(' || c == ',');
        while let Some(w) = words.next() {
            if w == name {
                return words.find(|w| !w.is_empty())?.parse().ok();
            }
        }
        None
    }

    /// TCP flags as printed (`S`, `S.`, `P.`, `R.`, ...).
    pub fn tcp_flags(&self) -> Option<&str> {
        let rest = &self.text[self.text.find("Flags [")? + 7..];
        Some(&rest[..rest.find(']')?])
    }

    /// True for a SYN-ACK.
    pub fn is_syn_ack(&self) -> bool {
        self.tcp_flags() == Some("S.")
    }

    /// True if the packet's source is `addr.port` (tcpdump notation).
    pub fn is_from(&self, addr: IpAddr, port: u16) -> bool {
        self.text.contains(&format!(" {addr}.{port} > "))
    }
}

/// Groups `tcpdump -v` output into packets: a packet starts with a non-indented line.
pub fn parse_packets(output: &str) -> Vec<Packet> {
    let mut packets: Vec<Packet> = Vec::new();
    for line in output.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace)
            && let Some(last) = packets.last_mut()
        {
            last.text.push(' ');
            last.text.push_str(line.trim());
            continue;
        }
        packets.push(Packet {
            text: line.trim().to_owned(),
        });
    }
    packets
}

/// A pcap filter for TCP SYN-ACKs sent from `addr`:`port`. Works for IPv6 too (libpcap's
/// `tcp[...]` does not support IPv6; this assumes no IPv6 extension headers).
pub fn syn_ack_filter(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!(
            "src host {a} and tcp src port {port} and tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)"
        ),
        IpAddr::V6(a) => {
            format!("ip6 and src host {a} and tcp src port {port} and ip6[40+13] & 0x12 == 0x12")
        }
    }
}

/// A pcap filter for TCP SYNs (without ACK) sent to `addr`:`port`.
pub fn syn_filter(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!(
            "dst host {a} and tcp dst port {port} and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"
        ),
        IpAddr::V6(a) => {
            format!("ip6 and dst host {a} and tcp dst port {port} and ip6[40+13] & 0x12 == 0x02")
        }
    }
}

/// A running `tcpdump -l -nn -v -i IF FILTER -c COUNT`.
pub struct Capture {
    proc: Proc,
    count: usize,
}

impl Lab {
    /// Starts tcpdump on `iface` in `ns` and waits until it is capturing ("listening on").
    /// It exits by itself after `count` packets.
    pub fn capture(&self, ns: &Netns, iface: &str, filter: &str, count: usize) -> Result<Capture> {
        let mut cmd = ns.exec_command("tcpdump");
        // -Z root: keep root, so the parent-death signal survives (see process.rs).
        cmd.args([
            "-l",
            "-nn",
            "-v",
            "-Z",
            "root",
            "-i",
            iface,
            "-c",
            &count.to_string(),
            filter,
        ]);
        let proc = self
            .procs()
            .spawn(&format!("tcpdump@{}:{iface}", ns.name()), &mut cmd)?;
        proc.wait_for_log("listening on", CAPTURE_READY_TIMEOUT)
            .context("tcpdump did not start capturing")?;
        Ok(Capture { proc, count })
    }
}

impl Capture {
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Packets captured so far.
    pub fn packets(&self) -> Vec<Packet> {
        parse_packets(&self.proc.stdout_text())
    }

    /// Waits (bounded) until tcpdump has captured its `count` packets and exited.
    pub fn wait(&self, timeout: Duration) -> Result<Vec<Packet>> {
        match self.proc.wait_exit(timeout) {
            Ok(status) if status.success() => Ok(self.packets()),
            Ok(status) => bail!(
                "tcpdump failed ({}): {}",
                describe_status(status),
                self.proc.stderr_text().trim_end()
            ),
            Err(err) => {
                let got = self.packets();
                let _ = self.proc.kill();
                Err(err.context(format!(
                    "tcpdump captured {} of {} packets: {got:#?}",
                    got.len(),
                    self.count
                )))
            }
        }
    }

    /// Stops tcpdump and returns what it captured.
    pub fn stop(&self) -> Vec<Packet> {
        let _ = self.proc.kill();
        self.packets()
    }
}
