//! Deciding an intercepted connection's fate before any SSH is spoken: who it is
//! (identity), whether it really came from that device's tunnel, and which policy applies.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    identity::Identity,
    policies::Policy,
    policy_eval::{Decision, Subject},
    state::Snapshot,
};

/// What happens to a connection.
pub enum Outcome {
    /// Relay it under this policy.
    Relay { policy: Arc<Policy> },
    /// Tell the user `message` and close.
    Refuse {
        message: String,
        policy_id: Option<String>,
    },
}

/// A new session id: time-ordered, unique per connection.
pub fn new_session_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    format!("{millis:011x}{:08x}", rand::random::<u32>())
}

pub struct Admission {
    pub identity: Option<Arc<Identity>>,
    pub outcome: Outcome,
    /// Name of the deciding policy, for the session log.
    pub policy_name: Option<String>,
}

/// Judges a connection from `peer` to `original_dst` that came in on `ingress`
/// (the interface name, when the datapath recorded it).
pub fn admit(
    snapshot: &Snapshot,
    session_id: &str,
    peer: SocketAddr,
    original_dst: SocketAddr,
    ingress: Option<&str>,
) -> Admission {
    let Some(identity) = snapshot.identities.resolve(peer.ip()) else {
        tracing::warn!(session = session_id, %peer, orig_dst = %original_dst, decision = "block", reason = "not enrolled", "policy decision");
        return Admission {
            identity: None,
            outcome: Outcome::Refuse {
                message: format!("sshgw: {} is not an enrolled device", peer.ip()),
                policy_id: None,
            },
            policy_name: None,
        };
    };
    if let Some(expected) = &identity.interface
        && ingress != Some(expected.as_str())
    {
        let seen = ingress.unwrap_or("an unknown interface");
        tracing::warn!(
            session = session_id,
            %peer,
            orig_dst = %original_dst,
            device = %identity.device_id,
            expected_interface = %expected,
            ingress = seen,
            decision = "block",
            reason = "spoofed source",
            "policy decision"
        );
        return Admission {
            identity: None,
            outcome: Outcome::Refuse {
                message: format!(
                    "sshgw: {} arrived on {seen}, not on its device's tunnel {expected}; refused as spoofed",
                    peer.ip()
                ),
                policy_id: None,
            },
            policy_name: None,
        };
    }
    let decision = snapshot.engine.evaluate(
        original_dst,
        &Subject {
            email: &identity.email,
            groups: &identity.groups,
            posture: &identity.posture,
        },
    );
    let policy_id = decision.policy_id().map(str::to_string);
    let policy_name = match &decision {
        Decision::Audit { policy }
        | Decision::Block {
            policy: Some(policy),
        } => Some(policy.name.clone()),
        Decision::Block { policy: None } => None,
    };
    let verdict = if matches!(decision, Decision::Audit { .. }) {
        "audit_ssh"
    } else {
        "block"
    };
    tracing::info!(
        session = session_id,
        %peer,
        orig_dst = %original_dst,
        email = %identity.email,
        device = %identity.device_id,
        policy = policy_id.as_deref().unwrap_or("-"),
        decision = verdict,
        "policy decision"
    );
    let outcome = match decision {
        Decision::Audit { policy } => Outcome::Relay { policy },
        block => Outcome::Refuse {
            message: block.message(),
            policy_id,
        },
    };
    Admission {
        identity: Some(identity),
        outcome,
        policy_name,
    }
}
