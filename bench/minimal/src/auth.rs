//! The secret check, with sidekv's rules: `Authorization` carries the secret
//! as is or as `Bearer <secret>`. Both sides are hashed (SHA-256) and the
//! digests compared without early exit, so the time taken says nothing
//! about the secret, not even its length.

use sha2::{Digest, Sha256};

pub struct Secret {
    digest: [u8; 32],
}

impl Secret {
    pub fn new(secret: &str) -> Secret {
        Secret { digest: Sha256::digest(secret.as_bytes()).into() }
    }

    /// Does this `Authorization` value carry the secret?
    pub fn admits(&self, presented: &[u8]) -> bool {
        let raw = self.same(presented);
        // `Bearer ` is public: branching on it leaks nothing about the secret.
        let bearer = presented.strip_prefix(b"Bearer ").is_some_and(|t| self.same(t));
        (raw | bearer) & !presented.is_empty()
    }

    fn same(&self, candidate: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(candidate).into();
        let diff = d.iter().zip(&self.digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn raw_and_bearer_forms_only() {
        let s = Secret::new("benchsecret");
        assert!(s.admits(b"benchsecret"));
        assert!(s.admits(b"Bearer benchsecret"));
        assert!(!s.admits(b""));
        assert!(!s.admits(b"benchsecre"));
        assert!(!s.admits(b"benchsecretX"));
        assert!(!s.admits(b"bearer benchsecret"));
    }
}
