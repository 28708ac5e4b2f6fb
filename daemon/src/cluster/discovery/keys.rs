//! Keys derived from the cluster's join secret, and the join proof a member presents instead
//! of an Incus join token.
//!
//! The secret itself is never sent: announcements carry an HMAC under one derived key, join
//! proofs an HMAC under another, so a value captured from one use cannot be replayed in the
//! other. Both keys also depend on the cluster name, so two clusters that (carelessly) share
//! a secret still do not accept each other's messages.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// HKDF salt prefix; the cluster name follows it.
const SALT_PREFIX: &[u8] = b"cairn cluster v1\0";
/// HKDF `info` labels: one key per purpose.
const ANNOUNCE_LABEL: &[u8] = b"cairn discovery announcement v1";
const JOIN_LABEL: &[u8] = b"cairn join proof v1";

/// The keys of one cluster, derived from its name and join secret.
#[derive(Clone)]
pub struct ClusterKeys {
    cluster: String,
    announce: [u8; 32],
    join: [u8; 32],
}

// Written by hand so that the keys never reach a log.
impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl ClusterKeys {
    /// HKDF-SHA256 with the secret as input key material, `"cairn cluster v1\0" + cluster`
    /// as salt and a purpose label as info.
    pub fn derive(cluster: &str, secret: &str) -> ClusterKeys {
        let mut salt = SALT_PREFIX.to_vec();
        salt.extend_from_slice(cluster.as_bytes());
        let hk = Hkdf::<Sha256>::new(Some(&salt), secret.as_bytes());
        let expand = |label: &[u8]| {
            let mut key = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's 8160-byte limit: this cannot fail.
            hk.expand(label, &mut key)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            key
        };
        ClusterKeys {
            cluster: cluster.to_string(),
            announce: expand(ANNOUNCE_LABEL),
            join: expand(JOIN_LABEL),
        }
    }

    /// The cluster these keys belong to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub(crate) fn announce_mac(&self) -> HmacSha256 {
        mac(&self.announce)
    }

    fn join_mac(&self) -> HmacSha256 {
        mac(&self.join)
    }
}

fn mac(key: &[u8; 32]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Feeds one length-prefixed field, so that ("ab", "c") and ("a", "bc") differ.
fn feed(m: &mut HmacSha256, field: &[u8]) {
    m.update(&(field.len() as u64).to_be_bytes());
    m.update(field);
}

fn join_mac_for(keys: &ClusterKeys, joiner: &str, fingerprint: &str, nonce: &str) -> HmacSha256 {
    let mut m = keys.join_mac();
    feed(&mut m, joiner.as_bytes());
    // Fingerprints are compared as lowercase hex whatever case the caller holds.
    feed(&mut m, fingerprint.to_ascii_lowercase().as_bytes());
    feed(&mut m, nonce.as_bytes());
    m
}

/// The proof that `joiner`, connecting with the certificate whose SHA-256 is `fingerprint`,
/// knows the cluster's secret: hex HMAC-SHA256 under the join key over the member name, the
/// fingerprint and a fresh `nonce` (see [`new_join_nonce`]). Because the fingerprint is
/// bound, a captured proof is useless with any other certificate, and the TLS handshake
/// already proves possession of that certificate's key.
pub fn join_proof(keys: &ClusterKeys, joiner: &str, fingerprint: &str, nonce: &str) -> String {
    hex::encode(
        join_mac_for(keys, joiner, fingerprint, nonce)
            .finalize()
            .into_bytes(),
    )
}

/// Checks a proof made by [`join_proof`], in constant time. The verifier passes the
/// fingerprint of the certificate the joiner actually connected with, never one the joiner
/// claims. Replay of the nonce is checked separately ([`NonceCache`]).
pub fn verify_join_proof(
    keys: &ClusterKeys,
    joiner: &str,
    fingerprint: &str,
    nonce: &str,
    proof: &str,
) -> bool {
    let Ok(tag) = hex::decode(proof) else {
        return false;
    };
    join_mac_for(keys, joiner, fingerprint, nonce)
        .verify_slice(&tag)
        .is_ok()
}

/// A fresh join nonce: `<unix seconds>-<32 hex random>`. The timestamp lets the verifier
/// forget nonces after a while; the random part makes each unique.
pub fn new_join_nonce() -> String {
    new_join_nonce_at(SystemTime::now())
}

fn new_join_nonce_at(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut random = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut random);
    format!("{secs}-{}", hex::encode(random))
}

/// Why a join nonce was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("join nonce is malformed")]
    Malformed,
    #[error("join nonce is older than {0:?} or too far in the future (clock skew?)")]
    OutOfWindow(Duration),
    #[error("join nonce was already used")]
    Replayed,
    #[error("too many recent join nonces; try again later")]
    Full,
}

/// Remembers the join nonces accepted within the last `max_age`, so that a proof is
/// accepted once. Bounded: when full of unexpired nonces it refuses new ones (fail closed)
/// rather than forgetting one that could then be replayed. Check the proof first, so that
/// only holders of the secret can fill it.
#[derive(Debug)]
pub struct NonceCache {
    seen: HashMap<String, u64>,
    capacity: usize,
    max_age: Duration,
}

impl NonceCache {
    /// `max_age` bounds both the age of a nonce and the clock skew tolerated between the
    /// joiner and the verifier (a few minutes is sensible).
    pub fn new(capacity: usize, max_age: Duration) -> NonceCache {
        NonceCache {
            seen: HashMap::new(),
            capacity: capacity.max(1),
            max_age,
        }
    }

    /// Accepts `nonce` if it is well formed, within `max_age` of `now` and not seen before;
    /// remembers it.
    pub fn check_and_remember(&mut self, nonce: &str, now: SystemTime) -> Result<(), NonceError> {
        let stamp = parse_nonce(nonce).ok_or(NonceError::Malformed)?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let window = self.max_age.as_secs();
        if stamp.abs_diff(now) > window {
            return Err(NonceError::OutOfWindow(self.max_age));
        }
        if self.seen.contains_key(nonce) {
            return Err(NonceError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            // Expired nonces would be refused by the window check anyway.
            self.seen.retain(|_, t| t.abs_diff(now) <= window);
            if self.seen.len() >= self.capacity {
                return Err(NonceError::Full);
            }
        }
        self.seen.insert(nonce.to_string(), stamp);
        Ok(())
    }
}

/// The timestamp of a well-formed nonce.
fn parse_nonce(nonce: &str) -> Option<u64> {
    let (secs, random) = nonce.split_once('-')?;
    if secs.is_empty() || secs.len() > 20 || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if random.len() != 32 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    secs.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "aa00000000000000000000000000000000000000000000000000000000000001";
    const FP2: &str = "aa00000000000000000000000000000000000000000000000000000000000002";

    fn keys() -> ClusterKeys {
        ClusterKeys::derive("rack1", "0123456789abcdef")
    }

    #[test]
    fn keys_depend_on_secret_cluster_and_purpose() {
        let k = keys();
        assert_ne!(k.announce, k.join);
        let other_secret = ClusterKeys::derive("rack1", "0123456789abcdeF");
        assert_ne!(k.announce, other_secret.announce);
        let other_cluster = ClusterKeys::derive("rack2", "0123456789abcdef");
        assert_ne!(k.announce, other_cluster.announce);
        assert_eq!(k.join, keys().join, "deterministic");
        assert!(!format!("{k:?}").contains(&hex::encode(k.join)));
    }

    #[test]
    fn proof_verifies_and_binds_everything() {
        let k = keys();
        let n = new_join_nonce();
        let p = join_proof(&k, "n2", FP, &n);
        assert_eq!(p.len(), 64);
        assert!(verify_join_proof(&k, "n2", FP, &n, &p));
        assert!(verify_join_proof(&k, "n2", &FP.to_uppercase(), &n, &p));
        assert!(
            !verify_join_proof(&k, "n2", FP2, &n, &p),
            "other certificate"
        );
        assert!(!verify_join_proof(&k, "n3", FP, &n, &p), "other member");
        assert!(
            !verify_join_proof(&k, "n2", FP, &new_join_nonce(), &p),
            "other nonce"
        );
        let wrong = ClusterKeys::derive("rack1", "not the right secret");
        assert!(!verify_join_proof(&wrong, "n2", FP, &n, &p), "other secret");
        assert!(!verify_join_proof(&k, "n2", FP, &n, "zz"), "not hex");
        assert!(!verify_join_proof(&k, "n2", FP, &n, &p[..62]), "truncated");
        let mut flipped = p.into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(!verify_join_proof(&k, "n2", FP, &n, &flipped));
    }

    #[test]
    fn fields_are_length_prefixed() {
        let k = keys();
        assert_ne!(
            join_proof(&k, "ab", "c", "n"),
            join_proof(&k, "a", "bc", "n")
        );
    }

    #[test]
    fn nonce_cache_accepts_once_within_window() {
        let now = SystemTime::now();
        let mut c = NonceCache::new(2, Duration::from_secs(300));
        let n = new_join_nonce_at(now);
        assert_eq!(c.check_and_remember(&n, now), Ok(()));
        assert_eq!(c.check_and_remember(&n, now), Err(NonceError::Replayed));
        let old = new_join_nonce_at(now - Duration::from_secs(301));
        assert!(matches!(
            c.check_and_remember(&old, now),
            Err(NonceError::OutOfWindow(_))
        ));
        let future = new_join_nonce_at(now + Duration::from_secs(301));
        assert!(matches!(
            c.check_and_remember(&future, now),
            Err(NonceError::OutOfWindow(_))
        ));
        for bad in [
            "",
            "-",
            "12",
            "12-xyz",
            "a-00000000000000000000000000000000",
        ] {
            assert_eq!(c.check_and_remember(bad, now), Err(NonceError::Malformed));
        }
        // Full of live nonces: refuse rather than forget one.
        assert_eq!(c.check_and_remember(&new_join_nonce_at(now), now), Ok(()));
        assert_eq!(
            c.check_and_remember(&new_join_nonce_at(now), now),
            Err(NonceError::Full)
        );
        // Once they expire there is room again.
        let later = now + Duration::from_secs(600);
        assert_eq!(
            c.check_and_remember(&new_join_nonce_at(later), later),
            Ok(())
        );
    }
}
