//! Accounts: argon2id password hashes, JWTs signed with the cluster's secret (HS256), and
//! optionally tokens of an operator's own issuer.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::ExternalAuth;
use crate::protocol::is_valid_id;

/// Longest user id accepted from any token: direct conversation ids are built from two.
pub(crate) const USER_ID_CHARS_MAX: usize = 60;
/// Username rules: 1..=32 of `[A-Za-z0-9_.-]`.
pub(crate) const USERNAME_CHARS_MAX: usize = 32;
/// Password length bounds (bytes), so hashing cost is bounded.
pub(crate) const PASSWORD_BYTES_MIN: usize = 8;
pub(crate) const PASSWORD_BYTES_MAX: usize = 256;

const ISSUER: &str = "chatnode";
/// The issuer of refresh tokens: never accepted where an access token is expected, and the
/// other way round.
const REFRESH_ISSUER: &str = "chatnode-refresh";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("invalid external auth config: {0}")]
    Config(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    // accounts: the session (refresh token id) and the user's token epoch at issue; absent
    // in tokens of an external issuer and in tokens issued before sessions existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ep: Option<u64>,
    /// A refresh token's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gen: Option<u64>,
}

/// What a verified access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccessClaims {
    pub(crate) user_id: String,
    pub(crate) external: bool,
    pub(crate) session_id: Option<String>,
    pub(crate) epoch: u64,
    /// Expiry, ms since the epoch.
    pub(crate) expires_at: u64,
}

/// What a verified refresh token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefreshClaims {
    pub(crate) user_id: String,
    pub(crate) session_id: String,
    pub(crate) generation: u64,
}

pub(crate) fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= USERNAME_CHARS_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub(crate) fn valid_password(pw: &str) -> bool {
    (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&pw.len())
}

/// argon2id with the crate's default (OWASP) parameters. CPU-heavy: call off the workers.
pub(crate) fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// CPU-heavy: call off the workers.
pub(crate) fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Verifies external tokens configured by the operator.
struct ExternalVerifier {
    key: DecodingKey,
    validation: Validation,
}

/// Issues and verifies tokens.
pub(crate) struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
    external: Option<ExternalVerifier>,
    refresh_validation: Validation,
}

impl TokenAuthority {
    pub(crate) fn new(
        secret: &[u8],
        ttl_secs: u64,
        external: &ExternalAuth,
    ) -> Result<Self, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        let mut refresh_validation = Validation::new(Algorithm::HS256);
        refresh_validation.set_issuer(&[REFRESH_ISSUER]);
        refresh_validation.leeway = 0;
        Ok(TokenAuthority {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
            external: external_verifier(external)?,
            refresh_validation,
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))
    }

    /// An access token of session `session_id` at token epoch `epoch`; returns it and its
    /// expiry in ms.
    pub(crate) fn issue_access(
        &self,
        user_id: &str,
        session_id: &str,
        epoch: u64,
        now_ms: u64,
    ) -> Result<(String, u64), AuthError> {
        let iat = now_ms / 1000;
        let exp = iat + self.ttl_secs;
        let claims = Claims {
            sub: user_id.to_string(),
            exp,
            iat,
            iss: Some(ISSUER.to_string()),
            sid: Some(session_id.to_string()),
            ep: Some(epoch),
            gen: None,
        };
        Ok((self.sign(&claims)?, exp * 1000))
    }

    /// A refresh token of generation `generation` of a session, valid until `expires_at`
    /// (ms).
    pub(crate) fn issue_refresh(
        &self,
        user_id: &str,
        session_id: &str,
        generation: u64,
        expires_at: u64,
        now_ms: u64,
    ) -> Result<String, AuthError> {
        let claims = Claims {
            sub: user_id.to_string(),
            exp: expires_at / 1000,
            iat: now_ms / 1000,
            iss: Some(REFRESH_ISSUER.to_string()),
            sid: Some(session_id.to_string()),
            ep: None,
            gen: Some(generation),
        };
        self.sign(&claims)
    }

    /// A refresh token this cluster signed and that has not expired (whether its session
    /// still allows it is decided at apply).
    pub(crate) fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.refresh_validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let c = data.claims;
        match (c.sid, c.gen) {
            (Some(session_id), Some(generation))
                if valid_sub(&c.sub) && is_valid_id(&session_id) =>
            {
                Ok(RefreshClaims {
                    user_id: c.sub,
                    session_id,
                    generation,
                })
            }
            _ => Err(AuthError::InvalidToken("not a refresh token".into())),
        }
    }

    /// Like [`TokenAuthority::verify`], with the session, epoch and expiry.
    pub(crate) fn verify_access(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let (claims, external) = self.decode_access(token)?;
        Ok(AccessClaims {
            user_id: claims.sub,
            external,
            session_id: claims.sid,
            epoch: claims.ep.unwrap_or(0),
            expires_at: claims.exp.saturating_mul(1000),
        })
    }

    #[cfg(test)]
    /// A token for `user_id`; returns it and its expiry in ms.
    pub(crate) fn issue(&self, user_id: &str, now_ms: u64) -> Result<(String, u64), AuthError> {
        let iat = now_ms / 1000;
        let exp = iat + self.ttl_secs;
        let claims = Claims {
            sub: user_id.to_string(),
            exp,
            iat,
            iss: Some(ISSUER.to_string()),
            sid: None,
            ep: None,
            gen: None,
        };
        Ok((self.sign(&claims)?, exp * 1000))
    }

    #[cfg(test)]
    /// The user id of a valid token, and whether it came from the external issuer.
    pub(crate) fn verify(&self, token: &str) -> Result<(String, bool), AuthError> {
        let (claims, external) = self.decode_access(token)?;
        Ok((claims.sub, external))
    }

    fn decode_access(&self, token: &str) -> Result<(Claims, bool), AuthError> {
        let own = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation);
        let (claims, external) = match (own, &self.external) {
            (Ok(data), _) => (data.claims, false),
            (Err(_), Some(ext)) => {
                let data = jsonwebtoken::decode::<Claims>(token, &ext.key, &ext.validation)
                    .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
                (data.claims, true)
            }
            (Err(e), None) => return Err(AuthError::InvalidToken(e.to_string())),
        };
        if !valid_sub(&claims.sub) {
            return Err(AuthError::InvalidToken(format!(
                "sub must be 1..{USER_ID_CHARS_MAX} characters of [A-Za-z0-9_-]"
            )));
        }
        if claims.sid.as_deref().is_some_and(|s| !is_valid_id(s)) {
            return Err(AuthError::InvalidToken("malformed sid".into()));
        }
        Ok((claims, external))
    }
}

fn valid_sub(sub: &str) -> bool {
    is_valid_id(sub) && sub.len() <= USER_ID_CHARS_MAX
}

fn external_verifier(ext: &ExternalAuth) -> Result<Option<ExternalVerifier>, AuthError> {
    let (key, alg) = match (&ext.hmac_secret, &ext.public_key_pem) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(AuthError::Config(
                "set either hmac_secret or public_key_pem, not both".into(),
            ))
        }
        (Some(secret), None) => (
            DecodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        ),
        (None, Some(pem)) => match ext.algorithm.as_deref().unwrap_or("RS256") {
            "RS256" => (
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| AuthError::Config(e.to_string()))?,
                Algorithm::RS256,
            ),
            "ES256" => (
                DecodingKey::from_ec_pem(pem.as_bytes())
                    .map_err(|e| AuthError::Config(e.to_string()))?,
                Algorithm::ES256,
            ),
            other => return Err(AuthError::Config(format!("unsupported algorithm {other}"))),
        },
    };
    let mut validation = Validation::new(alg);
    validation.leeway = 5;
    match &ext.issuer {
        Some(iss) => {
            validation.set_issuer(&[iss]);
            // A configured issuer is required, not only checked when present.
            validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        }
        None => validation.iss = None,
    }
    Ok(Some(ExternalVerifier { key, validation }))
}

#[cfg(test)]
mod tests;
