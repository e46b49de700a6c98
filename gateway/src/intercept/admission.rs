//! Deciding an intercepted connection's fate before any SSH is spoken: who it is
//! (identity), whether it really came from that device's tunnel, and which policy applies.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use crate::{
    identity::Identity,
    metrics::METRICS,
    policy::eval::{Decision, Subject},
    policy::model::{Action, Policy},
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

/// A live session judged again against a new snapshot.
pub enum Readmission {
    /// Still allowed; new channels follow this policy.
    Keep(Arc<Policy>),
    /// The destination is no longer audited at all: carry on as before.
    Unchanged,
    /// No longer allowed: end it, telling the user why.
    End(String),
}

/// Judges an established session of `identity` again, with the current device table and
/// policies: the device must still own the address, and the decision must still relay. A
/// destination that no policy covers any more (it is no longer audited at all) keeps its
/// sessions under the policy they have: nothing revoked them.
pub fn readmit(
    snapshot: &Snapshot,
    identity: &Identity,
    peer: SocketAddr,
    original_dst: SocketAddr,
    ingress: Option<&str>,
) -> Readmission {
    let (now, _) = judge(snapshot, peer, original_dst, ingress);
    let same_device = now
        .identity
        .as_ref()
        .is_some_and(|i| i.device_id == identity.device_id && i.email == identity.email);
    let unaudited = now.identity.is_some() && !snapshot.engine.covers(original_dst);
    match now.outcome {
        Outcome::Relay { policy } if same_device => Readmission::Keep(policy),
        Outcome::Refuse { .. } if same_device && unaudited => Readmission::Unchanged,
        Outcome::Relay { .. } => Readmission::End(format!(
            "sshgw: session ended: {} no longer belongs to device {}",
            peer.ip(),
            identity.device_id
        )),
        Outcome::Refuse { message, .. } => Readmission::End(format!(
            "sshgw: session ended: {}",
            message.strip_prefix("sshgw: ").unwrap_or(&message)
        )),
    }
}

/// Why a connection was judged the way it was, for the decision log.
enum Grounds {
    NotEnrolled,
    Spoofed {
        device: String,
        expected: String,
        seen: String,
    },
    Policy,
}

/// Judges a connection from `peer` to `original_dst` that came in on `ingress`
/// (the interface name, when the datapath recorded it), and logs the decision. The
/// judgement alone (device lookup and policy evaluation, not the logging) is timed into
/// `sshgw_admission_decision_seconds`.
pub fn admit(
    snapshot: &Snapshot,
    session_id: &str,
    peer: SocketAddr,
    original_dst: SocketAddr,
    ingress: Option<&str>,
) -> Admission {
    let started = Instant::now();
    let (admission, grounds) = judge(snapshot, peer, original_dst, ingress);
    METRICS.admission_decision.observe(started.elapsed());
    let (decision, policy) = match &admission.outcome {
        Outcome::Relay { policy } => (Action::AuditSsh.as_str(), Some(policy.id.as_str())),
        Outcome::Refuse { policy_id, .. } => (Action::Block.as_str(), policy_id.as_deref()),
    };
    match grounds {
        Grounds::NotEnrolled => {
            tracing::warn!(session = session_id, %peer, orig_dst = %original_dst, decision, reason = "not enrolled", "policy decision")
        }
        Grounds::Spoofed {
            device,
            expected,
            seen,
        } => tracing::warn!(
            session = session_id,
            %peer,
            orig_dst = %original_dst,
            device = %device,
            expected_interface = %expected,
            ingress = %seen,
            decision,
            reason = "spoofed source",
            "policy decision"
        ),
        Grounds::Policy => {
            let identity = admission.identity.as_deref();
            tracing::info!(
                session = session_id,
                %peer,
                orig_dst = %original_dst,
                email = identity.map_or("-", |i| i.email.as_str()),
                device = identity.map_or("-", |i| i.device_id.as_str()),
                policy = policy.unwrap_or("-"),
                decision,
                "policy decision"
            )
        }
    }
    admission
}

fn judge(
    snapshot: &Snapshot,
    peer: SocketAddr,
    original_dst: SocketAddr,
    ingress: Option<&str>,
) -> (Admission, Grounds) {
    let refused = |message: String, grounds: Grounds| {
        let admission = Admission {
            identity: None,
            outcome: Outcome::Refuse {
                message,
                policy_id: None,
            },
            policy_name: None,
        };
        (admission, grounds)
    };
    let Some(identity) = snapshot.identities.resolve(peer.ip()) else {
        let message = format!("sshgw: {} is not an enrolled device", peer.ip());
        return refused(message, Grounds::NotEnrolled);
    };
    if let Some(expected) = &identity.interface
        && ingress != Some(expected.as_str())
    {
        let seen = ingress.unwrap_or("an unknown interface").to_string();
        let message = format!(
            "sshgw: {} arrived on {seen}, not on its device's tunnel {expected}; refused as spoofed",
            peer.ip()
        );
        let grounds = Grounds::Spoofed {
            device: identity.device_id.clone(),
            expected: expected.clone(),
            seen,
        };
        return refused(message, grounds);
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
    let outcome = match decision {
        Decision::Audit { policy } => Outcome::Relay { policy },
        block => Outcome::Refuse {
            message: block.message(),
            policy_id,
        },
    };
    let admission = Admission {
        identity: Some(identity),
        outcome,
        policy_name,
    };
    (admission, Grounds::Policy)
}
