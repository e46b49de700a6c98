//! The daemon's shipper: reads the outbox after PostgreSQL's cursor for this router and
//! applies it in batches ([`super::apply::batch`]). Admission and recording never wait
//! for it: while PostgreSQL is unreachable the outbox grows, and it drains on return.

use std::{sync::Arc, time::Duration};

use anyhow::{Result, bail};
use tokio_postgres::Client;

use super::{apply, connect::Target};
use crate::sessions::{
    outbox::{Delivery, consumer},
    store::{SessionStore, Write},
};

/// How often an idle shipper looks for new rows.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Reconnect backoff: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// The shipper of one router to the central index.
pub struct Shipper {
    pub target: Target,
    pub router_id: String,
    pub store: SessionStore,
    pub batch_rows: u32,
    pub delivery: Arc<Delivery>,
}

impl Shipper {
    /// Runs until the daemon stops (a transaction cut short then rolls back).
    pub async fn run(self) {
        let mut backoff = BACKOFF.0;
        loop {
            if let Err(e) = self.session().await {
                let error = format!("{e:#}");
                if self.delivery.failed(&error) {
                    tracing::warn!(
                        error,
                        retry_secs = backoff.as_secs(),
                        "central: shipping paused"
                    );
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// One connection: checks who it is, then ships until something fails.
    async fn session(&self) -> Result<()> {
        let mut client = self.target.connect().await?;
        self.check_role(&client).await?;
        let prepared = apply::Prepared::new(&client).await?;
        let store = self.store.clone();
        let instance = tokio::task::spawn_blocking(move || store.outbox_instance()).await??;
        let origin = apply::Origin {
            router_id: &self.router_id,
            instance: &instance,
        };
        let mut cursor = apply::cursor(&client, &origin).await?;
        self.mirror(cursor);
        if self.delivery.ok() {
            tracing::info!(cursor, "central: connected; shipping again");
        }
        loop {
            let rows = self.rows_after(cursor).await?;
            let Some(first) = rows.first() else {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            if first.seq > cursor + 1 {
                tracing::error!(
                    cursor,
                    next = first.seq,
                    "central: outbox rows after the central cursor are gone; the central index misses them"
                );
            }
            cursor = apply::batch(&mut client, &prepared, &origin, &rows).await?;
            self.mirror(cursor);
        }
    }

    /// The role must be registered for this router (`sshgw.routers`).
    async fn check_role(&self, client: &Client) -> Result<()> {
        let row = client
            .query_one("SELECT sshgw.my_router()", &[])
            .await
            .map_err(super::connect::describe)?;
        let registered: Option<String> = row.get(0);
        match registered {
            Some(id) if id == self.router_id => Ok(()),
            Some(id) => bail!(
                "PostgreSQL role {} is registered for router {id:?}, not {:?}",
                self.target.user(),
                self.router_id
            ),
            None => bail!(
                "PostgreSQL role {} is not registered in sshgw.routers (docs/many-routers.md)",
                self.target.user()
            ),
        }
    }

    async fn rows_after(&self, cursor: i64) -> Result<Vec<crate::sessions::outbox::OutboxRow>> {
        let store = self.store.clone();
        let limit = self.batch_rows;
        tokio::task::spawn_blocking(move || store.outbox_after(cursor, limit)).await?
    }

    /// Keeps the local copy of the cursor (retention and status read it).
    fn mirror(&self, seq: i64) {
        self.store.write(Write::Shipped {
            consumer: consumer::CENTRAL.to_owned(),
            seq,
        });
    }
}
