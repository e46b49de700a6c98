//! The console's in-browser reader (crate `sshgw-console-wasm`, run here on the host) on
//! recordings the gateway's writer made: what the page shows for a good, wrong-key, public
//! key, tampered, truncated and non-pty recording.

use serde_json::Value;
use sshgw_console_wasm::{decrypt, key_info};

use super::{
    keys,
    tests::{chunk_offsets, fixture, recorded, sample_file},
};

fn key_text(key: &keys::RecordingPrivateKey) -> Vec<u8> {
    key.to_base64().into_bytes()
}

#[test]
fn a_pty_recording_plays_as_asciicast_and_ends_complete() {
    let (f, bytes) = recorded(true);
    let shown = decrypt(&key_text(&f.private), &bytes);
    assert_eq!(shown["ok"], true, "{shown}");
    assert_eq!(shown["pty"], true);
    assert_eq!(shown["end"]["complete"], true);
    assert_eq!(shown["text"], Value::Null);
    let cast = shown["cast"].as_str().unwrap();
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_u64(), header["width"].as_u64()),
        (Some(2), Some(80))
    );
    assert!(
        cast.contains("ls\\r\\nfile ") && cast.contains("€ok"),
        "{cast}"
    );
    assert_eq!(shown["meta"]["sshgw"]["session_id"], "s-1");
}

#[test]
fn a_channel_without_pty_also_shows_as_text() {
    let (f, bytes) = recorded(false);
    let shown = decrypt(&key_text(&f.private), &bytes);
    assert_eq!(shown["pty"], false, "{shown}");
    assert!(
        shown["text"]["output"]
            .as_str()
            .unwrap()
            .contains("file €ok")
    );
    assert_eq!(shown["text"]["input"], "ls\r");
}

#[test]
fn key_info_names_the_public_key_and_refuses_junk() {
    let f = fixture();
    let info = key_info(&key_text(&f.private));
    assert_eq!(info["public_key"], f.public.to_base64());
    let bad = key_info(b"not a key");
    assert_eq!(
        (bad["ok"].as_bool(), bad["class"].as_str()),
        (Some(false), Some("bad_key"))
    );
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("invalid private key"),
        "{bad}"
    );
    assert_eq!(key_info(&[0xff, 0xfe])["class"], "bad_key");
}

#[test]
fn a_wrong_key_and_the_public_key_are_named_as_such() {
    let f = fixture();
    let bytes = sample_file(&f);
    let (other, _) = keys::generate();
    let shown = decrypt(&key_text(&other), &bytes);
    assert_eq!(shown["class"], "wrong_key", "{shown}");
    assert!(
        shown["error"]
            .as_str()
            .unwrap()
            .contains(&f.public.to_base64())
    );
    let shown = decrypt(f.public.to_base64().as_bytes(), &bytes);
    assert_eq!(shown["class"], "wrong_key", "{shown}");
    assert!(
        shown["error"].as_str().unwrap().contains("public key"),
        "{shown}"
    );
}

#[test]
fn altered_chunks_are_tampering_with_the_right_key() {
    let f = fixture();
    let bytes = sample_file(&f);
    for offset in chunk_offsets(&bytes) {
        let mut tampered = bytes.clone();
        tampered[offset + 7] ^= 0x20;
        let shown = decrypt(&key_text(&f.private), &tampered);
        assert_eq!(shown["class"], "tampered", "{shown}");
        assert!(
            shown["error"].as_str().unwrap().contains("altered"),
            "{shown}"
        );
    }
}

#[test]
fn a_truncated_recording_plays_its_verified_part_and_says_so() {
    let f = fixture();
    let bytes = sample_file(&f);
    let cut = chunk_offsets(&bytes)[2] + 10;
    let shown = decrypt(&key_text(&f.private), &bytes[..cut]);
    assert_eq!(shown["ok"], true, "{shown}");
    assert_eq!(shown["end"]["complete"], false);
    let message = shown["end"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the recording is truncated: truncated inside chunk 2"),
        "{message}"
    );
    assert!(shown["cast"].as_str().unwrap().contains("chunk 1"));
}

#[test]
fn garbage_and_a_cut_header_are_not_recordings() {
    let f = fixture();
    let bytes = sample_file(&f);
    for input in [&b"hello"[..], &bytes[..20]] {
        let shown = decrypt(&key_text(&f.private), input);
        assert_eq!(shown["class"], "not_a_recording", "{shown}");
    }
}
