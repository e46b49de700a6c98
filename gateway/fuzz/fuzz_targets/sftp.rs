//! Arbitrary sessions through `SftpAudit` under `allow`, `read_only` and an upload limit:
//! no panic; the client's forwarded bytes are its input (allow) or a part of it in order
//! (filtering); the server's bytes always reach the client unchanged and in order.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

mod common;
#[allow(dead_code, unused_imports)]
#[path = "../../src/file_audit/mod.rs"]
mod file_audit;

use file_audit::{SftpAudit, SftpMode, TransferRules};

fuzz_target!(|input: &[u8]| {
    let records = common::records(input);
    for (sftp, max_upload_bytes) in [
        (SftpMode::Allow, None),
        (SftpMode::ReadOnly, None),
        (SftpMode::Allow, Some(4096)),
    ] {
        let observing = sftp == SftpMode::Allow && max_upload_bytes.is_none();
        let mut audit = SftpAudit::new(TransferRules {
            sftp,
            max_upload_bytes,
            policy_name: "fuzz".into(),
        });
        let (mut client_in, mut client_out) = (Vec::new(), Vec::new());
        let (mut server_in, mut server_out) = (Vec::new(), Vec::new());
        for &(from_client, data) in &records {
            let out = if from_client {
                client_in.extend_from_slice(data);
                let out = audit.from_client(Bytes::copy_from_slice(data));
                out.forward
                    .iter()
                    .for_each(|b| client_out.extend_from_slice(b));
                server_out.extend_from_slice(&out.reply);
                out
            } else {
                let out = audit.from_server(Bytes::copy_from_slice(data));
                if out.close.is_none() {
                    server_in.extend_from_slice(data);
                }
                out.forward
                    .iter()
                    .for_each(|b| server_out.extend_from_slice(b));
                out
            };
            if observing {
                assert!(out.close.is_none() && out.reply.is_empty());
            }
            if out.close.is_some() {
                assert!(out.forward.is_empty());
                break;
            }
        }
        audit.finish();
        if observing {
            assert_eq!(client_out, client_in);
            assert_eq!(server_out, server_in);
        } else {
            // Denied requests left out, the server's bytes all passed, replies added.
            assert!(common::is_subsequence(&client_out, &client_in));
            assert!(common::is_subsequence(&server_in, &server_out));
        }
    }
});
