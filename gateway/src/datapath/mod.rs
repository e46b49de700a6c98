//! The kernel datapath: the TC program on the device-facing interfaces, its pinned maps
//! and links, and the policy routing that delivers intercepted packets locally.

mod bpffs;
#[cfg(test)]
mod classifier_tests;
mod links;
pub mod maps;
mod object;
pub mod pinned;
pub mod routing;

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};
use gateway_common::{INTERCEPT_MARK_GLOBAL, programs};

use crate::config::DatapathConfig;
pub use links::InterfaceStatus;
use links::{AttachedNames, Presence};
pub use maps::{Counters, FlowIngress, MatchSets, Switches};
use pinned::{all_maps_dirs, links_dir, maps_dir, remove_pins, unpin_dir};
use routing::Routing;

/// Interface checks that failed without a definite answer (the program stayed attached);
/// exported as `sshgw_datapath_interface_check_errors_total`.
pub static INTERFACE_CHECK_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How often a failing interface check is logged, per interface.
const CHECK_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A running datapath owned by this daemon.
pub struct Datapath {
    ebpf: Ebpf,
    sets: MatchSets,
    links: Vec<links::AttachedLink>,
    routing: Routing,
    pin_dir: PathBuf,
    /// Per interface: when a failed check was last logged, and how many failed since.
    check_log: HashMap<String, (Option<Instant>, u64)>,
    /// Names of the attached interfaces by index, shared with [`FlowIngress`].
    names: AttachedNames,
}

/// One of the object's TC programs ([`programs`]).
fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("eBPF object has no TC program {name}"))?
        .try_into()?)
}

fn routing_of(cfg: &DatapathConfig) -> Routing {
    Routing {
        mark: cfg.intercept_mark,
        table: cfg.route_table,
        priority: cfg.rule_priority,
    }
}

/// Checks that the pin directory is on a host-shared bpffs and creates it, this build's
/// maps directory (returned) and the links directory.
fn prepare_pins(cfg: &DatapathConfig) -> Result<PathBuf> {
    bpffs::ensure(&cfg.pin_dir)?;
    bpffs::check_host_shared(&cfg.pin_dir, cfg.allow_private_bpffs)?;
    let maps_pins = maps_dir(&cfg.pin_dir)?;
    for dir in [
        cfg.pin_dir.clone(),
        maps_pins.clone(),
        links_dir(&cfg.pin_dir),
    ] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create pin directory {}", dir.display()))?;
    }
    Ok(maps_pins)
}

/// Attaches (or takes over) the link of every configured interface that exists now; one
/// that does not yet is attached when it appears.
fn attach_configured(ebpf: &mut Ebpf, cfg: &DatapathConfig) -> Result<Vec<links::AttachedLink>> {
    let mut attached = Vec::new();
    for name in &cfg.interfaces {
        let index = match links::presence(name) {
            Presence::Index(index) => index,
            Presence::Gone => {
                tracing::warn!(interface = %name, "datapath interface does not exist yet; it is attached when it appears");
                continue;
            }
            Presence::Unknown(errno) => {
                anyhow::bail!("cannot look up datapath interface {name}: {errno}")
            }
        };
        let variant = links::program_for(name);
        let link = links::attach(
            program(ebpf, variant)?,
            &links_dir(&cfg.pin_dir),
            name,
            index,
        )?;
        tracing::info!(
            interface = %name,
            link_id = link.link_id,
            program_id = link.program_id,
            program = variant,
            "datapath attached"
        );
        attached.push(link);
    }
    Ok(attached)
}

/// Once every link runs this build's program: unpins older builds' maps (unused now) and
/// detaches the links of interfaces no longer configured.
fn retire_stale_pins(cfg: &DatapathConfig, maps_pins: &Path) -> Result<()> {
    for old in all_maps_dirs(&cfg.pin_dir)
        .into_iter()
        .filter(|d| *d != maps_pins)
    {
        tracing::info!(dir = %old.display(), "unpinning the maps of the replaced program");
        unpin_dir(&old)?;
    }
    for stale in links::stale_pins(&links_dir(&cfg.pin_dir), &cfg.interfaces)? {
        tracing::warn!(pin = %stale.display(), "detaching link of an interface no longer configured");
        std::fs::remove_file(&stale)
            .with_context(|| format!("cannot remove {}", stale.display()))?;
    }
    Ok(())
}

impl Datapath {
    /// Loads the program with the pinned maps, fills the maps and listener slots, installs
    /// routing, then attaches (or takes over) the links. Once this returns, audited flows
    /// from enrolled devices reach the listeners.
    pub async fn start(
        cfg: &DatapathConfig,
        sets: &MatchSets,
        listener_v4: Option<&impl AsRawFd>,
        listener_v6: Option<&impl AsRawFd>,
    ) -> Result<Self> {
        let maps_pins = prepare_pins(cfg)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_pins)
            .override_global(INTERCEPT_MARK_GLOBAL, &cfg.intercept_mark, true)
            .load(object::bytes()?)
            .context("cannot load the eBPF program")?;

        sets.check_capacity()?;
        maps::sync(&mut ebpf, sets)?;
        maps::set_listeners(&mut ebpf, listener_v4, listener_v6)?;

        let routing = routing_of(cfg);
        let handle = routing::connect().await?;
        routing.install(&handle).await?;

        for name in programs::ALL {
            program(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel verifier rejected the TC program {name}"))?;
        }
        let attached = attach_configured(&mut ebpf, cfg)?;
        retire_stale_pins(cfg, &maps_pins)?;
        let names = AttachedNames::of(&attached);
        Ok(Datapath {
            ebpf,
            sets: sets.clone(),
            links: attached,
            routing,
            pin_dir: cfg.pin_dir.clone(),
            check_log: HashMap::new(),
            names,
        })
    }

    /// Keeps every configured interface attached: an interface that was deleted and
    /// re-created (`wg-quick down/up`) has a new index and a defunct link, and one that
    /// did not exist at start may have appeared. Called every second by the daemon.
    ///
    /// A link is detached only when the kernel says the name is unknown (`ENODEV`) or now
    /// belongs to another device. A lookup that fails otherwise (`EMFILE` while a device
    /// floods the daemon with connections) keeps the program attached: it is logged at
    /// most once a minute per interface and counted in [`INTERFACE_CHECK_ERRORS`].
    pub fn reconcile(&mut self, interfaces: &[String]) -> Result<()> {
        let links_dir = links_dir(&self.pin_dir);
        for name in interfaces {
            let slot = self.links.iter().position(|l| &l.interface == name);
            let index = match links::presence(name) {
                Presence::Index(index) => Some(index),
                Presence::Gone => None,
                Presence::Unknown(errno) => {
                    self.check_failed(name, errno, slot.is_some());
                    continue;
                }
            };
            if let (Some(index), Some(pos)) = (index, slot)
                && self.links[pos].ifindex == index
            {
                continue;
            }
            if let Some(pos) = slot {
                let old = self.links.remove(pos);
                let why = match index {
                    None => "the datapath interface is gone (no such device); detaching its link",
                    Some(_) => "the datapath interface was re-created (new index); attaching anew",
                };
                tracing::warn!(interface = %name, "{why}");
                old.detach()?;
            }
            if let Some(index) = index {
                let variant = links::program_for(name);
                let prog = program(&mut self.ebpf, variant)?;
                let link = links::attach(prog, &links_dir, name, index)?;
                tracing::info!(interface = %name, link_id = link.link_id, program = variant, "datapath attached to the interface");
                self.links.push(link);
            }
            self.names.set(&self.links);
        }
        Ok(())
    }

    /// Counts a failed interface check and logs it, at most once per
    /// [`CHECK_LOG_INTERVAL`] and interface.
    fn check_failed(&mut self, name: &str, errno: nix::errno::Errno, attached: bool) {
        INTERFACE_CHECK_ERRORS.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let (last, failed) = self.check_log.entry(name.to_owned()).or_default();
        *failed += 1;
        if last.is_some_and(|at| now.duration_since(at) < CHECK_LOG_INTERVAL) {
            return;
        }
        tracing::warn!(
            interface = %name,
            error = %errno,
            failed_checks = *failed,
            attached,
            "cannot look up the datapath interface; keeping its program attached"
        );
        *last = Some(now);
        *failed = 0;
    }

    /// Replaces the match sets (enrolled sources, audited destinations, ports). On failure
    /// the maps are put back as they were, so the program never runs on a half-applied set.
    pub fn update(&mut self, sets: &MatchSets) -> Result<()> {
        sets.check_capacity()?;
        if let Err(e) = maps::sync(&mut self.ebpf, sets) {
            if let Err(undo) = maps::sync(&mut self.ebpf, &self.sets) {
                tracing::error!(error = %format!("{undo:#}"), "cannot restore the previous datapath sets");
            }
            return Err(e);
        }
        self.sets = sets.clone();
        Ok(())
    }

    /// The per-flow ingress interface records (taken once, shared with the listeners).
    pub fn flow_ingress(&mut self) -> Result<FlowIngress> {
        FlowIngress::take(&mut self.ebpf, self.names.clone())
    }

    pub fn counters(&self) -> Result<Counters> {
        maps::counters(&self.ebpf)
    }

    pub fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.links
            .iter()
            .map(|l| InterfaceStatus {
                name: l.interface.clone(),
                link_id: l.link_id,
                program_id: l.program_id,
            })
            .collect()
    }

    /// Clean shutdown: detach every link, remove routing and unpin everything, so the
    /// router forwards as if sshgw had never run.
    pub async fn remove(self) -> Result<()> {
        let Datapath {
            ebpf,
            sets: _,
            links,
            routing,
            pin_dir,
            check_log: _,
            names: _,
        } = self;
        for link in links {
            link.detach()?;
        }
        let handle = routing::connect().await?;
        routing.remove(&handle).await?;
        drop(ebpf);
        remove_pins(&pin_dir)
    }
}

/// Removes what a stopped daemon left in the kernel (`on_stop = "keep"`, or a crash):
/// detaches the pinned links, deletes the routing and unpins the maps. Returns whether
/// anything was pinned.
pub async fn remove_pinned(cfg: &DatapathConfig) -> Result<bool> {
    let pinned = bpffs::has_pins(&cfg.pin_dir);
    let handle = routing::connect().await?;
    routing_of(cfg).remove(&handle).await?;
    remove_pins(&cfg.pin_dir)?;
    Ok(pinned)
}
