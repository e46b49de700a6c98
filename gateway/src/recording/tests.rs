//! Round trips, the ssh-log-cli test vector, error reporting and the async recorder.

use std::{
    io::{Cursor, Read},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use base64::Engine;
use bytes::Bytes;
use hpke::{
    Deserializable, OpModeR, aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256,
};
use proptest::prelude::*;

use super::{
    export,
    format::{self, CODE_END, CODE_FILE_OP, CODE_RESIZE, Kind, Metadata, Packet},
    keys::{self, RecordingKey, RecordingPrivateKey},
    reader::{End, Reader, RecordingError, Truncation},
    writer::{ChannelKind, ChannelMeta, Exit, FileWriter, PtyMeta, Recorder},
};

/// ssh-log-cli research note §8: a file that the real ssh-log-cli 0.1.0 decrypts.
const VECTOR_KEY: &str = "SMDInoNDfDYWNdYgyv47aWzvgdl7T1djmwpP+k/9CUg=";
const VECTOR_HEX: &str = concat!(
    "0000014065794a7a644746796447566b58324630496a6f784e7a41774d4441774d4441774c434a6b5958526858334e70",
    "656d55694f6a4173496d567559324677633356735958526c5a4639725a586b694f694a6a5954677a4d4441315a6d4a68",
    "4e5464684f54526b5a57457a4e54453459574e694e544d354d6d51794d474d31595759774d4459354d574d344d6a4a6c",
    "4e6a6c6b4d6a526d4d6a64685a5467324e5459784d6a646c4969776963485235496a7037496e526c636d30694f694a34",
    "6447567962534973496e64705a48526f496a6f344d437769614756705a326830496a6f794e4377696257396b5a584d69",
    "4f6c7462496b5644534538694c44466458583073496d5634615852665a4746305953493665794a306157316c63335268",
    "625841694f6a45334d4441774d4441774d445573496e4e3059585231637949364d48313900000037aaef659f54bb10b3",
    "fd641e8e14d49c15f8d33b81e8301827d7b25025d1adb894d58881e492591bbd19bc96bb9d3b51935c874964980f8000",
    "000034d01a644b50df2fba9474eb5a77b32dde9fab5d3788aa9e37bf515fdcf2110b5ba1b4a2601caf31971c178c0bdc",
    "80f32213ee003e",
);
const VECTOR_TERM_DATA: &str = "Session started on 2023-11-14 22:13:20+00 [TERM=\"xterm\" COLUMNS=\"80\" LINES=\"24\"]\n$ id\r\nuid=0(root)\r\n$ \nScript done on 2023-11-14 22:13:25+00 [COMMAND_EXIT_CODE=\"0\"]\n";
const VECTOR_TERM_TIMES: &str = "0.250000 2\n0.760000 19\n";

fn vector() -> (Vec<u8>, RecordingPrivateKey) {
    (
        hex::decode(VECTOR_HEX).unwrap(),
        RecordingPrivateKey::parse(VECTOR_KEY).unwrap(),
    )
}

fn channel_meta(pty: bool) -> ChannelMeta {
    ChannelMeta {
        session_id: "s-1".into(),
        channel: if pty {
            ChannelKind::Shell
        } else {
            ChannelKind::Exec {
                command: "uname -a".into(),
            }
        },
        pty: pty.then(|| PtyMeta {
            term: "xterm-256color".into(),
            width: 80,
            height: 24,
            modes: vec![("ECHO".into(), 1), ("ICANON".into(), 1)],
        }),
        user_email: Some("jdoe@example.com".into()),
        device_id: Some("dev-1".into()),
        login: "jdoe".into(),
        destination: "10.0.0.5:22".into(),
        env: vec![("LANG".into(), "C.UTF-8".into())],
    }
}

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    pub(super) private: RecordingPrivateKey,
    pub(super) public: RecordingKey,
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec");
    let (private, public) = keys::generate();
    Fixture {
        _dir: dir,
        path,
        private,
        public,
    }
}

const STARTED: u64 = 1_700_000_000;

fn started() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(STARTED)
}

fn read_all(bytes: &[u8], key: &RecordingPrivateKey) -> Result<(Vec<Packet>, End), RecordingError> {
    let mut reader = Reader::open(bytes, key)?;
    let mut packets = Vec::new();
    while let Some(packet) = reader.next_packet()? {
        packets.push(packet);
    }
    Ok((packets, reader.end().unwrap()))
}

fn header(bytes: &[u8]) -> Metadata {
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    let json = format::base64_engine().decode(&bytes[4..4 + len]).unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// The chunk plaintexts of a file, decrypted independently of [`Reader`].
fn raw_chunks(bytes: &[u8], key: &RecordingPrivateKey) -> Vec<Vec<u8>> {
    let meta = header(bytes);
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(
        &hex::decode(&meta.encapsulated_key).unwrap(),
    )
    .unwrap();
    let mut ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        key.kem(),
        &enc,
        b"",
    )
    .unwrap();
    let mut at = 4 + u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    let mut chunks = Vec::new();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        chunks.push(ctx.open(&bytes[at + 4..at + 4 + len], b"").unwrap());
        at += 4 + len;
    }
    chunks
}

/// Chunk start offsets in the file.
pub(super) fn chunk_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = 4 + u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    let mut offsets = Vec::new();
    while at < bytes.len() {
        offsets.push(at);
        at += 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    offsets
}

/// Whether `stream` is a whole number of packets.
fn whole_packets(mut stream: &[u8]) -> bool {
    while !stream.is_empty() {
        if stream.len() < 4 {
            return false;
        }
        let len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
        if stream.len() < 4 + len {
            return false;
        }
        stream = &stream[4 + len..];
    }
    true
}

// ---------------------------------------------------------------------------------------
// The ssh-log-cli test vector.

#[test]
fn test_vector_decrypts_to_the_expected_typescript() {
    let (bytes, key) = vector();
    let mut reader = Reader::open(&bytes[..], &key).unwrap();
    let mut data = Vec::new();
    let mut times = Vec::new();
    let end = export::scriptreplay(&mut reader, Some(&mut data), Some(&mut times)).unwrap();
    assert_eq!(String::from_utf8(data).unwrap(), VECTOR_TERM_DATA);
    assert_eq!(String::from_utf8(times).unwrap(), VECTOR_TERM_TIMES);
    assert_eq!(reader.chunks(), 2);
    assert_eq!(reader.packets(), 3);
    // ssh-log-cli files have no end-of-recording record.
    assert_eq!(
        end,
        End::Truncated(Truncation::AfterChunk {
            chunks: 2,
            inside_packet: false
        })
    );
}

#[test]
fn test_vector_zip_has_ssh_log_cli_members() {
    let (bytes, key) = vector();
    let mut zip = Cursor::new(Vec::new());
    export::decrypted_zip(|| Reader::open(&bytes[..], &key), &mut zip, 1_700_000_000).unwrap();
    let mut archive = zip::ZipArchive::new(Cursor::new(zip.into_inner())).unwrap();
    assert_eq!(archive.len(), 2);
    for (name, expected) in [
        ("term_data.txt", VECTOR_TERM_DATA),
        ("term_times.txt", VECTOR_TERM_TIMES),
    ] {
        let mut member = archive.by_name(name).unwrap();
        assert_eq!(member.compression(), zip::CompressionMethod::Stored);
        let mut text = String::new();
        member.read_to_string(&mut text).unwrap();
        assert_eq!(text, expected, "{name}");
    }
}

#[test]
fn timing_lines_use_f32_like_ssh_log_cli() {
    assert_eq!(export::timing_line(3_600_123_456, 5), "3600.123291 5\n");
    assert_eq!(export::timing_line(760_000, 19), "0.760000 19\n");
    assert_eq!(export::timing_line(0, 0), "0.000000 0\n");
}

// ---------------------------------------------------------------------------------------
// Writer → reader round trips.

#[derive(Debug, Clone)]
enum Op {
    Data {
        from_client: bool,
        ext: Option<u32>,
        dt: u64,
        data: Vec<u8>,
    },
    Resize {
        dt: u64,
        cols: u32,
        rows: u32,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            any::<bool>(),
            prop_oneof![Just(None), Just(Some(1u32)), Just(Some(CODE_END)), any::<u32>().prop_map(Some)],
            0u64..3_000_000,
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(from_client, ext, dt, data)| Op::Data { from_client, ext, dt, data }),
        1 => (0u64..1_000_000, 1u32..500, 1u32..200).prop_map(|(dt, cols, rows)| Op::Resize { dt, cols, rows }),
        2 => Just(Op::Flush),
    ]
}

/// Applies `ops` to a writer (flushing where they say so unless `flushes` is false) and
/// returns the packets a reader must see, without the end record.
fn apply(writer: &mut FileWriter, ops: &[Op], pty: bool, flushes: bool) -> (Vec<Packet>, u64) {
    let mut expected = Vec::new();
    let mut t = 0;
    for op in ops {
        match op {
            Op::Data {
                from_client,
                ext,
                dt,
                data,
            } => {
                t += dt;
                writer.data(*from_client, *ext, t, data);
                let code = match (from_client, ext) {
                    (_, None) => 0,
                    (true, Some(code)) if format::RESERVED_CODES.contains(code) => {
                        format::CODE_CLIENT_RESERVED_COLLISION
                    }
                    (_, Some(code)) => *code,
                };
                expected.push(Packet {
                    source: u8::from(!from_client),
                    code,
                    elapsed_us: t,
                    data: data.clone(),
                    kind: if *from_client {
                        Kind::Input
                    } else {
                        Kind::Output
                    },
                });
            }
            Op::Resize { dt, cols, rows } => {
                t += dt;
                writer.resize(t, *cols, *rows);
                if pty {
                    expected.push(Packet {
                        source: 0,
                        code: CODE_RESIZE,
                        elapsed_us: t,
                        data: format!("{cols}x{rows}").into_bytes(),
                        kind: Kind::Resize {
                            cols: *cols,
                            rows: *rows,
                        },
                    });
                }
            }
            Op::Flush if flushes => writer.flush().unwrap(),
            Op::Flush => {}
        }
    }
    (expected, t)
}

fn end_packet(elapsed_us: u64) -> Packet {
    Packet {
        source: 0,
        code: CODE_END,
        elapsed_us,
        data: Vec::new(),
        kind: Kind::End,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever is written with whatever flush points reads back exactly, as a complete
    /// recording, and every chunk follows the writer rules (non-empty, whole packets).
    #[test]
    fn writer_reader_round_trip(
        ops in proptest::collection::vec(op(), 0..40),
        pty in any::<bool>(),
        tail in 0u64..2_000_000,
    ) {
        let f = fixture();
        let mut writer = FileWriter::create(&f.path, &f.public, &channel_meta(pty), started()).unwrap();
        let (mut expected, t) = apply(&mut writer, &ops, pty, true);
        let summary = writer.finish(&Exit::Status(7), t + tail).unwrap();
        expected.push(end_packet(t + tail));

        let bytes = std::fs::read(&f.path).unwrap();
        let (packets, end) = read_all(&bytes, &f.private).unwrap();
        prop_assert_eq!(&packets, &expected);
        prop_assert_eq!(end, End::Complete { end_elapsed_us: t + tail });
        let chunks = raw_chunks(&bytes, &f.private);
        prop_assert_eq!(chunks.len() as u64, summary.chunks);
        for chunk in &chunks {
            prop_assert!(!chunk.is_empty());
            prop_assert!(whole_packets(chunk));
        }
        let meta = header(&bytes);
        prop_assert_eq!(meta.data_size, chunks.iter().map(Vec::len).sum::<usize>() as u64);
        prop_assert_eq!(meta.exit_data.unwrap().status, Some(7));
        prop_assert_eq!(meta.pty.is_some(), pty);
    }

    /// Readers accept any chunking: packets and length prefixes split across chunks of
    /// any size. (An empty chunk is only valid as the trailer boundary: see
    /// `misplaced_trailer_records_are_corrupt`.)
    #[test]
    fn reader_accepts_arbitrary_chunking(
        ops in proptest::collection::vec(op(), 0..30),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
        bytewise in any::<bool>(),
    ) {
        let f = fixture();
        let mut writer = FileWriter::create(&f.path, &f.public, &channel_meta(true), started()).unwrap();
        let (mut expected, t) = apply(&mut writer, &ops, true, false);
        writer.push_end(t);
        expected.push(end_packet(t));
        let len = writer.pending_len();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
        if bytewise {
            // One-byte chunks (length prefixes spread over four chunks) for a stretch.
            cuts.extend(1..len.min(300));
        }
        cuts.retain(|&c| c > 0 && c < len);
        cuts.sort_unstable();
        cuts.dedup();
        writer.flush_split(&cuts).unwrap();

        let bytes = std::fs::read(&f.path).unwrap();
        let (packets, end) = read_all(&bytes, &f.private).unwrap();
        prop_assert_eq!(packets, expected);
        prop_assert_eq!(end, End::Complete { end_elapsed_us: t });
    }

    /// Cutting a complete file anywhere after the header reads as truncated (never as
    /// complete, never as an error), with the packets before the cut intact.
    #[test]
    fn any_cut_reads_as_truncated(
        ops in proptest::collection::vec(op(), 1..20),
        cut in any::<proptest::sample::Index>(),
    ) {
        let f = fixture();
        let mut writer = FileWriter::create(&f.path, &f.public, &channel_meta(true), started()).unwrap();
        let (mut expected, t) = apply(&mut writer, &ops, true, true);
        writer.finish(&Exit::None, t).unwrap();
        expected.push(end_packet(t));
        let bytes = std::fs::read(&f.path).unwrap();
        let header_end = chunk_offsets(&bytes)[0];
        let cut = header_end + cut.index(bytes.len() - header_end);
        let (packets, end) = read_all(&bytes[..cut], &f.private).unwrap();
        prop_assert!(matches!(end, End::Truncated(_)), "{:?}", end);
        prop_assert!(packets.len() < expected.len());
        prop_assert_eq!(&packets[..], &expected[..packets.len()]);
    }
}

#[test]
fn writer_never_seals_empty_chunks_and_splits_large_data() {
    let f = fixture();
    let mut writer =
        FileWriter::create(&f.path, &f.public, &channel_meta(false), started()).unwrap();
    writer.flush().unwrap();
    writer.flush().unwrap();
    let big = vec![7u8; format::WRITER_MAX_PACKET_DATA * 2 + 5];
    writer.data(false, None, 10, &big);
    writer.flush().unwrap();
    writer.flush().unwrap();
    let summary = writer.finish(&Exit::Status(0), 20).unwrap();
    assert_eq!(summary.chunks, 2);
    assert_eq!(summary.packets, 4);
    let bytes = std::fs::read(&f.path).unwrap();
    let (packets, _) = read_all(&bytes, &f.private).unwrap();
    let sizes: Vec<usize> = packets.iter().map(|p| p.data.len()).collect();
    assert_eq!(
        sizes,
        [
            format::WRITER_MAX_PACKET_DATA,
            format::WRITER_MAX_PACKET_DATA,
            5,
            0
        ]
    );
}

#[test]
fn packet_times_never_go_backwards() {
    let f = fixture();
    let mut writer =
        FileWriter::create(&f.path, &f.public, &channel_meta(true), started()).unwrap();
    writer.data(false, None, 500, b"a");
    writer.data(true, None, 400, b"b");
    writer.resize(100, 100, 30);
    writer.finish(&Exit::Status(0), 50).unwrap();
    let bytes = std::fs::read(&f.path).unwrap();
    let (packets, end) = read_all(&bytes, &f.private).unwrap();
    assert!(packets.iter().all(|p| p.elapsed_us == 500));
    assert_eq!(
        end,
        End::Complete {
            end_elapsed_us: 500
        }
    );
}

#[test]
fn recording_is_refused_over_an_existing_file() {
    let f = fixture();
    std::fs::write(&f.path, b"precious").unwrap();
    let err = FileWriter::create(&f.path, &f.public, &channel_meta(true), started())
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("cannot create recording"),
        "{err:#}"
    );
    assert_eq!(std::fs::read(&f.path).unwrap(), b"precious");
}

// ---------------------------------------------------------------------------------------
// Header and exit data.

#[test]
fn finish_rewrites_the_header_with_exit_data() {
    let f = fixture();
    let mut writer =
        FileWriter::create(&f.path, &f.public, &channel_meta(false), started()).unwrap();
    writer.data(true, None, 1_000, b"input");
    writer.data(false, Some(1), 2_000, b"oops");
    writer.flush().unwrap();
    // As a crash would leave it: no exit data.
    let before = std::fs::read(&f.path).unwrap();
    let meta = header(&before);
    assert_eq!(meta.exit_data, None);
    assert_eq!(meta.started_at, STARTED);
    let info = meta.sshgw.clone().unwrap();
    assert_eq!(info.command.as_deref(), Some("uname -a"));
    assert_eq!(info.env, vec![("LANG".to_string(), "C.UTF-8".to_string())]);
    assert_eq!(info.channel, "exec");
    assert_eq!(info.recipient.as_deref(), Some(&*f.public.to_base64()));
    assert_eq!(info.started_at_us, Some(STARTED * 1_000_000));

    writer
        .finish(
            &Exit::Signal {
                name: "TERM".into(),
                core_dumped: true,
            },
            3_500_000,
        )
        .unwrap();
    let after = std::fs::read(&f.path).unwrap();
    // Same header size: only rewritten in place.
    assert_eq!(after[..4], before[..4]);
    assert_eq!(chunk_offsets(&after)[0], chunk_offsets(&before)[0]);
    let meta = header(&after);
    let exit = meta.exit_data.unwrap();
    assert_eq!(exit.timestamp, STARTED + 3);
    assert_eq!(exit.signal.as_deref(), Some("TERM"));
    assert!(exit.core_dumped);
    assert_eq!(exit.status, None);
    assert_eq!(meta.sshgw.unwrap(), info);
    assert_eq!(
        meta.data_size,
        raw_chunks(&after, &f.private)
            .iter()
            .map(Vec::len)
            .sum::<usize>() as u64
    );
}

#[test]
fn long_exit_messages_are_shortened_to_fit_the_header() {
    let f = fixture();
    let mut writer =
        FileWriter::create(&f.path, &f.public, &channel_meta(true), started()).unwrap();
    let message = "\u{1}é".repeat(5000);
    writer.finish(&Exit::Error(message), 0).unwrap();
    let bytes = std::fs::read(&f.path).unwrap();
    let exit = header(&bytes).exit_data.unwrap();
    let shortened = exit.error_msg.unwrap();
    assert!(shortened.ends_with('…'));
    assert!(shortened.len() < 1000);
    let (_, end) = read_all(&bytes, &f.private).unwrap();
    assert_eq!(end, End::Complete { end_elapsed_us: 0 });
}

#[test]
fn pty_header_and_trailer_lines() {
    let f = fixture();
    let mut writer =
        FileWriter::create(&f.path, &f.public, &channel_meta(true), started()).unwrap();
    writer.data(false, None, 1, b"$ ");
    writer.finish(&Exit::Status(2), 2_000_000).unwrap();
    let bytes = std::fs::read(&f.path).unwrap();
    let meta = header(&bytes);
    assert_eq!(
        meta.pty.as_ref().unwrap().modes,
        vec![("ECHO".to_string(), 1), ("ICANON".to_string(), 1)]
    );
    assert_eq!(
        export::term_data_header(&meta),
        "Session started on 2023-11-14 22:13:20+00 [TERM=\"xterm-256color\" COLUMNS=\"80\" LINES=\"24\"]\n"
    );
    assert_eq!(
        export::term_data_trailer(&meta),
        "\nScript done on 2023-11-14 22:13:22+00 [COMMAND_EXIT_CODE=\"2\"]\n"
    );
}

// ---------------------------------------------------------------------------------------
// Errors: truncation, tampering, wrong key, not a recording.

pub(super) fn sample_file(f: &Fixture) -> Vec<u8> {
    let mut writer =
        FileWriter::create(&f.path, &f.public, &channel_meta(true), started()).unwrap();
    for i in 0..3u64 {
        writer.data(false, None, i * 1000, format!("chunk {i}").as_bytes());
        writer.flush().unwrap();
    }
    writer.finish(&Exit::Status(0), 5000).unwrap();
    std::fs::read(&f.path).unwrap()
}

#[test]
fn truncation_at_a_chunk_boundary_is_reported() {
    let f = fixture();
    let bytes = sample_file(&f);
    let offsets = chunk_offsets(&bytes);
    assert_eq!(offsets.len(), 4);
    let (packets, end) = read_all(&bytes[..offsets[3]], &f.private).unwrap();
    assert_eq!(packets.len(), 3);
    let End::Truncated(truncation) = end else {
        panic!("{end:?}")
    };
    assert_eq!(
        truncation.to_string(),
        "truncated after chunk 2: no end-of-recording record"
    );
    let (_, end) = read_all(&bytes[..offsets[0]], &f.private).unwrap();
    assert_eq!(
        end,
        End::Truncated(Truncation::AfterChunk {
            chunks: 0,
            inside_packet: false
        })
    );
}

#[test]
fn truncation_inside_a_chunk_is_reported() {
    let f = fixture();
    let bytes = sample_file(&f);
    let offsets = chunk_offsets(&bytes);
    for cut in [offsets[2] + 2, offsets[2] + 10] {
        let (packets, end) = read_all(&bytes[..cut], &f.private).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(
            end,
            End::Truncated(Truncation::InsideChunk {
                chunk: 2,
                offset: offsets[2] as u64
            })
        );
        let End::Truncated(t) = end else {
            unreachable!()
        };
        assert!(t.to_string().starts_with("truncated inside chunk 2"), "{t}");
    }
}

#[test]
fn a_flipped_byte_fails_authentication_at_its_chunk() {
    let f = fixture();
    let bytes = sample_file(&f);
    let offsets = chunk_offsets(&bytes);
    for (chunk, &offset) in offsets.iter().enumerate() {
        let mut tampered = bytes.clone();
        tampered[offset + 4 + 3] ^= 0x20;
        let err = read_all(&tampered, &f.private).unwrap_err();
        assert!(
            matches!(err, RecordingError::AuthFailed { chunk: c, .. } if c == chunk as u64),
            "{err}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "wrong key or corrupted data: authentication failed at chunk {chunk}"
            )),
            "{err}"
        );
    }
}

#[test]
fn dropped_or_reordered_chunks_fail_authentication() {
    let f = fixture();
    let bytes = sample_file(&f);
    let o = chunk_offsets(&bytes);
    let mut dropped = bytes[..o[1]].to_vec();
    dropped.extend_from_slice(&bytes[o[2]..]);
    let err = read_all(&dropped, &f.private).unwrap_err();
    assert!(
        matches!(err, RecordingError::AuthFailed { chunk: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_wrong_key_is_named() {
    let f = fixture();
    let bytes = sample_file(&f);
    let (other, _) = keys::generate();
    let err = read_all(&bytes, &other).unwrap_err();
    assert!(matches!(err, RecordingError::AuthFailed { chunk: 0, .. }));
    let text = err.to_string();
    assert!(
        text.starts_with("wrong key or corrupted data: authentication failed at chunk 0"),
        "{text}"
    );
    assert!(text.contains(&f.public.to_base64()), "{text}");
    // The ssh-log-cli vector (no recipient in the header) with a wrong key.
    let (vector, _) = vector();
    let err = read_all(&vector, &other).unwrap_err();
    assert!(matches!(
        err,
        RecordingError::AuthFailed {
            chunk: 0,
            hint: None,
            ..
        }
    ));
}

#[test]
fn garbage_is_not_a_recording() {
    let (_, key) = vector();
    let cases: [(&[u8], &str); 6] = [
        (b"", "the file is empty"),
        (b"\x00\x00", "only 2 bytes"),
        (b"\x00\x00\x00\x00", "header length is 0"),
        (b"\xff\xff\xff\xff", "exceeds the 16 MiB limit"),
        (b"\x00\x00\x00\x08!!!!!!!!", "not base64"),
        (b"\x00\x00\x00\x04e30=", "not recording metadata JSON"),
    ];
    for (bytes, expected) in cases {
        let err = Reader::open(bytes, &key).err().unwrap().to_string();
        assert!(
            err.starts_with("not an sshgw/ssh-log-cli recording: ") && err.contains(expected),
            "{err}"
        );
    }
    let (vector, _) = vector();
    let err = Reader::open(&vector[..100], &key)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ends inside the header"), "{err}");
}

#[test]
fn oversized_chunks_are_refused() {
    let (bytes, key) = vector();
    let first_chunk = chunk_offsets(&bytes)[0];
    let mut huge = bytes[..first_chunk].to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = read_all(&huge, &key).unwrap_err().to_string();
    assert!(err.contains("exceeds the 16 MiB limit"), "{err}");
}

#[test]
fn malformed_packets_are_corrupt() {
    // Streams sealed as-is with the test-only splitter: bad length, bad source.
    for (stream, expected) in [
        (vec![0, 0, 0, 5, 1, 2, 3, 4, 5], "less than 13"),
        (
            {
                let mut s = (0x0100_0001u32).to_be_bytes().to_vec();
                s.extend_from_slice(&[0; 13]);
                s
            },
            "over the 16 MiB limit",
        ),
        (
            {
                let mut s = Vec::new();
                format::encode_packet(&mut s, 2, 0, 0, b"x");
                s
            },
            "source 2",
        ),
    ] {
        let f = fixture();
        let writer = FileWriter::create(&f.path, &f.public, &channel_meta(true), started());
        let mut writer = writer.unwrap();
        write_stream(&mut writer, &stream);
        let bytes = std::fs::read(&f.path).unwrap();
        let err = read_all(&bytes, &f.private).unwrap_err().to_string();
        assert!(
            err.starts_with("corrupted recording at chunk 0") && err.contains(expected),
            "{err}"
        );
    }
}

/// Seals `stream` as one chunk through the writer's test-only splitter.
fn write_stream(writer: &mut FileWriter, stream: &[u8]) {
    writer.flush().unwrap();
    writer.inject(stream);
    writer.flush_split(&[]).unwrap();
}

#[test]
fn data_after_the_end_record_is_corrupt() {
    let f = fixture();
    let mut writer =
        FileWriter::create(&f.path, &f.public, &channel_meta(true), started()).unwrap();
    writer.push_end(0);
    writer.data(false, None, 1, b"late");
    writer.flush().unwrap();
    let bytes = std::fs::read(&f.path).unwrap();
    let err = read_all(&bytes, &f.private).unwrap_err().to_string();
    assert!(
        err.contains("data after the end-of-recording record"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Exports.

pub(super) fn recorded(pty: bool) -> (Fixture, Vec<u8>) {
    let f = fixture();
    let mut writer = FileWriter::create(&f.path, &f.public, &channel_meta(pty), started()).unwrap();
    writer.data(false, None, 100_000, b"$ ");
    writer.data(true, None, 900_000, b"l");
    writer.data(true, None, 1_000_000, b"s\r");
    writer.data(false, None, 1_010_000, b"ls\r\nfile \xe2\x82");
    writer.flush().unwrap();
    writer.resize(1_500_000, 132, 43);
    writer.data(false, Some(1), 2_000_000, b"\xacok\r\n");
    writer.data(false, None, 60_000_000, b"$ ");
    writer.finish(&Exit::Status(0), 61_000_000).unwrap();
    let bytes = std::fs::read(&f.path).unwrap();
    (f, bytes)
}

#[test]
fn asciicast_is_valid_ndjson_with_a_v2_header() {
    let (f, bytes) = recorded(true);
    let mut reader = Reader::open(&bytes[..], &f.private).unwrap();
    let mut out = Vec::new();
    let end = export::asciicast(&mut reader, &mut out).unwrap();
    assert!(matches!(end, End::Complete { .. }));
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 80);
    assert_eq!(header["height"], 24);
    assert_eq!(header["timestamp"], STARTED);
    assert_eq!(header["env"]["TERM"], "xterm-256color");
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut last = 0.0;
    for event in &events {
        let t = event[0].as_f64().unwrap();
        assert!(t >= last);
        last = t;
    }
    let compact: Vec<(f64, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e[0].as_f64().unwrap(),
                e[1].as_str().unwrap(),
                e[2].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        compact,
        [
            (0.1, "o", "$ "),
            (0.9, "i", "l"),
            (1.0, "i", "s\r"),
            // The euro sign is split across two packets: emitted whole with the second.
            (1.01, "o", "ls\r\nfile "),
            (1.5, "r", "132x43"),
            (2.0, "o", "€ok\r\n"),
            (60.0, "o", "$ "),
        ]
    );
}

#[test]
fn pty_zip_skips_input_and_extension_records() {
    let (f, bytes) = recorded(true);
    let members = unzip(&bytes, &f.private);
    assert_eq!(
        members.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["term_data.txt", "term_times.txt"]
    );
    assert_eq!(
        members[0].1,
        b"Session started on 2023-11-14 22:13:20+00 [TERM=\"xterm-256color\" COLUMNS=\"80\" LINES=\"24\"]\n$ ls\r\nfile \xe2\x82\xacok\r\n$ \nScript done on 2023-11-14 22:14:21+00 [COMMAND_EXIT_CODE=\"0\"]\n"
    );
    assert_eq!(
        String::from_utf8(members[1].1.clone()).unwrap(),
        "0.100000 2\n0.910000 11\n0.990000 5\n58.000000 2\n"
    );
}

#[test]
fn raw_zip_has_both_directions() {
    let (f, bytes) = recorded(false);
    let members = unzip(&bytes, &f.private);
    assert_eq!(members[0].0, "data_from_client.txt");
    assert_eq!(members[0].1, b"ls\r");
    assert_eq!(members[1].0, "data_from_server.txt");
    assert_eq!(members[1].1, b"$ ls\r\nfile \xe2\x82\xacok\r\n$ ");
}

// ---------------------------------------------------------------------------------------
// The file-operation trailer.

/// What ssh-log-cli's non-pty decrypt writes, modelled from the research note (§3, §4.4)
/// and independent of [`Reader`]: chunks in order until EOF or the first empty chunk,
/// then every packet's data by source.
fn ssh_log_cli_raw(bytes: &[u8], key: &RecordingPrivateKey) -> (Vec<u8>, Vec<u8>) {
    let mut stream = Vec::new();
    for chunk in raw_chunks(bytes, key) {
        if chunk.is_empty() {
            break;
        }
        stream.extend_from_slice(&chunk);
    }
    let (mut client, mut server) = (Vec::new(), Vec::new());
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let body = &rest[4..4 + len];
        match body[0] {
            0 => client.extend_from_slice(&body[13..]),
            1 => server.extend_from_slice(&body[13..]),
            other => panic!("source {other}"),
        }
        rest = &rest[4 + len..];
    }
    (client, server)
}

fn sftp_meta() -> ChannelMeta {
    ChannelMeta {
        channel: ChannelKind::Subsystem {
            name: "sftp".into(),
        },
        ..channel_meta(false)
    }
}

#[test]
fn file_operations_go_in_a_trailer_ssh_log_cli_does_not_read() {
    let f = fixture();
    let mut writer = FileWriter::create(&f.path, &f.public, &sftp_meta(), started()).unwrap();
    writer.data(true, None, 10, b"\x00\x00\x00\x05\x01\x00\x00\x00\x03");
    writer.data(false, None, 20, b"\x00\x00\x00\x05\x02\x00\x00\x00\x03");
    writer.file_op(30, br#"{"op":"open","path":"/tmp/a"}"#.to_vec());
    writer.data(true, None, 40, b"more");
    writer.file_op(50, br#"{"op":"remove","path":"/tmp/b"}"#.to_vec());
    let summary = writer.finish(&Exit::Status(0), 60).unwrap();
    assert_eq!((summary.file_ops, summary.file_ops_omitted), (2, 0));
    let bytes = std::fs::read(&f.path).unwrap();

    // ssh-log-cli sees exactly the channel's bytes.
    let (client, server) = ssh_log_cli_raw(&bytes, &f.private);
    assert_eq!(client, b"\x00\x00\x00\x05\x01\x00\x00\x00\x03more");
    assert_eq!(server, b"\x00\x00\x00\x05\x02\x00\x00\x00\x03");
    // One empty chunk, and the channel's stream ends in the chunk before it.
    let chunks = raw_chunks(&bytes, &f.private);
    let empty: Vec<usize> = (0..chunks.len())
        .filter(|&i| chunks[i].is_empty())
        .collect();
    assert_eq!(empty.len(), 1);
    assert!(whole_packets(&chunks[empty[0] - 1]));

    // Our reader sees the operations and a complete recording.
    let (packets, end) = read_all(&bytes, &f.private).unwrap();
    assert!(matches!(end, End::Complete { .. }));
    let kinds: Vec<Kind> = packets.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Input,
            Kind::Output,
            Kind::Input,
            Kind::FileOp,
            Kind::FileOp,
            Kind::End
        ]
    );
    assert_eq!(packets[3].data, br#"{"op":"open","path":"/tmp/a"}"#);

    // Our zip: ssh-log-cli's two members, the same bytes, plus the operations.
    let members = unzip(&bytes, &f.private);
    assert_eq!(members[0], ("data_from_client.txt".to_string(), client));
    assert_eq!(members[1], ("data_from_server.txt".to_string(), server));
    assert_eq!(members[2].0, export::FILE_OPERATIONS_MEMBER);
    assert_eq!(
        String::from_utf8(members[2].1.clone()).unwrap(),
        "{\"op\":\"open\",\"path\":\"/tmp/a\"}\n{\"op\":\"remove\",\"path\":\"/tmp/b\"}\n"
    );
}

#[test]
fn the_trailer_is_bounded_and_counts_what_it_left_out() {
    let f = fixture();
    let mut writer = FileWriter::create(&f.path, &f.public, &sftp_meta(), started()).unwrap();
    let op = format!("{{\"path\":\"{}\"}}", "x".repeat(1000)).into_bytes();
    let fits = format::WRITER_MAX_TRAILER_BYTES / op.len();
    for i in 0..fits + 7 {
        writer.file_op(i as u64, op.clone());
    }
    let summary = writer.finish(&Exit::Status(0), 1).unwrap();
    assert_eq!(
        (summary.file_ops, summary.file_ops_omitted),
        (fits as u64, 7)
    );
    let bytes = std::fs::read(&f.path).unwrap();
    let (packets, end) = read_all(&bytes, &f.private).unwrap();
    assert!(matches!(end, End::Complete { .. }));
    assert_eq!(
        packets[packets.len() - 2].kind,
        Kind::FileOpsOmitted { count: 7 }
    );
    // Without channel data ssh-log-cli sees an empty session.
    assert_eq!(ssh_log_cli_raw(&bytes, &f.private), (vec![], vec![]));
    let mut reader = Reader::open(&bytes[..], &f.private).unwrap();
    let mut jsonl = Vec::new();
    export::file_operations(&mut reader, &mut jsonl).unwrap();
    let text = String::from_utf8(jsonl).unwrap();
    assert_eq!(text.lines().count(), fits + 1);
    assert!(text.ends_with("{\"omitted\":7}\n"));
}

#[test]
fn a_channel_without_file_operations_has_no_trailer() {
    let (f, bytes) = recorded(false);
    assert!(
        raw_chunks(&bytes, &f.private)
            .iter()
            .all(|chunk| !chunk.is_empty())
    );
    assert_eq!(unzip(&bytes, &f.private).len(), 2);
}

#[test]
fn misplaced_trailer_records_are_corrupt() {
    type Part = fn(&mut Vec<u8>);
    let op: Part = |out| format::encode_packet(out, 0, CODE_FILE_OP, 1, b"{}");
    let data: Part = |out| format::encode_packet(out, 0, 0, 1, b"x");
    let end: Part = |out| format::encode_packet(out, 0, CODE_END, 2, b"");
    // Chunks to write, `None` = an empty chunk.
    let cases: [(&[Option<&[Part]>], &str); 4] = [
        (
            &[Some(&[data, op, end])],
            "file-operation record before the trailer's empty chunk",
        ),
        (
            &[Some(&[data]), None, Some(&[data, end])],
            "channel data after the trailer's empty chunk",
        ),
        (
            &[Some(&[data]), None, Some(&[op]), None, Some(&[end])],
            "a second empty chunk",
        ),
        (
            &[Some(&[data, end]), None],
            "after the end-of-recording record",
        ),
    ];
    for (chunks, expected) in cases {
        let f = fixture();
        let mut writer = FileWriter::create(&f.path, &f.public, &sftp_meta(), started()).unwrap();
        for chunk in chunks {
            let mut stream = Vec::new();
            for part in chunk.iter().copied().flatten() {
                part(&mut stream);
            }
            write_stream(&mut writer, &stream);
        }
        let bytes = std::fs::read(&f.path).unwrap();
        let err = read_all(&bytes, &f.private).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

fn unzip(bytes: &[u8], key: &RecordingPrivateKey) -> Vec<(String, Vec<u8>)> {
    let mut zip = Cursor::new(Vec::new());
    export::decrypted_zip(|| Reader::open(bytes, key), &mut zip, 0).unwrap();
    let mut archive = zip::ZipArchive::new(Cursor::new(zip.into_inner())).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut member = archive.by_index(i).unwrap();
            let mut data = Vec::new();
            member.read_to_end(&mut data).unwrap();
            (member.name().unwrap().to_string(), data)
        })
        .collect()
}

#[test]
fn replay_sleeps_scaled_and_capped() {
    let (f, bytes) = recorded(true);
    let mut reader = Reader::open(&bytes[..], &f.private).unwrap();
    let mut out = Vec::new();
    let mut sleeps = Vec::new();
    export::replay(&mut reader, &mut out, 2.0, Some(5.0), &mut |d| {
        sleeps.push(d)
    })
    .unwrap();
    assert_eq!(out, b"$ ls\r\nfile \xe2\x82\xacok\r\n$ ");
    let ms: Vec<u64> = sleeps
        .iter()
        .map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
        .collect();
    assert_eq!(ms, [50, 455, 495, 2500]);
}

// ---------------------------------------------------------------------------------------
// The async recorder.

#[tokio::test(start_paused = true)]
async fn recorder_flushes_within_a_second_without_real_sleeps() {
    let f = fixture();
    let recorder = Recorder::create(&f.path, &f.public, channel_meta(true))
        .await
        .unwrap();
    let chunks_on_disk = || chunk_offsets(&std::fs::read(&f.path).unwrap()).len();

    recorder
        .data(false, None, Bytes::from_static(b"hello"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(chunks_on_disk(), 0, "not yet: buffered for up to a second");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(chunks_on_disk(), 1, "flushed by the timer");

    // A gap of more than a second, then more data: flushed a second after it arrived.
    tokio::time::sleep(Duration::from_secs(5)).await;
    recorder.resize(100, 40).await;
    recorder.data(true, None, Bytes::from_static(b"x")).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(chunks_on_disk(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(chunks_on_disk(), 2);

    // A crash now leaves a readable, truncated recording.
    let bytes = std::fs::read(&f.path).unwrap();
    let (packets, end) = read_all(&bytes, &f.private).unwrap();
    assert_eq!(packets.len(), 3);
    assert_eq!(packets[0].elapsed_us, 0);
    assert!((6_200_000..6_300_000).contains(&packets[1].elapsed_us));
    assert_eq!(
        packets[1].kind,
        Kind::Resize {
            cols: 100,
            rows: 40
        }
    );
    assert!(matches!(
        end,
        End::Truncated(Truncation::AfterChunk { chunks: 2, .. })
    ));
    assert_eq!(header(&bytes).exit_data, None);

    assert_eq!(recorder.failed(), None);
    let summary = recorder.finish(Exit::Status(3)).await.unwrap();
    assert_eq!(summary.chunks, 3);
    assert_eq!(summary.packets, 4);
    let bytes = std::fs::read(&f.path).unwrap();
    let (packets, end) = read_all(&bytes, &f.private).unwrap();
    assert_eq!(packets.len(), 4);
    assert!(matches!(end, End::Complete { end_elapsed_us } if end_elapsed_us >= 7_300_000));
    assert_eq!(header(&bytes).exit_data.unwrap().status, Some(3));
}

#[tokio::test(start_paused = true)]
async fn recorder_flushes_every_256_kib() {
    let f = fixture();
    let recorder = Recorder::create(&f.path, &f.public, channel_meta(false))
        .await
        .unwrap();
    let sends = format::WRITER_FLUSH_BYTES / (16 * 1024) + 1;
    for _ in 0..sends {
        recorder
            .data(false, None, Bytes::from(vec![b'x'; 16 * 1024]))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let bytes = std::fs::read(&f.path).unwrap();
    let chunks = raw_chunks(&bytes, &f.private);
    assert_eq!(chunks.len(), 1);
    assert!(chunks[0].len() >= format::WRITER_FLUSH_BYTES);
    let summary = recorder
        .finish(Exit::Error("upstream lost".into()))
        .await
        .unwrap();
    assert_eq!(summary.packets, sends as u64 + 1);
    let bytes = std::fs::read(&f.path).unwrap();
    assert_eq!(
        header(&bytes).exit_data.unwrap().error_msg.as_deref(),
        Some("upstream lost")
    );
}

#[tokio::test(start_paused = true)]
async fn recorder_dropped_without_finish_reads_as_truncated() {
    let f = fixture();
    let recorder = Recorder::create(&f.path, &f.public, channel_meta(true))
        .await
        .unwrap();
    recorder.data(false, None, Bytes::from_static(b"bye")).await;
    drop(recorder);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let bytes = std::fs::read(&f.path).unwrap();
    let (packets, end) = read_all(&bytes, &f.private).unwrap();
    assert_eq!(packets.len(), 1);
    assert!(matches!(end, End::Truncated(_)));
}

#[tokio::test]
async fn recorder_create_fails_clearly() {
    let f = fixture();
    let missing = f.path.join("no/such/dir/rec");
    let err = Recorder::create(&missing, &f.public, channel_meta(true))
        .await
        .err()
        .unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot create recording") && text.contains("No such file"),
        "{text}"
    );
}

#[test]
fn exit_signal_names() {
    assert_eq!(
        Exit::signal(&russh::Sig::TERM, false),
        Exit::Signal {
            name: "TERM".into(),
            core_dumped: false
        }
    );
    assert_eq!(
        Exit::signal(&russh::Sig::Custom("XCPU".into()), true),
        Exit::Signal {
            name: "XCPU".into(),
            core_dumped: true
        }
    );
}

/// A pty requested as 0×0 (RFC 4254: zero dimensions are ignored), with `resize`d later
/// to the given size, if any.
fn recorded_zero_pty(resize: Option<(u32, u32)>) -> (Fixture, Vec<u8>) {
    let f = fixture();
    let mut meta = channel_meta(true);
    if let Some(pty) = meta.pty.as_mut() {
        pty.width = 0;
        pty.height = 0;
    }
    let mut writer = FileWriter::create(&f.path, &f.public, &meta, started()).unwrap();
    writer.data(false, None, 100_000, b"$ ");
    writer.flush().unwrap();
    writer.resize(200_000, 0, 0);
    if let Some((cols, rows)) = resize {
        writer.resize(300_000, cols, rows);
    }
    writer.data(false, None, 400_000, b"ok\r\n");
    writer.finish(&Exit::Status(0), 500_000).unwrap();
    let bytes = std::fs::read(&f.path).unwrap();
    (f, bytes)
}

fn cast_of(f: &Fixture, bytes: &[u8]) -> Vec<serde_json::Value> {
    let mut reader = Reader::open(bytes, &f.private).unwrap();
    let mut out = Vec::new();
    export::asciicast(&mut reader, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_zero_sized_pty_takes_its_first_resize_or_80_by_24() {
    let (f, bytes) = recorded_zero_pty(Some((132, 43)));
    let cast = cast_of(&f, &bytes);
    assert_eq!(
        (cast[0]["width"].as_u64(), cast[0]["height"].as_u64()),
        (Some(132), Some(43))
    );
    let events: Vec<(&str, &str)> = cast[1..]
        .iter()
        .map(|e| (e[1].as_str().unwrap(), e[2].as_str().unwrap()))
        .collect();
    // The output before the resize is kept, in order; the 0x0 resize is left out.
    assert_eq!(events, [("o", "$ "), ("r", "132x43"), ("o", "ok\r\n")]);

    let (f, bytes) = recorded_zero_pty(None);
    let cast = cast_of(&f, &bytes);
    assert_eq!(
        (cast[0]["width"].as_u64(), cast[0]["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert_eq!(cast.len(), 3, "{cast:?}");
    let header =
        export::term_data_header(&Reader::open(&bytes[..], &f.private).unwrap().meta().clone());
    assert!(header.contains("COLUMNS=\"80\" LINES=\"24\""), "{header}");
}

#[test]
fn a_giant_terminal_is_capped_in_the_asciicast() {
    // A client may ask for any size; the player must still be able to draw it.
    let (f, bytes) = recorded_zero_pty(Some((60_000, 60_000)));
    let cast = cast_of(&f, &bytes);
    assert_eq!(
        (cast[0]["width"].as_u64(), cast[0]["height"].as_u64()),
        (Some(1000), Some(500))
    );
    assert!(
        cast.iter().any(|e| e[1] == "r" && e[2] == "1000x500"),
        "{cast:?}"
    );
    let f = fixture();
    let mut meta = channel_meta(true);
    meta.pty.as_mut().unwrap().width = 100_000;
    let mut writer = FileWriter::create(&f.path, &f.public, &meta, started()).unwrap();
    writer.data(false, None, 100_000, b"$ ");
    writer.finish(&Exit::Status(0), 200_000).unwrap();
    let cast = cast_of(&f, &std::fs::read(&f.path).unwrap());
    assert_eq!(
        (cast[0]["width"].as_u64(), cast[0]["height"].as_u64()),
        (Some(1000), Some(24))
    );
}
