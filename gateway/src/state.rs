//! The live device table and policies.
//!
//! A change is validated whole, staged on disk, applied to the datapath maps, and only then
//! made current (file renamed into place, snapshot swapped). If any step fails, the maps
//! are restored and the previous state stays in force, on disk and in memory.
//! Every new snapshot is also published to the live sessions (`subscribe`), which re-judge
//! themselves against it: a revoked device or a blocking decision ends them, and their new
//! channels follow the current policy.
//!
//! Every writer (pushes, single-device changes, SIGHUP reloads, and the recording key
//! through [`LiveState::with_writer_lock`]) holds one lock from the moment it reads the
//! state it builds on until the new state is current, so no writer ever applies a state
//! that another has replaced in between.

use std::{
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use anyhow::{Context, Result};

use crate::{
    config::{Config, PrincipalMode},
    datapath::{Datapath, MatchSets, Switches},
    identity::IdentityIndex,
    identity::devices::{Device, DeviceTable},
    policy::eval::PolicyEngine,
    policy::model::PolicySet,
    util::json_file,
};

/// Everything connections are judged by, swapped as a unit.
pub struct Snapshot {
    pub devices: DeviceTable,
    pub policies: PolicySet,
    pub identities: IdentityIndex,
    pub engine: PolicyEngine,
    /// SHA-256 (hex) of the device table as stored and served: its ETag.
    pub devices_etag: String,
    /// SHA-256 (hex) of the policy set as stored and served: its ETag.
    pub policies_etag: String,
}

impl Snapshot {
    fn new(devices: DeviceTable, policies: PolicySet, principal: PrincipalMode) -> Self {
        Snapshot {
            identities: IdentityIndex::new(&devices, principal),
            engine: PolicyEngine::new(&policies),
            devices_etag: etag(&devices),
            policies_etag: etag(&policies),
            devices,
            policies,
        }
    }
}

fn etag<T: serde::Serialize>(value: &T) -> String {
    let bytes = json_file::to_bytes(value).expect("a state document always serializes");
    json_file::sha256_hex(&bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The input is not acceptable; nothing changed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The state is no longer the one the writer expected (`If-Match`); nothing changed.
    #[error("{0}")]
    Stale(String),
    /// Applying failed; the previous state is still in force.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

/// A writer's precondition (`If-Match`): which states it means to replace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is in force.
    #[default]
    Anything,
    /// Only a state with one of these ETags.
    OneOf(Vec<String>),
}

impl Expect {
    fn check(&self, current: &str, what: &str) -> Result<(), ApplyError> {
        match self {
            Expect::OneOf(tags) if !tags.iter().any(|t| t == current) => {
                Err(ApplyError::Stale(format!(
                    "the {what} changed since it was read (If-Match {}); it is now {current:?}: \
                     read it again and redo the change",
                    tags.iter()
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            _ => Ok(()),
        }
    }
}

pub struct LiveState {
    config: RwLock<Config>,
    current: RwLock<Arc<Snapshot>>,
    /// Serialises writers; readers never wait for it.
    writer: tokio::sync::Mutex<()>,
    datapath: Arc<Mutex<Option<Datapath>>>,
    /// Every snapshot made current, for the live sessions.
    changes: tokio::sync::watch::Sender<Arc<Snapshot>>,
}

/// Reads devices.json and policies.json from the state dir, and checks the device table
/// against the `[ssh]` principal settings.
pub fn load(config: &Config) -> Result<(DeviceTable, PolicySet)> {
    let path = config.devices_path();
    let devices = DeviceTable::load(&path)?;
    devices
        .check_principals(&config.ssh)
        .with_context(|| format!("invalid {}", path.display()))?;
    Ok((devices, PolicySet::load(&config.policies_path())?))
}

pub fn match_sets(config: &Config, devices: &DeviceTable, policies: &PolicySet) -> MatchSets {
    MatchSets {
        enrolled: devices.addresses().collect(),
        audited: policies.audited_networks().map(|n| n.0).collect(),
        ports: config.datapath.ports.iter().copied().collect(),
        switches: Switches::of(&config.datapath),
    }
}

enum Change {
    Devices(DeviceTable),
    Policies(PolicySet),
    Both(DeviceTable, PolicySet),
}

impl LiveState {
    pub fn new(
        config: Config,
        devices: DeviceTable,
        policies: PolicySet,
        datapath: Arc<Mutex<Option<Datapath>>>,
    ) -> Self {
        let snapshot = Arc::new(Snapshot::new(devices, policies, config.ssh.principal));
        let (changes, _) = tokio::sync::watch::channel(snapshot.clone());
        LiveState {
            config: RwLock::new(config),
            current: RwLock::new(snapshot),
            writer: tokio::sync::Mutex::new(()),
            datapath,
            changes,
        }
    }

    /// Receives every snapshot made current from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Snapshot>> {
        self.changes.subscribe()
    }

    /// The config in force (the startup one plus what reloads changed).
    pub fn config(&self) -> Config {
        self.config.read().expect("config lock poisoned").clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("state lock poisoned").clone()
    }

    /// Runs `f` as a writer: no push, reload or other writer runs meanwhile.
    pub async fn with_writer_lock<T>(&self, f: impl FnOnce() -> T) -> T {
        let _writer = self.writer.lock().await;
        f()
    }

    pub async fn replace_devices(
        &self,
        table: DeviceTable,
        expect: &Expect,
    ) -> Result<Arc<Snapshot>, ApplyError> {
        table
            .validate()
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let _writer = self.writer.lock().await;
        expect.check(&self.snapshot().devices_etag, "device table")?;
        self.apply_locked(&self.config(), Change::Devices(table))
    }

    pub async fn replace_policies(
        &self,
        set: PolicySet,
        expect: &Expect,
    ) -> Result<Arc<Snapshot>, ApplyError> {
        set.validate()
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let _writer = self.writer.lock().await;
        expect.check(&self.snapshot().policies_etag, "policy set")?;
        self.apply_locked(&self.config(), Change::Policies(set))
    }

    pub async fn upsert_device(
        &self,
        device: Device,
        expect: &Expect,
    ) -> Result<Arc<Snapshot>, ApplyError> {
        let _writer = self.writer.lock().await;
        let current = self.snapshot();
        expect.check(&current.devices_etag, "device table")?;
        let next = current
            .devices
            .upsert(device)
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        self.apply_locked(&self.config(), Change::Devices(next))
    }

    pub async fn delete_device(
        &self,
        id: &str,
        expect: &Expect,
    ) -> Result<Arc<Snapshot>, ApplyError> {
        let _writer = self.writer.lock().await;
        let current = self.snapshot();
        expect.check(&current.devices_etag, "device table")?;
        let next = current
            .devices
            .without(id)
            .ok_or_else(|| ApplyError::NotFound(format!("no device with id {id:?}")))?;
        self.apply_locked(&self.config(), Change::Devices(next))
    }

    /// Re-reads both files (SIGHUP) and takes `config`, the re-read configuration (its
    /// datapath ports and switches), with them. The files are read under the writer lock,
    /// so a push that commits meanwhile is either read or waited for, never undone. An
    /// invalid file leaves everything as it was, the configuration included.
    pub async fn reload(&self, config: Config) -> Result<Arc<Snapshot>, ApplyError> {
        let _writer = self.writer.lock().await;
        let (devices, policies) =
            load(&config).map_err(|e| ApplyError::Invalid(format!("{e:#}")))?;
        let next = self.apply_locked(&config, Change::Both(devices, policies))?;
        *self.config.write().expect("config lock poisoned") = config;
        Ok(next)
    }

    fn apply_locked(&self, config: &Config, change: Change) -> Result<Arc<Snapshot>, ApplyError> {
        let current = self.snapshot();
        let internal = ApplyError::Internal;
        let (devices, policies, staged) = match change {
            Change::Devices(d) => {
                d.check_principals(&config.ssh)
                    .map_err(|e| ApplyError::Invalid(e.to_string()))?;
                let staged = stage(&config.devices_path(), &d)?;
                (d, current.policies.clone(), vec![staged])
            }
            Change::Policies(p) => {
                let staged = stage(&config.policies_path(), &p)?;
                (current.devices.clone(), p, vec![staged])
            }
            // Reloaded from disk: the files already hold this state.
            Change::Both(d, p) => (d, p, vec![]),
        };
        let sets = match_sets(config, &devices, &policies);
        sets.check_capacity()
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        {
            let mut guard = self.datapath.lock().expect("datapath lock poisoned");
            if let Some(dp) = guard.as_mut() {
                dp.update(&sets).map_err(internal)?;
            }
        }
        for file in staged {
            if let Err(e) = file.commit() {
                // Put the maps back so they match what is still on disk and in memory.
                let old = match_sets(config, &current.devices, &current.policies);
                if let Some(dp) = self
                    .datapath
                    .lock()
                    .expect("datapath lock poisoned")
                    .as_mut()
                {
                    let _ = dp.update(&old);
                }
                return Err(internal(e));
            }
        }
        let next = Arc::new(Snapshot::new(devices, policies, config.ssh.principal));
        tracing::info!(
            devices = next.devices.devices.len(),
            policies = next.policies.policies.len(),
            enrolled = sets.enrolled.len(),
            audited = sets.audited.len(),
            devices_etag = %next.devices_etag,
            policies_etag = %next.policies_etag,
            "applied new device table and policies"
        );
        *self.current.write().expect("state lock poisoned") = next.clone();
        self.changes.send_replace(next.clone());
        Ok(next)
    }
}

fn stage<T: serde::Serialize>(
    path: &Path,
    value: &T,
) -> Result<crate::util::fs::Staged, ApplyError> {
    json_file::stage(path, value).map_err(ApplyError::Internal)
}
