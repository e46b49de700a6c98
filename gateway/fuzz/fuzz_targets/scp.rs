//! Arbitrary sessions through `ScpAudit`, as an upload and as a download, under `allow`,
//! `read_only` and an upload limit: no panic; the client's forwarded bytes are its input
//! (observing) or a part of it in order (filtering); the server's bytes pass unchanged.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

mod common;
#[allow(dead_code, unused_imports)]
#[path = "../../src/file_audit/mod.rs"]
mod file_audit;

use file_audit::{ScpAudit, SftpMode, TransferRules, scp::parse_command};

fuzz_target!(|input: &[u8]| {
    let records = common::records(input);
    // (command, rules, whether the client's stream is only observed)
    for (command, sftp, max_upload_bytes, observing) in [
        ("scp -t /dst", SftpMode::Allow, None, true),
        ("scp -t /dst", SftpMode::Allow, Some(2000), false),
        ("scp -r -f /src", SftpMode::Allow, None, true),
        ("scp -r -f /src", SftpMode::ReadOnly, Some(0), true),
    ] {
        let command = parse_command(command).expect("scp command");
        let mut audit = ScpAudit::new(
            command,
            TransferRules {
                sftp,
                max_upload_bytes,
                policy_name: "fuzz".into(),
            },
        );
        let (mut client_in, mut client_out) = (Vec::new(), Vec::new());
        let (mut server_in, mut server_out) = (Vec::new(), Vec::new());
        for &(from_client, data) in &records {
            let out = if from_client {
                client_in.extend_from_slice(data);
                audit.from_client(Bytes::copy_from_slice(data))
            } else {
                let out = audit.from_server(Bytes::copy_from_slice(data));
                if out.close.is_none() {
                    server_in.extend_from_slice(data);
                }
                out
            };
            let sink = if from_client {
                &mut client_out
            } else {
                &mut server_out
            };
            out.forward.iter().for_each(|b| sink.extend_from_slice(b));
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
        } else {
            assert!(common::is_subsequence(&client_out, &client_in));
        }
        assert_eq!(server_out, server_in);
    }
});
