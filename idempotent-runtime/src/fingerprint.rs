//! Request fingerprints: a SHA-256 hash of a canonical JSON form of the fingerprinted
//! arguments, stored with the idempotency record. The same key with a different fingerprint is
//! refused with [`Error::FingerprintMismatch`] (as Stripe does for a reused key with other
//! parameters, and the IETF Idempotency-Key draft recommends).
//!
//! Canonical form (version `v1`): arguments become a JSON object `{label: value}` through
//! `serde`; object keys are sorted by their UTF-8 bytes at every depth; a float with an integral
//! value in the `i64`/`u64` range is written as that integer (`1.0` → `1`), so each number has
//! one spelling; the hash input starts with the prefix `idempotent-fingerprint-v1\0`.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Error;

/// A request fingerprint: 32 bytes of SHA-256, shown and stored as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint as 64 lowercase hex characters (the stored form).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Computes the fingerprint of one serializable value under the label `""`.
    ///
    /// Errors: [`Error::Serialization`] when `value` fails to serialize (e.g. a map with
    /// non-string keys).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        Fingerprinter::new()
            .arg("", value)
            .finish()
            .map(|f| f.unwrap_or(Fingerprint([0; 32])))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.hex())
    }
}

/// Collects the fingerprinted arguments of one call; `finish` hashes them.
#[derive(Debug)]
pub struct Fingerprinter {
    args: Option<serde_json::Map<String, Value>>,
    error: Option<String>,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    /// An empty fingerprint over no arguments yet.
    pub fn new() -> Self {
        Fingerprinter {
            args: Some(serde_json::Map::new()),
            error: None,
        }
    }

    /// Fingerprinting turned off (`fingerprint = false`): `finish` returns `Ok(None)` and a
    /// reused key is never refused for a different payload.
    pub fn disabled() -> Self {
        Fingerprinter {
            args: None,
            error: None,
        }
    }

    /// Adds one argument under `label` (the argument's name or path in the source).
    pub fn arg<T: Serialize + ?Sized>(mut self, label: &str, value: &T) -> Self {
        if let Some(args) = self.args.as_mut() {
            match serde_json::to_value(value) {
                Ok(v) => {
                    args.insert(label.to_owned(), v);
                }
                Err(e) => {
                    self.error
                        .get_or_insert_with(|| format!("argument `{label}`: {e}"));
                }
            }
        }
        self
    }

    /// Hashes the canonical form. `Ok(None)` when disabled.
    ///
    /// Errors: [`Error::Serialization`] naming the first argument that failed to serialize.
    pub fn finish(self) -> Result<Option<Fingerprint>, Error> {
        if let Some(e) = self.error {
            return Err(Error::Serialization(e));
        }
        let Some(args) = self.args else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"idempotent-fingerprint-v1\0");
        write_canonical(&Value::Object(args), &mut out);
        Ok(Some(Fingerprint(Sha256::digest(&out).into())))
    }
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            // serde_json's own encoding of scalars is already canonical.
            out.extend_from_slice(v.to_string().as_bytes());
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    out.extend_from_slice((f as i64).to_string().as_bytes());
                    return;
                }
                if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 {
                    out.extend_from_slice((f as u64).to_string().as_bytes());
                    return;
                }
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        let a = Fingerprint::of(&json!({"a": 1, "b": [1.0, 2]})).unwrap();
        let b = Fingerprint::of(&json!({"b": [1, 2.0], "a": 1.0})).unwrap();
        assert_eq!(a, b);
        let c = Fingerprint::of(&json!({"a": 1, "b": [1, 3]})).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn labels_matter_and_disabled_is_none() {
        let a = Fingerprinter::new().arg("x", &1).finish().unwrap();
        let b = Fingerprinter::new().arg("y", &1).finish().unwrap();
        assert_ne!(a, b);
        assert!(
            Fingerprinter::disabled()
                .arg("x", &1)
                .finish()
                .unwrap()
                .is_none()
        );
    }
}
