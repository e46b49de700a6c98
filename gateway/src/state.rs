//! The live device table and policies.
//!
//! A change is validated whole, staged on disk, applied to the datapath maps, and only then
//! made current (file renamed into place, snapshot swapped). If any step fails, the maps
//! are restored and the previous state stays in force, on disk and in memory.
//! Established sessions keep the snapshot they were admitted with; only new connections
//! see a change.

use std::{
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use anyhow::Result;

use crate::{
    config::Config,
    datapath::{Datapath, MatchSets, Switches},
    devices::{Device, DeviceTable},
    identity::IdentityIndex,
    json_file,
    policies::PolicySet,
    policy_eval::PolicyEngine,
};

/// Everything connections are judged by, swapped as a unit.
pub struct Snapshot {
    pub devices: DeviceTable,
    pub policies: PolicySet,
    pub identities: IdentityIndex,
    pub engine: PolicyEngine,
}

impl Snapshot {
    fn new(devices: DeviceTable, policies: PolicySet) -> Self {
        Snapshot {
            identities: IdentityIndex::new(&devices),
            engine: PolicyEngine::new(&policies),
            devices,
            policies,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The input is not acceptable; nothing changed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// Applying failed; the previous state is still in force.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

pub struct LiveState {
    config: RwLock<Config>,
    current: RwLock<Arc<Snapshot>>,
    /// Serialises writers; readers never wait for it.
    writer: tokio::sync::Mutex<()>,
    datapath: Arc<Mutex<Option<Datapath>>>,
}

/// Reads devices.json and policies.json from the state dir.
pub fn load(config: &Config) -> Result<(DeviceTable, PolicySet)> {
    Ok((
        DeviceTable::load(&config.devices_path())?,
        PolicySet::load(&config.policies_path())?,
    ))
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
        LiveState {
            config: RwLock::new(config),
            current: RwLock::new(Arc::new(Snapshot::new(devices, policies))),
            writer: tokio::sync::Mutex::new(()),
            datapath,
        }
    }

    /// Takes a re-read config: its datapath ports and switches apply with the next change.
    pub fn set_config(&self, config: Config) {
        *self.config.write().expect("config lock poisoned") = config;
    }

    /// The config in force (the startup one plus what reloads changed).
    pub fn config(&self) -> Config {
        self.config.read().expect("config lock poisoned").clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("state lock poisoned").clone()
    }

    pub async fn replace_devices(&self, table: DeviceTable) -> Result<(), ApplyError> {
        table
            .validate()
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        self.apply(Change::Devices(table)).await
    }

    pub async fn replace_policies(&self, set: PolicySet) -> Result<(), ApplyError> {
        set.validate()
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        self.apply(Change::Policies(set)).await
    }

    pub async fn upsert_device(&self, device: Device) -> Result<(), ApplyError> {
        let _writer = self.writer.lock().await;
        let next = self
            .snapshot()
            .devices
            .upsert(device)
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        self.apply_locked(Change::Devices(next))
    }

    pub async fn delete_device(&self, id: &str) -> Result<(), ApplyError> {
        let _writer = self.writer.lock().await;
        let next = self
            .snapshot()
            .devices
            .without(id)
            .ok_or_else(|| ApplyError::NotFound(format!("no device with id {id:?}")))?;
        self.apply_locked(Change::Devices(next))
    }

    /// Re-reads both files (SIGHUP). An invalid file leaves everything as it was.
    pub async fn reload(&self) -> Result<(), ApplyError> {
        let (devices, policies) =
            load(&self.config()).map_err(|e| ApplyError::Invalid(format!("{e:#}")))?;
        self.apply(Change::Both(devices, policies)).await
    }

    async fn apply(&self, change: Change) -> Result<(), ApplyError> {
        let _writer = self.writer.lock().await;
        self.apply_locked(change)
    }

    fn apply_locked(&self, change: Change) -> Result<(), ApplyError> {
        let config = self.config();
        let current = self.snapshot();
        let internal = ApplyError::Internal;
        let (devices, policies, staged) = match change {
            Change::Devices(d) => {
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
        let sets = match_sets(&config, &devices, &policies);
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
                let old = match_sets(&config, &current.devices, &current.policies);
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
        let next = Arc::new(Snapshot::new(devices, policies));
        tracing::info!(
            devices = next.devices.devices.len(),
            policies = next.policies.policies.len(),
            enrolled = sets.enrolled.len(),
            audited = sets.audited.len(),
            "applied new device table and policies"
        );
        *self.current.write().expect("state lock poisoned") = next;
        Ok(())
    }
}

fn stage<T: serde::Serialize>(path: &Path, value: &T) -> Result<json_file::Staged, ApplyError> {
    json_file::stage(path, value).map_err(ApplyError::Internal)
}
