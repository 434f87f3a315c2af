//! Client authentication against the map's `users:` — SCRAM-SHA-256 (RFC 5802/7677, as
//! Postgres does it: the user name in the SCRAM message is ignored, no channel binding
//! offered) and md5.
//!
//! SCRAM keys are derived once per user when the map is loaded (random salt, 4096
//! iterations), so a login costs two HMACs, not a PBKDF2 run.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// SCRAM iteration count (Postgres' default).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// Stored SCRAM verifier of one user.
#[derive(Clone)]
pub struct ScramSecret {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramSecret {
    /// The verifier an unknown user is answered with: its salt derived from `key` (a
    /// per-process secret) and the name, so every attempt for a name sees the same salt, as
    /// for a known user, whose verifier is also made once per process; no key derivation at
    /// login, so the reply takes the same time. No password matches it.
    pub fn fake(user: &str, key: &[u8; 32]) -> Self {
        let salt = hmac(key, user.as_bytes())[..16].to_vec();
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut stored_key);
        rand::thread_rng().fill_bytes(&mut server_key);
        ScramSecret {
            salt,
            iterations: SCRAM_ITERATIONS,
            stored_key,
            server_key,
        }
    }

    /// Derives a verifier from a plain password with a fresh random salt.
    pub fn from_password(password: &str) -> Self {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, SCRAM_ITERATIONS, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        ScramSecret {
            salt,
            iterations: SCRAM_ITERATIONS,
            stored_key,
            server_key,
        }
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes any key length"),
    };
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// The client's message does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The proof did not match: wrong password.
    #[error("wrong password")]
    BadProof,
}

/// Server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    secret: ScramSecret,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Handles the client-first message; returns the server and the server-first message.
    pub fn start(secret: ScramSecret, client_first: &[u8]) -> Result<(Self, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2 header: "n,," or "y,," (no channel binding); "p=" asks for binding we did not offer.
        let rest = text
            .strip_prefix("n,")
            .or_else(|| text.strip_prefix("y,"))
            .ok_or(ScramError::Malformed("channel binding is not supported"))?;
        let comma = rest.find(',').ok_or(ScramError::Malformed("gs2 header"))?;
        let bare = &rest[comma + 1..];
        let cnonce = bare
            .split(',')
            .find_map(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("missing nonce"))?;
        if cnonce.is_empty()
            || !cnonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("bad nonce"));
        }
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{cnonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            ScramServer {
                secret,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Checks the client-final message; returns the server-final message on success.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let proof_at = text
            .rfind(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let without_proof = &text[..proof_at];
        let proof = B64
            .decode(&text[proof_at + 3..])
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let nonce = without_proof
            .split(',')
            .find_map(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("missing nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        if proof.len() != 32 {
            return Err(ScramError::BadProof);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        // Constant-time comparison.
        let diff = stored
            .iter()
            .zip(self.secret.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::BadProof);
        }
        let server_sig = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_sig)))
    }
}

/// The md5 password response Postgres expects: "md5" + md5(md5(password + user) + salt).
pub fn md5_expected(user: &str, password: &str, salt: [u8; 4]) -> String {
    use md5::Md5;
    let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn scram_round_trip_with_postgres_protocol_client() {
        let secret = ScramSecret::from_password("pw");
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(secret.clone(), client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        let fin = server.finish(client.message()).unwrap();
        client.finish(fin.as_bytes()).unwrap();

        let mut bad = ScramSha256::new(b"nope", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(secret, bad.message()).unwrap();
        bad.update(first.as_bytes()).unwrap();
        assert!(matches!(
            server.finish(bad.message()),
            Err(ScramError::BadProof)
        ));
    }

    #[test]
    fn md5_matches_postgres_protocol() {
        let salt = [1, 2, 3, 4];
        let ours = md5_expected("app", "secret", salt);
        let theirs = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        assert_eq!(ours, theirs);
    }
}
