//! The state documents: the policy set and the device table, read whole and changed whole
//! or one device at a time. Reads and changes answer with the document's `ETag`; changes
//! honour `If-Match` (see [`super::super::etag`]).

use std::sync::Arc;

use hyper::StatusCode;
use serde::Serialize;

use super::{Outcome, Request, bad_request, plain};
use crate::{
    control::{
        Context,
        admin_log::Evidence,
        api::{DeviceApplied, DeviceDeleted, DevicesApplied, PoliciesApplied, PoliciesValid},
        etag::with_etag,
        reply::{error, json},
    },
    identity::devices::{Device, DeviceTable},
    policy::model::PolicySet,
    state::{ApplyError, Snapshot},
    util::json_file,
};

/// Parses and validates a JSON body; the error names the failing field.
fn parse<T: serde::de::DeserializeOwned>(
    body: &[u8],
    validate: impl FnOnce(T) -> anyhow::Result<T>,
) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| "request body is not UTF-8".to_string())?;
    json_file::parse(text)
        .and_then(validate)
        .map_err(|e| format!("{e:#}"))
}

fn validated_policies(set: PolicySet) -> anyhow::Result<PolicySet> {
    set.validate()?;
    Ok(set)
}

fn validated_devices(table: DeviceTable) -> anyhow::Result<DeviceTable> {
    table.validate()?;
    Ok(table)
}

/// Which document of the state a change is about.
#[derive(Clone, Copy)]
enum Document {
    Devices,
    Policies,
}

impl Document {
    fn etag(self, snapshot: &Snapshot) -> &str {
        match self {
            Document::Devices => &snapshot.devices_etag,
            Document::Policies => &snapshot.policies_etag,
        }
    }
}

/// The answer to a change of `doc`: its new ETag on success, the current one on 412.
fn applied(
    result: Result<Arc<Snapshot>, ApplyError>,
    doc: Document,
    ctx: &Context,
    what: impl Serialize,
) -> Outcome {
    let reply = match result {
        Ok(next) => {
            let etag = doc.etag(&next);
            return (
                with_etag(json(StatusCode::OK, &what), etag),
                Evidence::digest(etag),
            );
        }
        Err(ApplyError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(ApplyError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(ApplyError::Stale(m)) => with_etag(
            error(StatusCode::PRECONDITION_FAILED, m),
            doc.etag(&ctx.state.snapshot()),
        ),
        Err(e @ ApplyError::Internal(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    plain(reply)
}

/// `GET /v1/policies`.
pub async fn get_policies(_: &Request<'_>, ctx: &Context) -> Outcome {
    let snapshot = ctx.state.snapshot();
    plain(with_etag(
        json(StatusCode::OK, &snapshot.policies),
        &snapshot.policies_etag,
    ))
}

/// `PUT /v1/policies`: replaces the set whole.
pub async fn put_policies(req: &Request<'_>, ctx: &Context) -> Outcome {
    match parse(req.body, validated_policies) {
        Ok(set) => {
            let policies = set.policies.len();
            applied(
                ctx.state.replace_policies(set, req.expect).await,
                Document::Policies,
                ctx,
                PoliciesApplied {
                    applied: true,
                    policies,
                },
            )
        }
        Err(message) => bad_request(message),
    }
}

/// `POST /v1/policies/validate`: checks a set without applying it.
pub async fn validate_policies(req: &Request<'_>, _: &Context) -> Outcome {
    match parse(req.body, validated_policies) {
        Ok(set) => plain(json(
            StatusCode::OK,
            &PoliciesValid {
                policies: set.policies.len(),
                valid: true,
            },
        )),
        Err(message) => bad_request(message),
    }
}

/// `GET /v1/devices`.
pub async fn get_devices(_: &Request<'_>, ctx: &Context) -> Outcome {
    let snapshot = ctx.state.snapshot();
    plain(with_etag(
        json(StatusCode::OK, &snapshot.devices),
        &snapshot.devices_etag,
    ))
}

/// `PUT /v1/devices`: replaces the table whole.
pub async fn put_devices(req: &Request<'_>, ctx: &Context) -> Outcome {
    match parse(req.body, validated_devices) {
        Ok(table) => {
            let devices = table.devices.len();
            applied(
                ctx.state.replace_devices(table, req.expect).await,
                Document::Devices,
                ctx,
                DevicesApplied {
                    applied: true,
                    devices,
                },
            )
        }
        Err(message) => bad_request(message),
    }
}

/// `PUT /v1/devices/{id}`: adds or replaces one device.
pub async fn put_device(req: &Request<'_>, ctx: &Context) -> Outcome {
    let id = req.id;
    match parse::<Device>(req.body, Ok) {
        Ok(device) if device.id != id => bad_request(format!(
            "id: {:?} does not match the path's device id {id:?}",
            device.id
        )),
        Ok(device) => applied(
            ctx.state.upsert_device(device, req.expect).await,
            Document::Devices,
            ctx,
            DeviceApplied {
                applied: true,
                device: id.to_owned(),
            },
        ),
        Err(message) => bad_request(message),
    }
}

/// `DELETE /v1/devices/{id}`.
pub async fn delete_device(req: &Request<'_>, ctx: &Context) -> Outcome {
    applied(
        ctx.state.delete_device(req.id, req.expect).await,
        Document::Devices,
        ctx,
        DeviceDeleted {
            deleted: req.id.to_owned(),
        },
    )
}
