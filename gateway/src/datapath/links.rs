//! TCX links of the TC program, pinned per interface so they outlive the daemon.
//!
//! A pinned link keeps the program attached after a crash (the program then drops audited
//! SYNs because the SOCKMAP is empty). A starting daemon swaps its program into the
//! existing link atomically (`bpf_link_update`), so there is no moment without a program.
//!
//! A link is given up only on a definite answer from the kernel: the interface name is
//! unknown (`ENODEV`) or resolves to another device, or the link itself is defunct
//! (`ENOLINK`). Any other failure (say `EMFILE` while a device floods the daemon with
//! connections) leaves the program attached.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result, bail};
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
};
use nix::errno::Errno;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub link_id: u32,
    pub program_id: u32,
}

/// One attached interface.
#[derive(Debug)]
pub struct AttachedLink {
    pub interface: String,
    /// The interface's index when attached: a re-created interface gets a new one.
    pub ifindex: u32,
    pub link_id: u32,
    pub program_id: u32,
    pin: PathBuf,
}

fn pin_path(links_dir: &Path, interface: &str) -> PathBuf {
    links_dir.join(interface)
}

/// Attaches (or takes over) the program on `interface`, whose index is `ifindex`, and pins
/// the link.
pub fn attach(
    prog: &mut SchedClassifier,
    links_dir: &Path,
    interface: &str,
    ifindex: u32,
) -> Result<AttachedLink> {
    let pin = pin_path(links_dir, interface);
    let link_id = match take_over(prog, &pin, interface)? {
        Some(id) => id,
        None => {
            // First attach: go before other TCX programs so none can pass the flow on.
            let id = prog
                .attach_with_options(
                    interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .with_context(|| {
                    format!("cannot attach the TC program to {interface} (TCX needs Linux >= 6.6)")
                })?;
            let link = prog.take_link(id)?;
            let fd: FdLink = link
                .try_into()
                .with_context(|| format!("the link on {interface} is not a TCX link"))?;
            let pinned = fd
                .pin(&pin)
                .with_context(|| format!("cannot pin link at {}", pin.display()))?;
            return describe(FdLink::from(pinned), interface, ifindex, pin);
        }
    };
    let link = prog.take_link(link_id)?;
    let fd: FdLink = link
        .try_into()
        .context("taken-over link is not a TCX link")?;
    describe(fd, interface, ifindex, pin)
}

/// Swaps our program into a link pinned by an earlier daemon. `None` when there is no
/// usable pinned link (none yet, or its interface went away).
fn take_over(
    prog: &mut SchedClassifier,
    pin: &Path,
    interface: &str,
) -> Result<Option<aya::programs::tc::SchedClassifierLinkId>> {
    if !pin.exists() {
        return Ok(None);
    }
    let pinned = PinnedLink::from_pin(pin)
        .with_context(|| format!("cannot open pinned link {}", pin.display()))?;
    let fd = FdLink::from(pinned);
    let link = match SchedClassifierLink::try_from(fd) {
        Ok(link) => link,
        Err(e) => bail!("{} is not a TCX link: {e}", pin.display()),
    };
    match prog.attach_to_link(link) {
        Ok(id) => {
            tracing::info!(interface, "took over the pinned datapath link");
            Ok(Some(id))
        }
        // A link whose interface was deleted cannot be updated (ENOLINK); start afresh.
        Err(e) if os_error(&e) == Some(Errno::ENOLINK as i32) => {
            tracing::warn!(interface, error = %e, "pinned link is defunct; attaching a new one");
            std::fs::remove_file(pin)
                .with_context(|| format!("cannot remove stale pin {}", pin.display()))?;
            Ok(None)
        }
        // Anything else says nothing about the link: it stays pinned, running the old
        // program, which still fails closed.
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot swap the new program into the pinned link {} (it stays attached)",
                pin.display()
            )
        }),
    }
}

/// The OS error code somewhere in an error's chain of sources.
fn os_error(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        cur = e.source();
    }
    None
}

fn describe(fd: FdLink, interface: &str, ifindex: u32, pin: PathBuf) -> Result<AttachedLink> {
    let info = fd.info().context("cannot read link info")?;
    // The pin keeps the link alive; our fd is no longer needed.
    drop(fd);
    Ok(AttachedLink {
        interface: interface.to_string(),
        ifindex,
        link_id: info.id(),
        program_id: info.program_id(),
        pin,
    })
}

/// Pins of links for interfaces that are no longer configured.
pub fn stale_pins(links_dir: &Path, keep: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return Ok(out);
    };
    for entry in entries {
        let entry = entry?;
        if !keep.iter().any(|k| entry.file_name() == k.as_str()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

impl AttachedLink {
    /// Detaches: removing the pin drops the last reference to the link.
    pub fn detach(self) -> Result<()> {
        std::fs::remove_file(&self.pin)
            .with_context(|| format!("cannot remove pinned link {}", self.pin.display()))
    }
}

/// The program variant for `interface`, from its link type (`ARPHRD_*`): headers are read
/// in place behind an Ethernet header, at offset 0 on devices without a link-layer header
/// (WireGuard, tun), and by a helper on anything else.
pub fn program_for(interface: &str) -> &'static str {
    use gateway_common::programs;
    match link_type(interface) {
        Some(libc::ARPHRD_ETHER) => programs::ETHERNET,
        Some(libc::ARPHRD_NONE) => programs::L3,
        _ => programs::GENERIC,
    }
}

/// The link type of `interface` (`SIOCGIFHWADDR`), in this network namespace.
#[allow(unsafe_code)] // reason: socket(2) and the SIOCGIFHWADDR ioctl through libc
fn link_type(interface: &str) -> Option<u16> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = interface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain socket(2); the fd is owned (and closed) by `sock`.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and fills ifr_hwaddr of the ifreq we own.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if ret < 0 {
        return None;
    }
    // SAFETY: the kernel filled the ifr_hwaddr member.
    Some(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// What the kernel says about an interface name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// It exists, with this index.
    Index(u32),
    /// "No such device": the name is unknown in this network namespace.
    Gone,
    /// The lookup failed for another reason (`EMFILE`: no descriptor for the ioctl socket,
    /// `ENOMEM`, ...), which says nothing about the interface.
    Unknown(Errno),
}

/// Looks `interface` up (`if_nametoindex`, an ioctl on a fresh socket).
pub fn presence(interface: &str) -> Presence {
    match nix::net::if_::if_nametoindex(interface) {
        Ok(index) => Presence::Index(index),
        Err(Errno::ENODEV) => Presence::Gone,
        Err(e) => Presence::Unknown(e),
    }
}

/// The names of the attached interfaces by index, kept by the datapath as it attaches and
/// detaches them. Intercepted flows only ever arrive on those, so naming their ingress needs no
/// syscall (and no file descriptor, which a flood may have used up).
#[derive(Debug, Clone, Default)]
pub struct AttachedNames(Arc<RwLock<HashMap<u32, String>>>);

impl AttachedNames {
    pub fn of(links: &[AttachedLink]) -> Self {
        let names = AttachedNames::default();
        names.set(links);
        names
    }

    pub fn set(&self, links: &[AttachedLink]) {
        let map = links
            .iter()
            .map(|l| (l.ifindex, l.interface.clone()))
            .collect();
        *self.0.write().expect("interface names lock poisoned") = map;
    }

    /// The name of interface `ifindex`: an attached one, else asked of the kernel.
    pub fn name(&self, ifindex: u32) -> Option<String> {
        let known = self
            .0
            .read()
            .expect("interface names lock poisoned")
            .get(&ifindex)
            .cloned();
        known.or_else(|| interface_name(ifindex))
    }
}

/// The name of interface `ifindex` in this network namespace.
#[allow(unsafe_code)] // reason: if_indextoname(3) through libc
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if ptr.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}
