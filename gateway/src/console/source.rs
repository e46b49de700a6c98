//! Where sessions come from: this router's session log (read-only, beside the daemon) or
//! the central PostgreSQL index (`--central`, with an auditor's role).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::query::Query;
use crate::{
    central::{connect::Target, search},
    config::Config,
    sessions::{SessionRecord, store},
};

pub enum Source {
    Local {
        log: PathBuf,
        router: Option<String>,
    },
    Central {
        target: Box<Target>,
        /// One connection, made again when it breaks.
        client: Mutex<Option<Client>>,
    },
}

/// A session as the API gives it.
pub struct Found {
    pub router: Option<String>,
    pub session: SessionRecord,
}

impl Source {
    pub fn local(config: &Config) -> Result<Source> {
        let log = config.session_log_path();
        store::open_read_only(&log)
            .with_context(|| "the console reads the daemon's session log (or use --central)")?;
        Ok(Source::Local {
            log,
            router: config.router_id().map(str::to_string),
        })
    }

    pub async fn central(config: &Config) -> Result<Source> {
        let central = config
            .central
            .as_ref()
            .context("--central: the config has no [central] section")?;
        let target = Target::from_config(central)?;
        let client = target.connect().await?;
        Ok(Source::Central {
            target: Box::new(target),
            client: Mutex::new(Some(client)),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Source::Local { .. } => "local",
            Source::Central { .. } => "central",
        }
    }

    pub fn router(&self) -> Option<&str> {
        match self {
            Source::Local { router, .. } => router.as_deref(),
            Source::Central { .. } => None,
        }
    }

    /// `{"count", "sessions"}`: the number of matches and the newest `q.limit` of them.
    pub async fn list(&self, q: &Query) -> Result<Value> {
        let (count, sessions) = match self {
            Source::Local { log, router } => {
                let Some(filter) = q.local(router.as_deref()) else {
                    return Ok(json!({ "count": 0, "sessions": [] }));
                };
                let (log, router) = (log.clone(), router.clone());
                blocking(move || {
                    let conn = store::open_read_only(&log)?;
                    let count = store::count_in(&conn, &filter)?;
                    let sessions = store::list_in(&conn, &filter)?;
                    let ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
                    let ops = store::file_op_counts_in(&conn, &ids)?;
                    let rows = sessions
                        .into_iter()
                        .map(|s| {
                            let n = ops.get(&s.id).copied().unwrap_or(0);
                            summary(router.as_deref(), &s, n)
                        })
                        .collect::<Vec<_>>();
                    Ok((count, rows))
                })
                .await?
            }
            Source::Central { .. } => {
                let query = q.central();
                self.with_client(async |client| {
                    let count = search::count(client, &query).await?;
                    let found = search::list(client, &query).await?;
                    let keys: Vec<(String, String)> = found
                        .iter()
                        .map(|c| (c.router_id.clone(), c.session.id.clone()))
                        .collect();
                    let ops = search::file_op_counts(client, &keys).await?;
                    let rows = found
                        .iter()
                        .zip(&keys)
                        .map(|(c, key)| {
                            let n = ops.get(key).copied().unwrap_or(0);
                            summary(Some(&c.router_id), &c.session, n)
                        })
                        .collect::<Vec<_>>();
                    Ok((count, rows))
                })
                .await?
            }
        };
        Ok(json!({ "count": count, "sessions": sessions }))
    }

    /// Start (µs), user and destination of the newest `limit` sessions matching `q`.
    pub async fn starts(
        &self,
        q: &Query,
        limit: u32,
    ) -> Result<Vec<(i64, Option<String>, String)>> {
        match self {
            Source::Local { log, router } => {
                let Some(filter) = q.local(router.as_deref()) else {
                    return Ok(vec![]);
                };
                let log = log.clone();
                blocking(move || store::starts_in(&store::open_read_only(&log)?, &filter, limit))
                    .await
            }
            Source::Central { .. } => {
                let mut query = q.central();
                query.limit = limit;
                self.with_client(async |client| search::starts(client, &query).await)
                    .await
            }
        }
    }

    /// One session with its channels and file operations; `router` picks one in the
    /// central index when routers share an id.
    pub async fn show(&self, id: &str, router: Option<&str>) -> Result<Option<Found>> {
        match self {
            Source::Local { log, router: ours } => {
                if router.is_some_and(|r| Some(r) != ours.as_deref()) {
                    return Ok(None);
                }
                let (log, id, ours) = (log.clone(), id.to_string(), ours.clone());
                let session =
                    blocking(move || store::get_in(&store::open_read_only(&log)?, &id)).await?;
                Ok(session.map(|session| Found {
                    router: ours,
                    session,
                }))
            }
            Source::Central { .. } => {
                let (id, router) = (id.to_string(), router.map(str::to_string));
                let found = self
                    .with_client(async |client| search::show(client, &id, router.as_deref()).await)
                    .await?;
                Ok(found.map(|c| Found {
                    router: Some(c.router_id),
                    session: c.session,
                }))
            }
        }
    }

    /// Runs `f` with the central connection, connecting first if there is none or it broke.
    async fn with_client<T>(&self, f: impl AsyncFnOnce(&Client) -> Result<T>) -> Result<T> {
        let Source::Central { target, client } = self else {
            unreachable!("with_client on the local source");
        };
        let mut slot = client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            *slot = Some(target.connect().await?);
        }
        f(slot.as_ref().expect("connected")).await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("session log reader panicked")?
}

/// A session row of the list: the record, its router and how many file operations it has.
fn summary(router: Option<&str>, session: &SessionRecord, file_ops: u64) -> Value {
    let mut value = serde_json::to_value(session).expect("a session record serializes");
    value["router_id"] = json!(router);
    value["file_op_count"] = json!(file_ops);
    value
}

/// A session with its channels (each saying whether it has a recording) and file
/// operations, both always present.
pub fn detail(found: &Found) -> Value {
    let mut value = summary(
        found.router.as_deref(),
        &found.session,
        found.session.file_ops.len() as u64,
    );
    let channels: Vec<Value> = found
        .session
        .channels
        .iter()
        .map(|c| {
            let mut channel = serde_json::to_value(c).expect("a channel serializes");
            channel["has_recording"] = json!(c.recording.is_some() || c.recording_object.is_some());
            channel
        })
        .collect();
    value["channels"] = json!(channels);
    value["file_ops"] = serde_json::to_value(&found.session.file_ops).expect("file ops serialize");
    value
}
