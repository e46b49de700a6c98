//! The daemon's shipper: reads the outbox after PostgreSQL's cursor for this router and
//! applies it in batches ([`super::apply::batch`]). Admission and recording never wait
//! for it: while PostgreSQL is unreachable the outbox grows, and it drains on return.

use std::{sync::Arc, time::Duration};

use anyhow::{Result, bail};
use tokio_postgres::Client;

use super::{apply, connect::Target};
use crate::sessions::{
    outbox::{Delivery, OutboxRow, consumer},
    store::{SessionStore, Write},
};

/// How often an idle shipper looks for new rows.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long one batch may take before the connection is given up.
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);
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
            let mut shipped = false;
            if let Err(e) = self.session(&mut shipped).await {
                if shipped {
                    backoff = BACKOFF.0;
                }
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

    /// One connection: checks who it is, then ships until something fails (`shipped` says
    /// whether a batch went through).
    async fn session(&self, shipped: &mut bool) -> Result<()> {
        let mut client = self.target.connect().await?;
        self.check_role(&client).await?;
        let prepared = apply::Prepared::new(&client).await?;
        let store = self.store.clone();
        let (instance, last) = tokio::task::spawn_blocking(move || {
            Ok::<_, anyhow::Error>((store.outbox_instance()?, store.outbox_last_seq()?))
        })
        .await??;
        let origin = apply::Origin {
            router_id: &self.router_id,
            instance: &instance,
        };
        let mut cursor = apply::cursor(&client, &origin).await?;
        if cursor > last {
            bail!(
                "the central cursor of router {:?} ({cursor}) is past this session log's last row ({last}): the log was restored from an older copy; see docs/many-routers.md",
                self.router_id
            );
        }
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
            cursor = self.ship(&mut client, &prepared, &origin, rows).await?;
            self.mirror(cursor);
            *shipped = true;
        }
    }

    /// Applies one batch within [`BATCH_TIMEOUT`]; a row PostgreSQL refuses goes as
    /// `row.unshippable` instead.
    async fn ship(
        &self,
        client: &mut Client,
        prepared: &apply::Prepared,
        origin: &apply::Origin<'_>,
        mut rows: Vec<OutboxRow>,
    ) -> Result<i64> {
        loop {
            let attempt = apply::batch(client, prepared, origin, &rows);
            let result = tokio::time::timeout(BATCH_TIMEOUT, attempt)
                .await
                .map_err(|_| anyhow::anyhow!("a batch took longer than {BATCH_TIMEOUT:?}"))?;
            let e = match result {
                Ok(cursor) => return Ok(cursor),
                Err(e) => e,
            };
            let Some(refused) = e.downcast_ref::<apply::RowRefused>() else {
                return Err(e);
            };
            tracing::error!(seq = refused.seq, error = %refused.error, "central: PostgreSQL refused an outbox row; it is shipped as row.unshippable (the router's log keeps it)");
            let (seq, error) = (refused.seq, refused.error.clone());
            for row in rows.iter_mut().filter(|r| r.seq == seq) {
                *row = apply::unshippable(row, &error);
            }
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

    async fn rows_after(&self, cursor: i64) -> Result<Vec<OutboxRow>> {
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
