//! Idempotency keys: (operation name, scope, key parts) → one fixed-size storage key.
//!
//! Each component is length-prefixed and type-tagged before hashing with SHA-256, so
//! `("ab", "c")` and `("a", "bc")` never collide, a string `"42"` and the integer `42` are
//! different keys, and raw keys of any byte content are stored as 64 hex characters, never
//! interpolated into SQL or Redis commands.

use sha2::{Digest, Sha256};

use crate::Error;

/// The largest accepted key: the sum of all key parts' encoded bytes, in bytes (1 KiB).
/// Larger keys are rejected with [`Error::InvalidKey`] (Stripe caps keys at 255 characters).
pub const MAX_KEY_BYTES: usize = 1024;

/// The largest accepted scope or operation name, in bytes.
pub const MAX_SCOPE_BYTES: usize = 1024;

/// A type usable as (part of) an idempotency key or a scope.
///
/// Implemented for strings, byte slices, integers, `uuid::Uuid` (feature `uuid`) and
/// references to them. An implementation writes a one-byte type tag and the value's canonical
/// bytes; the caller length-prefixes the result. Values of different types never make the same
/// key: the string `"42"` and the integer `42` differ, and so do a `Uuid` and the string of its
/// text.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of an idempotency key or scope: it does not implement `KeyPart`",
    label = "this key part is a `{Self}`",
    note = "key parts are strings, byte strings, integers and `uuid::Uuid` (feature `uuid`): point `key`/`scope` at such a field (e.g. \"req.id.0\" for a newtype), or implement `idempotent_runtime::KeyPart` for `{Self}`"
)]
pub trait KeyPart {
    /// The type tag: `b's'` for text, `b'i'` for integers, `b'b'` for bytes, `b'u'` for UUIDs.
    fn tag(&self) -> u8;
    /// Appends the value's canonical bytes to `out` (text: UTF-8; integers: decimal ASCII;
    /// UUIDs: the 36-character hyphenated lowercase text).
    fn write_bytes(&self, out: &mut Vec<u8>);
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    fn tag(&self) -> u8 {
        (**self).tag()
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        (**self).write_bytes(out)
    }
}

impl KeyPart for str {
    fn tag(&self) -> u8 {
        b's'
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes())
    }
}

impl KeyPart for String {
    fn tag(&self) -> u8 {
        b's'
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes())
    }
}

impl KeyPart for std::borrow::Cow<'_, str> {
    fn tag(&self) -> u8 {
        b's'
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes())
    }
}

impl KeyPart for [u8] {
    fn tag(&self) -> u8 {
        b'b'
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self)
    }
}

impl KeyPart for Vec<u8> {
    fn tag(&self) -> u8 {
        b'b'
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self)
    }
}

macro_rules! int_key_part {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn tag(&self) -> u8 { b'i' }
            fn write_bytes(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(self.to_string().as_bytes())
            }
        }
    )*};
}
int_key_part!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
);

/// A UUID (feature `uuid`): tag `b'u'`, then its hyphenated lowercase text as RFC 9562 writes
/// it (`67e55044-10b1-426f-9247-bb680a5fe0c8`, 36 bytes) — like an integer, the value's
/// canonical text under a tag of its own. So a `Uuid` key is not the same key as a `String`
/// holding that text: changing a key field from `String` to `Uuid` changes its storage keys.
#[cfg(feature = "uuid")]
impl KeyPart for uuid::Uuid {
    fn tag(&self) -> u8 {
        b'u'
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        let mut buf = uuid::Uuid::encode_buffer();
        out.extend_from_slice(self.hyphenated().encode_lower(&mut buf).as_bytes())
    }
}

/// `bytes` as lowercase hex, two characters a byte (the `hex` crate's `encode` collects
/// `char`s one at a time, ~60 instructions a byte; this is a table lookup).
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// `N / 2` bytes as `N` lowercase hex characters, held inline: the owner token and the
/// fingerprint a call sends to its store, without a heap allocation per call. Derefs to `str`;
/// `.to_string()` where a `String` must outlive the call (a detached release).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    /// `bytes` (exactly `N / 2` of them) as hex.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        debug_assert_eq!(bytes.len() * 2, N);
        let mut out = [b'0'; N];
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
        Hex(out)
    }
}

impl<const N: usize> std::ops::Deref for Hex<N> {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII hex digits are ever written, so this never fails; an empty string would
        // be the answer if it did.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// The storage key of one idempotent request: a SHA-256 digest of the operation name, the
/// scope and the key parts, plus the operation name kept for diagnostics.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorageKey {
    digest: [u8; 32],
    operation: String,
}

impl StorageKey {
    /// The digest as 64 lowercase hex characters: the value stored in the record table's
    /// `idempotency_key` column and in Redis key names.
    pub fn hex(&self) -> String {
        lower_hex(&self.digest)
    }

    /// The raw 32-byte SHA-256 digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The operation name this key belongs to (e.g. `orders::place_order`).
    pub fn operation(&self) -> &str {
        &self.operation
    }
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StorageKey({} {})", self.operation, self.hex())
    }
}

/// Builds a [`StorageKey`] from an operation name, an optional scope and one or more key parts.
///
/// ```
/// use idempotent_runtime::KeyBuilder;
/// let key = KeyBuilder::new("orders::place").scope(&"tenant-7").part(&"req-1").finish()?;
/// assert_eq!(key.hex().len(), 64);
/// # Ok::<(), idempotent_runtime::Error>(())
/// ```
///
/// `finish` returns [`Error::InvalidKey`] when the name, the scope or a key part is empty, when
/// there is no key part, when the key parts together exceed [`MAX_KEY_BYTES`], or when the name
/// or scope exceeds [`MAX_SCOPE_BYTES`].
#[derive(Debug)]
pub struct KeyBuilder {
    operation: String,
    scope: Option<Vec<u8>>,
    parts: Vec<(u8, Vec<u8>)>,
}

impl KeyBuilder {
    /// Starts a key for the operation `name` (the macro passes the `name` option or
    /// `module_path!()::fn_name`).
    pub fn new(name: &str) -> Self {
        KeyBuilder {
            operation: name.to_owned(),
            scope: None,
            parts: Vec::new(),
        }
    }

    /// Sets the scope (tenant, caller) the key lives in: two scopes never share records.
    pub fn scope<K: KeyPart + ?Sized>(mut self, scope: &K) -> Self {
        let mut bytes = vec![scope.tag()];
        scope.write_bytes(&mut bytes);
        self.scope = Some(bytes);
        self
    }

    /// Appends one key part (a compound key has several).
    pub fn part<K: KeyPart + ?Sized>(mut self, part: &K) -> Self {
        let mut bytes = Vec::new();
        part.write_bytes(&mut bytes);
        self.parts.push((part.tag(), bytes));
        self
    }

    /// Validates and hashes the key; see the type docs for the errors.
    pub fn finish(self) -> Result<StorageKey, Error> {
        self.finish_named("the key")
    }

    /// [`finish`](Self::finish) for a `token` call's key, whose key part is the one-time token:
    /// its errors say "the token" ("the token is empty", "the token is 2000 bytes; the limit
    /// is 1024"), not "the key". Used by the code `#[idempotent]` generates.
    #[doc(hidden)]
    pub fn finish_token(self) -> Result<StorageKey, Error> {
        self.finish_named("the token")
    }

    /// [`finish`](Self::finish), naming the key parts `what` in its errors ("the token is
    /// empty" for a one-time token, whose only key part is the token).
    pub(crate) fn finish_named(self, what: &str) -> Result<StorageKey, Error> {
        if self.operation.is_empty() {
            return Err(Error::InvalidKey("the operation name is empty".into()));
        }
        if self.operation.len() > MAX_SCOPE_BYTES {
            return Err(Error::InvalidKey(format!(
                "the operation name is {} bytes; the limit is {MAX_SCOPE_BYTES}",
                self.operation.len()
            )));
        }
        if self.parts.is_empty() {
            return Err(Error::InvalidKey(format!("{what} has no parts")));
        }
        let mut total = 0usize;
        for (i, (_, bytes)) in self.parts.iter().enumerate() {
            if bytes.is_empty() {
                return Err(Error::InvalidKey(match self.parts.len() {
                    1 => format!("{what} is empty"),
                    n => format!("key part {} of {n} is empty", i + 1),
                }));
            }
            total += bytes.len();
        }
        if total > MAX_KEY_BYTES {
            return Err(Error::InvalidKey(format!(
                "{what} is {total} bytes; the limit is {MAX_KEY_BYTES}"
            )));
        }
        if let Some(scope) = &self.scope {
            if scope.len() <= 1 {
                return Err(Error::InvalidKey("the scope is empty".into()));
            }
            if scope.len() - 1 > MAX_SCOPE_BYTES {
                return Err(Error::InvalidKey(format!(
                    "the scope is {} bytes; the limit is {MAX_SCOPE_BYTES}",
                    scope.len() - 1
                )));
            }
        }
        let mut h = Sha256::new();
        h.update(b"idempotent-key-v1");
        let mut field = |tag: u8, bytes: &[u8]| {
            h.update([tag]);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(b'N', self.operation.as_bytes());
        match &self.scope {
            Some(scope) => field(b'S', scope),
            None => field(b'U', &[]),
        }
        for (tag, bytes) in &self.parts {
            field(b'P', &[*tag]);
            field(b'V', bytes);
        }
        Ok(StorageKey {
            digest: h.finalize().into(),
            operation: self.operation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_hex_writes_two_lowercase_digits_a_byte() {
        assert_eq!(lower_hex(&[]), "");
        assert_eq!(lower_hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        let all: Vec<u8> = (0..=255).collect();
        let text = lower_hex(&all);
        assert_eq!(text.len(), 512);
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).expect("ascii");
            assert_eq!(u8::from_str_radix(pair, 16), Ok(i as u8), "{pair}");
            assert_eq!(pair, pair.to_lowercase());
        }
    }

    #[test]
    fn inline_hex_is_lower_hex() {
        let all: Vec<u8> = (0..=255).collect();
        for chunk in all.chunks(16) {
            assert_eq!(&*Hex::<32>::of(chunk), lower_hex(chunk));
        }
        for chunk in all.chunks(32) {
            assert_eq!(&*Hex::<64>::of(chunk), lower_hex(chunk));
        }
        assert_eq!(format!("{:?}", Hex::<4>::of(&[0xab, 0x01])), "\"ab01\"");
    }

    fn k(parts: &[&str]) -> StorageKey {
        parts
            .iter()
            .fold(KeyBuilder::new("op"), |b, p| b.part(*p))
            .finish()
            .unwrap()
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(k(&["ab", "c"]), k(&["a", "bc"]));
        assert_eq!(k(&["ab", "c"]), k(&["ab", "c"]));
    }

    #[test]
    fn scope_name_and_type_separate_keys() {
        let a = KeyBuilder::new("op")
            .scope("t1")
            .part("x")
            .finish()
            .unwrap();
        let b = KeyBuilder::new("op")
            .scope("t2")
            .part("x")
            .finish()
            .unwrap();
        let c = KeyBuilder::new("op2")
            .scope("t1")
            .part("x")
            .finish()
            .unwrap();
        let d = KeyBuilder::new("op").part("x").finish().unwrap();
        let s = KeyBuilder::new("op").part("42").finish().unwrap();
        let i = KeyBuilder::new("op").part(&42u32).finish().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(s, i);
        assert_eq!(i, KeyBuilder::new("op").part(&42i64).finish().unwrap());
    }

    /// Pinned storage keys (checked once against an independent SHA-256 of the documented
    /// encoding): a change here makes every stored record unreachable.
    #[test]
    fn golden_storage_keys() {
        let key = |b: KeyBuilder| b.finish().unwrap().hex();
        assert_eq!(
            key(KeyBuilder::new("orders::place")
                .scope("tenant-7")
                .part("req-1")),
            "1f4b8e5ca3dfbcf6d049c316ca97b2b21471be915531e05027dcfcf4a625e6e6"
        );
        assert_eq!(
            key(KeyBuilder::new("orders::place").part(&42u64)),
            "4847146d6e2e3740399b8859a6ce05e9e11d4768f0c0f7ce469b066501474845"
        );
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuid_key_parts() {
        let id = uuid::Uuid::parse_str("67E55044-10B1-426F-9247-BB680A5FE0C8").unwrap();
        let mut bytes = Vec::new();
        id.write_bytes(&mut bytes);
        assert_eq!(bytes, b"67e55044-10b1-426f-9247-bb680a5fe0c8");
        assert_eq!(id.tag(), b'u');
        let key = KeyBuilder::new("orders::place")
            .scope("tenant-7")
            .part(&id)
            .finish()
            .unwrap();
        assert_eq!(
            key.hex(),
            "0a86f4dc93f0b4869a21f73cba56f7acc1d8c1e6b78fb68d255892e834c9248f"
        );
        // Not the key of its text, nor of its bytes or its integer.
        let text = KeyBuilder::new("orders::place")
            .scope("tenant-7")
            .part("67e55044-10b1-426f-9247-bb680a5fe0c8")
            .finish()
            .unwrap();
        let raw = KeyBuilder::new("orders::place")
            .scope("tenant-7")
            .part(&id.as_bytes()[..])
            .finish()
            .unwrap();
        let int = KeyBuilder::new("orders::place")
            .scope("tenant-7")
            .part(&id.as_u128())
            .finish()
            .unwrap();
        assert_ne!(key, text);
        assert_ne!(key, raw);
        assert_ne!(key, int);
        // A reference, and a uuid as the scope.
        assert_eq!(
            key,
            KeyBuilder::new("orders::place")
                .scope("tenant-7")
                .part(&&id)
                .finish()
                .unwrap()
        );
        assert!(KeyBuilder::new("op").scope(&id).part("x").finish().is_ok());
    }

    #[test]
    fn bad_keys_are_rejected() {
        let e = |r: Result<StorageKey, Error>| matches!(r, Err(Error::InvalidKey(_)));
        assert!(e(KeyBuilder::new("op").part("").finish()));
        assert!(e(KeyBuilder::new("op").finish()));
        assert!(e(KeyBuilder::new("").part("x").finish()));
        assert!(e(KeyBuilder::new("op").scope("").part("x").finish()));
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        assert!(e(KeyBuilder::new("op").part(long.as_str()).finish()));
        let max = "x".repeat(MAX_KEY_BYTES);
        assert!(KeyBuilder::new("op").part(max.as_str()).finish().is_ok());
    }

    /// An empty part is named by what the caller wrote: "the key" for a one-part key, its
    /// position among several otherwise.
    #[test]
    fn an_empty_part_is_named_as_the_caller_sees_it() {
        let reason = |r: Result<StorageKey, Error>| match r {
            Err(Error::InvalidKey(reason)) => reason,
            other => panic!("expected InvalidKey, got {other:?}"),
        };
        assert_eq!(
            reason(KeyBuilder::new("op").part("").finish()),
            "the key is empty"
        );
        assert_eq!(
            reason(KeyBuilder::new("op").part("a").part("").part("c").finish()),
            "key part 2 of 3 is empty"
        );
    }

    /// A token too long or empty is called a token, not a key.
    #[test]
    fn a_bad_token_is_named_a_token() {
        let reason = |r: Result<StorageKey, Error>| match r {
            Err(Error::InvalidKey(reason)) => reason,
            other => panic!("expected InvalidKey, got {other:?}"),
        };
        use crate::strategy::token::token_key;
        assert_eq!(reason(token_key("")), "the token is empty");
        let long = "t".repeat(2000);
        assert_eq!(
            reason(token_key(long.as_str())),
            "the token is 2000 bytes; the limit is 1024"
        );
    }
}
