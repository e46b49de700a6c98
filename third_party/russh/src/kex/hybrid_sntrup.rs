//! `sntrup761x25519-sha512` (and its older name `sntrup761x25519-sha512@openssh.com`):
//! Streamlined NTRU Prime 761 combined with X25519, as OpenSSH 9.0–9.8 and PuTTY 0.78
//! offer it (draft-josefsson-ntruprime-ssh). The client sends its sntrup761 public key
//! followed by its X25519 public key; the server answers with the sntrup761 ciphertext
//! followed by its X25519 public key; the shared secret is
//! `SHA-512(sntrup761 key || X25519 key)`, encoded as a string, and SHA-512 hashes the
//! exchange. (sshgw patch: see SSHGW-PATCH.md.)

use byteorder::{BigEndian, ByteOrder};
use curve25519_dalek::montgomery::MontgomeryPoint;
use log::debug;
use sha2::Digest;
use ssh_encoding::{Encode, Writer};

use super::{compute_keys, KexAlgorithm, KexAlgorithmImplementor, KexType, SharedSecret};
use crate::mac;
use crate::session::Exchange;
use crate::{cipher, msg, CryptoVec, Error};

const SNTRUP761_PUBLIC_KEY_SIZE: usize = 1158;
const SNTRUP761_CIPHERTEXT_SIZE: usize = 1039;
const X25519_PUBLIC_KEY_SIZE: usize = 32;

pub struct Sntrup761X25519KexType {}

impl KexType for Sntrup761X25519KexType {
    fn make(&self) -> KexAlgorithm {
        Sntrup761X25519Kex::default().into()
    }
}

#[doc(hidden)]
#[derive(Default)]
pub struct Sntrup761X25519Kex {
    sntrup_secret: Option<Box<sntrup761::DecapsulationKey>>,
    x25519_secret: Option<zeroize::Zeroizing<[u8; 32]>>,
    /// `SHA-512(sntrup761 key || X25519 key)`, once both sides' parts are known.
    shared: Option<zeroize::Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Sntrup761X25519Kex {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Sntrup761X25519Kex {{ [hidden] }}")
    }
}

/// `SHA-512(k_pq || k_cl)`, refusing an all-zero X25519 result (a low-order point).
fn combine(k_pq: &sntrup761::SharedSecret, k_cl: &MontgomeryPoint) -> Result<Vec<u8>, Error> {
    if k_cl.0 == [0u8; 32] {
        debug!("the peer sent a low-order curve25519 public key");
        return Err(Error::Kex);
    }
    let mut hasher = sha2::Sha512::new();
    hasher.update(k_pq.as_ref());
    hasher.update(k_cl.0);
    Ok(hasher.finalize().to_vec())
}

impl KexAlgorithmImplementor for Sntrup761X25519Kex {
    fn skip_exchange(&self) -> bool {
        false
    }

    fn server_dh(&mut self, exchange: &mut Exchange, payload: &[u8]) -> Result<(), Error> {
        debug!("server_dh (sntrup761x25519)");
        if payload.first() != Some(&msg::KEX_HYBRID_INIT) {
            return Err(Error::Inconsistent);
        }
        let len = payload
            .get(1..5)
            .map(BigEndian::read_u32)
            .ok_or(Error::Inconsistent)? as usize;
        if len != SNTRUP761_PUBLIC_KEY_SIZE + X25519_PUBLIC_KEY_SIZE {
            return Err(Error::Kex);
        }
        let c_init = payload.get(5..5 + len).ok_or(Error::Inconsistent)?;
        let (c_pq, c_cl) = c_init.split_at(SNTRUP761_PUBLIC_KEY_SIZE);
        let c_pq = sntrup761::EncapsulationKey::try_from(c_pq).map_err(|_| Error::Kex)?;
        let mut c_cl_point = MontgomeryPoint([0; 32]);
        c_cl_point.0.copy_from_slice(c_cl);

        let (ciphertext, k_pq) = c_pq.encapsulate(rand::rng());
        let s_secret = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
        let s_cl = MontgomeryPoint::mul_base_clamped(*s_secret);
        let k_cl = c_cl_point.mul_clamped(*s_secret);

        exchange.server_ephemeral.clear();
        exchange
            .server_ephemeral
            .extend_from_slice(ciphertext.as_ref());
        exchange.server_ephemeral.extend_from_slice(&s_cl.0);
        self.shared = Some(zeroize::Zeroizing::new(combine(&k_pq, &k_cl)?));
        Ok(())
    }

    fn client_dh(
        &mut self,
        client_ephemeral: &mut Vec<u8>,
        writer: &mut impl Writer,
    ) -> Result<(), Error> {
        let (pq_public, pq_secret) = sntrup761::generate_key(rand::rng());
        let x25519_secret = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
        let x25519_public = MontgomeryPoint::mul_base_clamped(*x25519_secret);

        client_ephemeral.clear();
        client_ephemeral.extend_from_slice(pq_public.as_ref());
        client_ephemeral.extend_from_slice(&x25519_public.0);
        msg::KEX_HYBRID_INIT.encode(writer)?;
        client_ephemeral.as_slice().encode(writer)?;

        self.sntrup_secret = Some(Box::new(pq_secret));
        self.x25519_secret = Some(x25519_secret);
        Ok(())
    }

    fn compute_shared_secret(&mut self, remote: &[u8]) -> Result<(), Error> {
        if remote.len() != SNTRUP761_CIPHERTEXT_SIZE + X25519_PUBLIC_KEY_SIZE {
            return Err(Error::Kex);
        }
        let (s_pq, s_cl) = remote.split_at(SNTRUP761_CIPHERTEXT_SIZE);
        let ciphertext = sntrup761::Ciphertext::try_from(s_pq).map_err(|_| Error::Kex)?;
        let pq_secret = self.sntrup_secret.take().ok_or(Error::KexInit)?;
        let k_pq = pq_secret.decapsulate(&ciphertext);
        let mut s_cl_point = MontgomeryPoint([0; 32]);
        s_cl_point.0.copy_from_slice(s_cl);
        let x25519_secret = self.x25519_secret.take().ok_or(Error::KexInit)?;
        let k_cl = s_cl_point.mul_clamped(*x25519_secret);
        self.shared = Some(zeroize::Zeroizing::new(combine(&k_pq, &k_cl)?));
        Ok(())
    }

    fn shared_secret_bytes(&self) -> Option<&[u8]> {
        self.shared.as_ref().map(|k| k.as_slice())
    }

    fn compute_exchange_hash(
        &self,
        key: &[u8],
        exchange: &Exchange,
        buffer: &mut CryptoVec,
    ) -> Result<Vec<u8>, Error> {
        let shared = self.shared.as_ref().ok_or(Error::KexInit)?;
        buffer.clear();
        exchange.client_id.encode(buffer)?;
        exchange.server_id.encode(buffer)?;
        exchange.client_kex_init.encode(buffer)?;
        exchange.server_kex_init.encode(buffer)?;
        buffer.extend(key);
        exchange.client_ephemeral.encode(buffer)?;
        exchange.server_ephemeral.encode(buffer)?;
        shared.as_slice().encode(buffer)?;
        let mut hasher = sha2::Sha512::new();
        hasher.update(&buffer);
        Ok(hasher.finalize().to_vec())
    }

    fn compute_keys(
        &self,
        session_id: &[u8],
        exchange_hash: &[u8],
        cipher: cipher::Name,
        remote_to_local_mac: mac::Name,
        local_to_remote_mac: mac::Name,
        is_server: bool,
    ) -> Result<super::cipher::CipherPair, Error> {
        let shared = self.shared.as_ref().ok_or(Error::KexInit)?;
        let shared_secret = SharedSecret::from_string(shared)?;
        compute_keys::<sha2::Sha512>(
            Some(&shared_secret),
            session_id,
            exchange_hash,
            cipher,
            remote_to_local_mac,
            local_to_remote_mac,
            is_server,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(client: &mut Sntrup761X25519Kex, server: &mut Sntrup761X25519Kex) -> Exchange {
        let mut client_ephemeral = Vec::new();
        let mut init = Vec::new();
        client.client_dh(&mut client_ephemeral, &mut init).unwrap();
        assert_eq!(init[0], msg::KEX_HYBRID_INIT);
        assert_eq!(
            client_ephemeral.len(),
            SNTRUP761_PUBLIC_KEY_SIZE + X25519_PUBLIC_KEY_SIZE
        );
        let mut exchange = Exchange {
            client_id: b"SSH-2.0-Test_Client".to_vec(),
            server_id: b"SSH-2.0-Test_Server".to_vec(),
            client_kex_init: bytes::Bytes::from_static(b"client_kex_init"),
            server_kex_init: bytes::Bytes::from_static(b"server_kex_init"),
            client_ephemeral,
            server_ephemeral: Vec::new(),
            gex: None,
        };
        server.server_dh(&mut exchange, &init).unwrap();
        assert_eq!(
            exchange.server_ephemeral.len(),
            SNTRUP761_CIPHERTEXT_SIZE + X25519_PUBLIC_KEY_SIZE
        );
        client
            .compute_shared_secret(&exchange.server_ephemeral)
            .unwrap();
        exchange
    }

    #[test]
    fn both_sides_agree_on_the_secret_and_the_hash() {
        let (mut client, mut server) = Default::default();
        let exchange = exchange(&mut client, &mut server);
        assert_eq!(client.shared_secret_bytes(), server.shared_secret_bytes());
        assert_eq!(client.shared_secret_bytes().map(<[u8]>::len), Some(64));
        let mut buffer = CryptoVec::new();
        let a = client
            .compute_exchange_hash(b"host key", &exchange, &mut buffer)
            .unwrap();
        let b = server
            .compute_exchange_hash(b"host key", &exchange, &mut buffer)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64, "SHA-512");
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut client = Sntrup761X25519Kex::default();
        let mut ephemeral = Vec::new();
        let mut init = Vec::new();
        client.client_dh(&mut ephemeral, &mut init).unwrap();
        assert!(client.compute_shared_secret(&[0u8; 100]).is_err());

        let mut server = Sntrup761X25519Kex::default();
        let mut short = Vec::new();
        msg::KEX_HYBRID_INIT.encode(&mut short).unwrap();
        vec![0u8; 100].encode(&mut short).unwrap();
        assert!(server
            .server_dh(&mut Exchange::default(), &short)
            .is_err());
    }
}
