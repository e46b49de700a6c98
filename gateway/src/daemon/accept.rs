//! The accept loops: each intercepted connection is logged, admitted or refused, and
//! handed to a relay task.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::{
    datapath::FlowIngress,
    intercept::{admission, listener},
    metrics::METRICS,
    relay::{self, RelayContext},
    sessions::store::SessionStore,
    state::LiveState,
};

/// What each accepted connection needs.
pub struct Admit {
    pub state: Arc<LiveState>,
    pub relay: Arc<RelayContext>,
    pub ingress: FlowIngress,
}

pub async fn accept_loop(listener: TcpListener, admit: Arc<Admit>) {
    loop {
        let conn = match listener::accept(&listener).await {
            Ok(Some(conn)) => conn,
            Ok(None) => continue,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let session_id = admission::new_session_id();
        let ingress = admit.ingress.interface(conn.peer, conn.original_dst);
        tracing::info!(
            session = %session_id,
            peer = %conn.peer,
            orig_dst = %conn.original_dst,
            ingress = ingress.as_deref().unwrap_or("-"),
            "intercepted connection"
        );
        let mut decision = admission::admit(
            &admit.state.snapshot(),
            &session_id,
            conn.peer,
            conn.original_dst,
            ingress.as_deref(),
        );
        refuse_if_unlogged(&mut decision, &admit.relay.store, &session_id);
        match &decision.outcome {
            admission::Outcome::Relay { policy } => METRICS.decision(Some(&policy.id), true),
            admission::Outcome::Refuse { policy_id, .. } => {
                METRICS.decision(policy_id.as_deref(), false)
            }
        }
        tokio::spawn(relay::serve(
            admit.relay.clone(),
            conn,
            session_id,
            decision,
            ingress,
        ));
    }
}

/// Under `[sessions] on_log_failure = "refuse"`, a connection is refused while the session
/// log cannot be written: it would leave no record.
fn refuse_if_unlogged(decision: &mut admission::Admission, store: &SessionStore, session: &str) {
    let Some(message) = store.refusal() else {
        return;
    };
    let policy_id = match &decision.outcome {
        admission::Outcome::Relay { policy } => Some(policy.id.clone()),
        admission::Outcome::Refuse { policy_id, .. } => policy_id.clone(),
    };
    tracing::warn!(session, reason = %message, "connection refused: the session log cannot be written");
    decision.outcome = admission::Outcome::Refuse { message, policy_id };
}
