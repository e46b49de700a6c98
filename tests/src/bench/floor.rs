//! The crypto floor: what the AEADs sshgw negotiates cost per relayed GiB, measured in the
//! same run as the bulk figure, and sshgw's CPU per GiB as a ratio to it.
//!
//! A relayed byte is decrypted once on one leg and encrypted once on the other: an upload
//! opens the device leg's cipher and seals the server leg's, a download the other way
//! round. The floor of a direction is the sum of those two costs per GiB of channel data.
//! Each AEAD is timed twice:
//!
//! * **crates**: aws-lc-rs, the provider russh is built with (its default `aws-lc-rs`
//!   feature; `third_party/russh/src/cipher/`), called the way russh calls it: one SSH
//!   packet at a time, in place, a `CHANNEL_DATA` packet of 32 KiB data (OpenSSH's and
//!   russh's maximum packet) with its header and padding; ChaCha20-Poly1305 through
//!   `chacha20_poly1305_openssh` (length decrypted separately, sequence number as nonce),
//!   AES-GCM through a bound key with a counter nonce and the packet length as AAD.
//!   Sealing alone is timed over N packets, then seal-and-open of the same packets; opening
//!   is the difference (no copies in the loop).
//! * **openssl**: `openssl speed -evp NAME -bytes 16384`, encrypting and (`-decrypt`)
//!   decrypting: the fastest implementation on the machine, without SSH framing. OpenSSL's
//!   `chacha20-poly1305` is the IETF construction; OpenSSH's costs the same per byte plus a
//!   64-byte ChaCha20 block per packet for the length.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use aws_lc_rs::aead::{
    AES_128_GCM, AES_256_GCM, Aad, Algorithm, BoundKey, NONCE_LEN, Nonce, NonceSequence,
    OpeningKey, SealingKey, UnboundKey, chacha20_poly1305_openssh,
};
use aws_lc_rs::error::Unspecified;
use serde::Serialize;

use super::bulk::{BulkFigure, Direction, GIB};
use super::env::Route;
use super::stats::{median, ratio};

/// The device leg's default (OpenSSH's first choice, allowed by sshgw by default).
pub const CHACHA: &str = "chacha20-poly1305@openssh.com";
/// sshgw's first `upstream_ciphers` choice.
pub const AES128_GCM: &str = "aes128-gcm@openssh.com";
pub const AES256_GCM: &str = "aes256-gcm@openssh.com";
pub const CIPHERS: [&str; 3] = [CHACHA, AES128_GCM, AES256_GCM];

/// Channel data per packet.
pub const PACKET_DATA: usize = 32 * 1024;
/// OpenSSL block size timed (the largest `openssl speed` default size).
pub const OPENSSL_BYTES: usize = 16384;

/// Targets of issue 19: sshgw's CPU per GiB against the OpenSSL floor.
pub const TARGET_RATIO: f64 = 1.15;
pub const TARGET_LOGGED_RATIO: f64 = 1.4;

/// One AEAD's cost, in CPU seconds per GiB of channel data.
#[derive(Debug, Clone, Serialize)]
pub struct AeadCost {
    pub cipher: String,
    pub seal_s_per_gib: f64,
    pub open_s_per_gib: f64,
}

impl AeadCost {
    pub fn seal_mb_s(&self) -> f64 {
        GIB / self.seal_s_per_gib / 1e6
    }
    pub fn open_mb_s(&self) -> f64 {
        GIB / self.open_s_per_gib / 1e6
    }
}

/// The floor of one direction: open the source leg's cipher, seal the other leg's.
#[derive(Debug, Clone, Serialize)]
pub struct DirectionFloor {
    pub direction: Direction,
    /// What is opened and what is sealed for a byte of this direction.
    pub opens: Vec<String>,
    pub seals: Vec<String>,
    pub crates_s_per_gib: f64,
    pub openssl_s_per_gib: f64,
}

/// sshgw's CPU per GiB (from the bulk figure of the same run) against the floors.
#[derive(Debug, Clone, Serialize)]
pub struct FloorRatio {
    pub direction: Direction,
    pub route: Route,
    pub sshgw_s_per_gib: f64,
    pub crates_s_per_gib: f64,
    pub openssl_s_per_gib: f64,
    pub vs_crates: f64,
    pub vs_openssl: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloorFigure {
    /// "aws-lc-rs 1.x (russh's provider)".
    pub crates_impl: String,
    pub openssl_version: String,
    pub packet_data_bytes: usize,
    pub openssl_bytes: usize,
    /// Median of this many timings per AEAD and operation (crates).
    pub rounds: usize,
    pub crates: Vec<AeadCost>,
    pub openssl: Vec<AeadCost>,
    /// The negotiated pair the floors are for, and where it comes from.
    pub device_cipher: String,
    pub server_cipher: String,
    pub pair_source: String,
    pub floors: Vec<DirectionFloor>,
    /// Empty unless the bulk figure ran in the same run.
    pub ratios: Vec<FloorRatio>,
}

/// A line for the summary table (see `report.rs`); `ok` None: no target.
pub struct SummaryRow {
    pub figure: String,
    pub direct: String,
    pub sshgw: String,
    pub comparison: String,
    pub target: &'static str,
    pub ok: Option<bool>,
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "n/a".to_owned()
    }
}

/// A counter nonce, as russh's `gcm.rs` keeps one (here starting from zero).
struct Counter(u64);

impl NonceSequence for Counter {
    fn advance(&mut self) -> Result<Nonce, Unspecified> {
        let mut n = [0u8; NONCE_LEN];
        n[NONCE_LEN - 8..].copy_from_slice(&self.0.to_be_bytes());
        self.0 = self.0.wrapping_add(1);
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// Bytes of one `CHANNEL_DATA` packet carrying [`PACKET_DATA`] bytes, as russh pads it
/// (`padding_length` of `chacha20poly1305.rs` and `gcm.rs`: block 8 or 16, at least 4).
fn packet_len(block: usize) -> usize {
    let payload = 1 + 4 + 4 + PACKET_DATA; // type, channel, string length, data
    let mut pad = block - ((1 + payload) % block);
    if pad < 4 {
        pad += block;
    }
    4 + 1 + payload + pad
}

/// Seconds for `packets` seals, and for `packets` seal+open pairs.
trait PacketAead {
    fn seal_only(&mut self, packets: usize) -> Result<()>;
    fn seal_open(&mut self, packets: usize) -> Result<()>;
}

struct Chacha {
    seal: chacha20_poly1305_openssh::SealingKey,
    open: chacha20_poly1305_openssh::OpeningKey,
    buf: Vec<u8>,
    seq: u32,
}

impl Chacha {
    fn new() -> Self {
        let key = [7u8; chacha20_poly1305_openssh::KEY_LEN];
        Self {
            seal: chacha20_poly1305_openssh::SealingKey::new(&key),
            open: chacha20_poly1305_openssh::OpeningKey::new(&key),
            buf: vec![0u8; packet_len(8)],
            seq: 0,
        }
    }

    fn seal_one(&mut self) -> [u8; chacha20_poly1305_openssh::TAG_LEN] {
        let mut tag = [0u8; chacha20_poly1305_openssh::TAG_LEN];
        let len = (self.buf.len() as u32 - 4).to_be_bytes();
        self.buf[..4].copy_from_slice(&len);
        self.seal.seal_in_place(self.seq, &mut self.buf, &mut tag);
        tag
    }
}

impl PacketAead for Chacha {
    fn seal_only(&mut self, packets: usize) -> Result<()> {
        for _ in 0..packets {
            black_box(self.seal_one());
            self.seq = self.seq.wrapping_add(1);
        }
        Ok(())
    }

    fn seal_open(&mut self, packets: usize) -> Result<()> {
        for _ in 0..packets {
            let tag = self.seal_one();
            let mut len = [0u8; 4];
            len.copy_from_slice(&self.buf[..4]);
            black_box(self.open.decrypt_packet_length(self.seq, len));
            self.open
                .open_in_place(self.seq, &mut self.buf, &tag)
                .map_err(|_| anyhow::anyhow!("chacha20-poly1305 open failed"))?;
            self.seq = self.seq.wrapping_add(1);
        }
        Ok(())
    }
}

struct Gcm {
    alg: &'static Algorithm,
    key: Vec<u8>,
    seal: SealingKey<Counter>,
    /// Packets sealed so far: the opening key's next nonce.
    sealed: u64,
    /// The packet followed by room for the tag (russh opens ciphertext and tag in place).
    buf: Vec<u8>,
    len: usize,
}

impl Gcm {
    fn new(alg: &'static Algorithm) -> Result<Self> {
        let key = vec![9u8; alg.key_len()];
        let len = packet_len(16);
        Ok(Self {
            seal: SealingKey::new(Self::unbound(alg, &key)?, Counter(0)),
            alg,
            key,
            sealed: 0,
            buf: vec![0u8; len + alg.tag_len()],
            len,
        })
    }

    fn unbound(alg: &'static Algorithm, key: &[u8]) -> Result<UnboundKey> {
        UnboundKey::new(alg, key).map_err(|_| anyhow::anyhow!("AES-GCM key"))
    }

    fn seal_one(&mut self) -> Result<()> {
        let len = self.len;
        let packet_length = (len as u32 - 4).to_be_bytes();
        self.buf[..4].copy_from_slice(&packet_length);
        let tag = self
            .seal
            .seal_in_place_separate_tag(Aad::from(&packet_length), &mut self.buf[4..len])
            .map_err(|_| anyhow::anyhow!("AES-GCM seal failed"))?;
        self.buf[len..].copy_from_slice(tag.as_ref());
        self.sealed += 1;
        Ok(())
    }
}

impl PacketAead for Gcm {
    fn seal_only(&mut self, packets: usize) -> Result<()> {
        for _ in 0..packets {
            self.seal_one()?;
        }
        Ok(())
    }

    fn seal_open(&mut self, packets: usize) -> Result<()> {
        // The opening side starts where the sealing side is: one key schedule per call,
        // negligible against thousands of packets.
        let mut open = OpeningKey::new(Self::unbound(self.alg, &self.key)?, Counter(self.sealed));
        for _ in 0..packets {
            self.seal_one()?;
            let mut packet_length = [0u8; 4];
            packet_length.copy_from_slice(&self.buf[..4]);
            black_box(
                open.open_in_place(Aad::from(&packet_length), &mut self.buf[4..])
                    .map_err(|_| anyhow::anyhow!("AES-GCM open failed"))?,
            );
        }
        Ok(())
    }
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Times one AEAD of the crates: `rounds` medians of `packets` packets.
fn time_crate(cipher: &str, packets: usize, rounds: usize) -> Result<AeadCost> {
    let mut aead: Box<dyn PacketAead> = match cipher {
        CHACHA => Box::new(Chacha::new()),
        AES128_GCM => Box::new(Gcm::new(&AES_128_GCM)?),
        AES256_GCM => Box::new(Gcm::new(&AES_256_GCM)?),
        other => bail!("no timing for {other}"),
    };
    aead.seal_open(packets / 4)?; // warm-up
    let per_gib = (GIB / PACKET_DATA as f64) / packets as f64;
    let (mut seal, mut open) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let s = timed(|| aead.seal_only(packets))?;
        let so = timed(|| aead.seal_open(packets))?;
        seal.push(s * per_gib);
        open.push((so - s).max(0.0) * per_gib);
    }
    Ok(AeadCost {
        cipher: cipher.to_owned(),
        seal_s_per_gib: median(&seal),
        open_s_per_gib: median(&open),
    })
}

fn openssl_name(cipher: &str) -> &'static str {
    match cipher {
        CHACHA => "chacha20-poly1305",
        AES128_GCM => "aes-128-gcm",
        _ => "aes-256-gcm",
    }
}

/// Bytes per second from `openssl speed -bytes N` output: the number (in 1000s of bytes per
/// second, suffix `k`) on the line after the `type` header.
pub fn parse_openssl_speed(out: &str) -> Option<f64> {
    let mut lines = out.lines().skip_while(|l| !l.starts_with("type"));
    lines.next()?;
    let v = lines.next()?.split_whitespace().last()?;
    Some(v.strip_suffix('k')?.parse::<f64>().ok()? * 1000.0)
}

fn openssl_speed(cipher: &str, decrypt: bool, seconds: u32) -> Result<f64> {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-seconds", &seconds.to_string()])
        .args(["-bytes", &OPENSSL_BYTES.to_string()]);
    if decrypt {
        cmd.arg("-decrypt");
    }
    cmd.args(["-evp", openssl_name(cipher)]);
    let out = cmd.output().context("running openssl speed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "openssl speed {cipher} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_openssl_speed(&text).with_context(|| format!("no speed in openssl output {text:?}"))
}

/// sshgw's server-leg cipher: the first of `upstream_ciphers` in `--gateway-ssh`, else its
/// default (AES-128-GCM first).
pub fn server_cipher(gateway_ssh: &[String]) -> String {
    gateway_ssh
        .iter()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == "upstream_ciphers")
        .and_then(|(_, v)| v.split('"').nth(1).map(str::to_owned))
        .unwrap_or_else(|| AES128_GCM.to_owned())
}

/// Measures the AEADs (no lab needed). `quick`: fewer packets, 1 s of `openssl speed`.
pub fn measure(quick: bool, gateway_ssh: &[String], log: &dyn Fn(&str)) -> Result<FloorFigure> {
    let (packets, rounds, seconds) = if quick { (2048, 3, 1) } else { (8192, 5, 2) };
    let mut crates = Vec::new();
    let mut openssl = Vec::new();
    for cipher in CIPHERS {
        let c = time_crate(cipher, packets, rounds)?;
        let o = AeadCost {
            cipher: cipher.to_owned(),
            seal_s_per_gib: GIB / openssl_speed(cipher, false, seconds)?,
            open_s_per_gib: GIB / openssl_speed(cipher, true, seconds)?,
        };
        log(&format!(
            "floor {cipher:<30} aws-lc-rs seal {:6.0} open {:6.0} MB/s; openssl seal {:6.0} open {:6.0} MB/s",
            c.seal_mb_s(),
            c.open_mb_s(),
            o.seal_mb_s(),
            o.open_mb_s()
        ));
        crates.push(c);
        openssl.push(o);
    }
    let openssl_version = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            // "OpenSSL 3.0.19 27 Jan 2026 (Library: ...)": the part before the library's.
            text.split(" (")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    let mut fig = FloorFigure {
        crates_impl: "aws-lc-rs (russh's provider)".to_owned(),
        openssl_version,
        packet_data_bytes: PACKET_DATA,
        openssl_bytes: OPENSSL_BYTES,
        rounds,
        crates,
        openssl,
        device_cipher: String::new(),
        server_cipher: String::new(),
        pair_source: String::new(),
        floors: Vec::new(),
        ratios: Vec::new(),
    };
    fig.set_pair(
        CHACHA,
        &server_cipher(gateway_ssh),
        "defaults: OpenSSH's first choice on the device leg, sshgw's upstream_ciphers",
    );
    Ok(fig)
}

impl FloorFigure {
    fn cost<'a>(list: &'a [AeadCost], cipher: &str) -> Option<&'a AeadCost> {
        list.iter().find(|c| c.cipher == cipher)
    }

    /// Sets the negotiated pair and recomputes the floors per direction.
    pub fn set_pair(&mut self, device: &str, server: &str, source: &str) {
        self.device_cipher = device.to_owned();
        self.server_cipher = server.to_owned();
        self.pair_source = source.to_owned();
        self.floors.clear();
        let floor = |list: &[AeadCost], opens: &[&str], seals: &[&str]| -> f64 {
            let o: Option<f64> = opens
                .iter()
                .map(|c| Self::cost(list, c).map(|c| c.open_s_per_gib))
                .sum();
            let s: Option<f64> = seals
                .iter()
                .map(|c| Self::cost(list, c).map(|c| c.seal_s_per_gib))
                .sum();
            match (o, s) {
                (Some(o), Some(s)) => o + s,
                _ => f64::NAN,
            }
        };
        for direction in Direction::ALL {
            // Both ways: per GiB of one direction, with as much moving the other way.
            let (opens, seals): (Vec<&str>, Vec<&str>) = match direction {
                Direction::Upload => (vec![device], vec![server]),
                Direction::Download => (vec![server], vec![device]),
                Direction::Both => (vec![device, server], vec![server, device]),
            };
            self.floors.push(DirectionFloor {
                direction,
                opens: opens.iter().map(|s| (*s).to_owned()).collect(),
                seals: seals.iter().map(|s| (*s).to_owned()).collect(),
                crates_s_per_gib: floor(&self.crates, &opens, &seals),
                openssl_s_per_gib: floor(&self.openssl, &opens, &seals),
            });
        }
    }

    pub fn floor(&self, direction: Direction) -> Option<&DirectionFloor> {
        self.floors.iter().find(|f| f.direction == direction)
    }

    /// Ratios of sshgw's CPU per GiB in `bulk` to the floors, for the pair `bulk` reports
    /// (device leg from `ssh -v`; server leg from sshgw's configuration).
    pub fn compare(&mut self, bulk: &BulkFigure, gateway_ssh: &[String]) {
        if let Some(device) = &bulk.device_cipher {
            self.set_pair(
                device,
                &server_cipher(gateway_ssh),
                "device leg: `ssh -v` in the bulk figure; server leg: sshgw's upstream_ciphers",
            );
        }
        self.ratios.clear();
        for direction in Direction::ALL {
            let Some(f) = self.floor(direction).cloned() else {
                continue;
            };
            for route in [Route::Sshgw, Route::SshgwLogged] {
                let Some(gw) = bulk
                    .get(route, direction)
                    .and_then(|s| s.sshgw_cpu_s_per_gib)
                else {
                    continue;
                };
                self.ratios.push(FloorRatio {
                    direction,
                    route,
                    sshgw_s_per_gib: gw,
                    crates_s_per_gib: f.crates_s_per_gib,
                    openssl_s_per_gib: f.openssl_s_per_gib,
                    vs_crates: ratio(gw, f.crates_s_per_gib),
                    vs_openssl: ratio(gw, f.openssl_s_per_gib),
                });
            }
        }
    }

    /// Summary lines: sshgw's CPU per GiB against the OpenSSL floor (or the floor alone).
    pub fn rows(&self) -> Vec<SummaryRow> {
        let mut rows = Vec::new();
        if self.ratios.is_empty() {
            for f in self
                .floors
                .iter()
                .filter(|f| f.direction != Direction::Both)
            {
                rows.push(SummaryRow {
                    figure: format!(
                        "g) crypto floor, {} (s/GiB: aws-lc-rs / OpenSSL; no bulk figure in this run)",
                        f.direction.label()
                    ),
                    direct: num(f.crates_s_per_gib, 2),
                    sshgw: num(f.openssl_s_per_gib, 2),
                    comparison: String::new(),
                    target: "",
                    ok: None,
                });
            }
            return rows;
        }
        for r in &self.ratios {
            let plain = r.route == Route::Sshgw;
            let targeted = r.direction != Direction::Both;
            let target = if !targeted {
                ""
            } else if plain {
                "≤ 1.15×"
            } else {
                "≤ 1.4×"
            };
            let limit = if plain {
                TARGET_RATIO
            } else {
                TARGET_LOGGED_RATIO
            };
            rows.push(SummaryRow {
                figure: format!(
                    "g) CPU vs crypto floor, {}{} (s/GiB: OpenSSL floor vs sshgw)",
                    r.direction.label(),
                    if plain { "" } else { ", command logging" }
                ),
                direct: num(r.openssl_s_per_gib, 2),
                sshgw: num(r.sshgw_s_per_gib, 2),
                comparison: format!(
                    "{}× (aws-lc-rs floor {}×)",
                    num(r.vs_openssl, 2),
                    num(r.vs_crates, 2)
                ),
                target,
                ok: targeted.then_some(r.vs_openssl <= limit),
            });
        }
        rows
    }

    /// The details: per-AEAD speeds, the floors, and the ratios.
    pub fn markdown(&self, md: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            md,
            "\n**Crypto floor** (MB/s of data; {}: {} KiB packets, in place, median of {}; {}: `openssl speed -evp`, {}-byte blocks)\n",
            self.crates_impl,
            self.packet_data_bytes / 1024,
            self.rounds,
            self.openssl_version,
            self.openssl_bytes
        );
        md.push_str(
            "| AEAD | aws-lc-rs seal | aws-lc-rs open | OpenSSL encrypt | OpenSSL decrypt |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|\n");
        for c in &self.crates {
            let o = Self::cost(&self.openssl, &c.cipher);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                c.cipher,
                num(c.seal_mb_s(), 0),
                num(c.open_mb_s(), 0),
                o.map_or("n/a".to_owned(), |o| num(o.seal_mb_s(), 0)),
                o.map_or("n/a".to_owned(), |o| num(o.open_mb_s(), 0)),
            );
        }
        let _ = writeln!(
            md,
            "\nFloor per relayed GiB for device leg `{}`, server leg `{}` ({}):\n",
            self.device_cipher, self.server_cipher, self.pair_source
        );
        if self.ratios.is_empty() {
            md.push_str(
                "| Direction | Opens | Seals | aws-lc-rs floor (s/GiB) | OpenSSL floor (s/GiB) |\n",
            );
            md.push_str("|---|---|---|---:|---:|\n");
            for f in &self.floors {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    f.direction.label(),
                    f.opens.join(" + "),
                    f.seals.join(" + "),
                    num(f.crates_s_per_gib, 2),
                    num(f.openssl_s_per_gib, 2)
                );
            }
            md.push_str("\nNo bulk figure in this run: no ratios.\n");
            return;
        }
        md.push_str("| Direction | Route | aws-lc-rs floor (s/GiB) | OpenSSL floor (s/GiB) | sshgw (s/GiB) | vs aws-lc-rs | vs OpenSSL |\n");
        md.push_str("|---|---|---:|---:|---:|---:|---:|\n");
        for r in &self.ratios {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {}× | {}× |",
                r.direction.label(),
                r.route.label(),
                num(r.crates_s_per_gib, 2),
                num(r.openssl_s_per_gib, 2),
                num(r.sshgw_s_per_gib, 2),
                num(r.vs_crates, 2),
                num(r.vs_openssl, 2)
            );
        }
    }
}
