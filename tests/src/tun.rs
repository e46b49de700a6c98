//! A point-to-point L3 tunnel for tests: two tun devices (`ARPHRD_NONE`, no link-layer
//! header, like WireGuard) in two namespaces, joined by a userspace pump. Dropping the
//! [`TunPair`] stops the pump and closes the devices, which removes them.

use anyhow::{Context, Result, ensure};

use crate::topology::{Family, Lab};

/// A point-to-point L3 tunnel between two namespaces made of two tun devices
/// (`ARPHRD_NONE`, no link-layer header, like WireGuard) and a pump that copies packets
/// between them. Dropping it stops the pump and closes the devices.
pub struct TunPair {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for TunPair {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
    }
}

/// Creates tun device `name` in namespace `ns` (`IFF_TUN | IFF_NO_PI`) and returns its fd.
#[allow(unsafe_code)] // reason: setns(2) and the TUNSETIFF ioctl through libc
fn open_tun(ns: &crate::netns::Netns, name: &str) -> Result<std::fs::File> {
    let ns_path = ns.path();
    let name = name.to_owned();
    std::thread::spawn(move || -> Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        // This thread alone enters the namespace; the tun device is created there.
        let ns_file = std::fs::File::open(&ns_path)
            .with_context(|| format!("opening {}", ns_path.display()))?;
        // SAFETY: setns on an fd we own, for this thread only.
        ensure!(
            unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
            "setns: {}",
            std::io::Error::last_os_error()
        );
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads the ifreq we own.
        let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
        ensure!(
            ret == 0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        Ok(tun)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("tun thread panicked"))?
}

/// Copies packets from `from` to `to` until `stop` is set.
#[allow(unsafe_code)] // reason: poll(2) through libc
fn pump(
    from: std::fs::File,
    mut to: std::fs::File,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let mut from = from;
        let mut buf = vec![0u8; 65_536];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut fd = libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own; `from` stays open for the call.
            match unsafe { libc::poll(&mut fd, 1, 100) } {
                0 => continue,
                n if n < 0 => return,
                _ => {}
            }
            let Ok(n) = from.read(&mut buf) else { return };
            // A full queue on the other side drops the packet, as a tunnel would.
            let _ = to.write(&buf[..n]);
        }
    })
}

impl TunPair {
    /// Device namespace `d1` <-> router `t0`, both tun devices, with the device's enrolled
    /// address routed through it for the `audited` and `not_audited` servers.
    pub fn between_dev_and_router(lab: &Lab, fam: Family) -> Result<TunPair> {
        let dev_tun = open_tun(&lab.dev, "d1")?;
        let rtr_tun = open_tun(&lab.rtr, "t0")?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pumps = vec![
            pump(dev_tun.try_clone()?, rtr_tun.try_clone()?, stop.clone()),
            pump(rtr_tun, dev_tun, stop.clone()),
        ];
        let pair = TunPair { stop, pumps };
        let six = match fam {
            Family::V4 => "-4",
            Family::V6 => "-6",
        };
        lab.dev.ip(&["link", "set", "d1", "up"])?;
        lab.rtr.ip(&["link", "set", "t0", "up"])?;
        let enrolled = fam.enrolled().to_string();
        for server in [fam.audited(), fam.not_audited()] {
            let server = server.to_string();
            lab.dev
                .ip(&[six, "route", "add", &server, "dev", "d1", "src", &enrolled])?;
        }
        lab.rtr.ip(&[six, "route", "add", &enrolled, "dev", "t0"])?;
        Ok(pair)
    }
}
