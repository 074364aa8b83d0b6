//! Request fingerprints: a SHA-256 hash of a canonical binary form of the fingerprinted
//! arguments, stored with the idempotency record. The same key with a different fingerprint is
//! refused with [`Error::FingerprintMismatch`] (as Stripe does for a reused key with other
//! parameters, and the IETF Idempotency-Key draft recommends).
//!
//! # Canonical form, version `v2`
//!
//! The arguments are written through `serde` by a serializer of this module straight into
//! bytes (no intermediate JSON value), and the hash input is
//! `b"idempotent-fingerprint-v2\0"` followed by the arguments as a map from each argument's
//! label (its name or path in the source) to its value. Each value is one of:
//!
//! | serde data model | bytes |
//! |---|---|
//! | `None` | `n` |
//! | `Some(x)` | `s`, then `x` |
//! | `()`, a unit struct | `u` |
//! | `bool` | `b`, then `0x00` (false) or `0x01` (true) |
//! | an integer ≥ 0 (every width, `u8` … `u128`, `i8` … `i128`) | `+`, then one byte `k` (0 … 16), then the value's `k` bytes big-endian without leading zero bytes (0 is `+ 0x00`) |
//! | an integer < 0 | `-`, then `k` and the absolute value's `k` bytes as above |
//! | a float whose value is an integer below 2¹²⁸ in absolute value | the same bytes as that integer (`1.0` is `1`; `-0.0` is `0`) |
//! | any other float: fractional, beyond ±2¹²⁸, `+∞`, `−∞`, NaN | `f`, then the `f64`'s 8 bytes big-endian (`f32` widened exactly, so `0.1f32` ≠ `0.1f64`); every NaN as `0x7ff8000000000000` |
//! | `str`, `char` | `"`, then the UTF-8 length as 8 bytes big-endian, then the UTF-8 bytes |
//! | bytes (`serialize_bytes`) | as a sequence of `u8` integers |
//! | sequence, tuple, tuple struct | `[`, each element, `]` |
//! | map, struct | `{`, each entry (key then value; a struct field's key is its name as a string), `}` — entries sorted by their bytes |
//! | newtype struct | its field, unchanged |
//! | enum variant | `v`, the variant's name as a string, then the payload: `u` (unit variant), the value (newtype variant), `[…]` (tuple variant) or `{…}` (struct variant) |
//!
//! Properties:
//!
//! - **Distinct values, distinct bytes.** Every value's bytes say where they end, so the form
//!   can be decoded back; hence `None`, `Some(None)` and `Some(Some(x))` differ at every
//!   nesting depth, `None`, `()`, `NaN`, `+∞` and `−∞` all differ, `"ab", "c"` differs from
//!   `"a", "bc"`, and an enum variant differs from another variant with the same payload and
//!   from a plain string or value (serde gives the variant's name, which is what is written:
//!   renaming a variant changes the fingerprint, reordering variants does not).
//! - **Order does not count where it has no meaning.** Map and struct entries are sorted at
//!   every depth, so struct field order and `HashMap` iteration order do not change a
//!   fingerprint, and a struct equals a map with the same field names and values. Sequences
//!   keep their order: a `HashSet` (a sequence in its varying iteration order) can fingerprint
//!   an equal set differently — use a `BTreeSet`, or leave it out of `fingerprint`.
//! - **One spelling per number.** Integer width does not count (`5u8` = `5i64`), and an integral
//!   float equals the integer (`100.0` = `100`; `-0.0` = `0`, as `-0.0 == 0.0`). All NaNs are one
//!   value; `+∞` and `−∞` are two others. Non-finite floats are encoded, not rejected.
//! - **Keys of any type.** Map keys may be any serializable value (strings, integers, tuples,
//!   enums, …) and are encoded like values, so the integer key `1` and the string key `"1"`
//!   differ. There is no key type that fails.
//! - Bytes equal the sequence of their integers, so a `Vec<u8>` (which serde writes as a
//!   sequence) and a `serde_bytes::ByteBuf` with the same content fingerprint alike; a `char`
//!   equals the one-character string.
//! - The serializer is human-readable (`is_human_readable() == true`), as JSON is: a type that
//!   serializes differently for binary formats (a `Uuid`, a timestamp) is written in its text
//!   form.
//!
//! What cannot be told apart: values that serialize alike. An `#[serde(untagged)]` enum writes
//! only its variant's payload (serde gives no variant), so two of its variants with the same
//! payload share a fingerprint; a field marked `#[serde(skip)]` is not part of it; a type with
//! a hand-written `Serialize` is only as distinct as that impl makes it.
//!
//! Errors: a value whose `Serialize` impl fails (a custom impl returning an error, a poisoned
//! `Mutex`) makes [`Fingerprinter::finish`] return [`Error::Serialization`] naming the
//! argument.
//!
//! Version `v1` (before this form) hashed `serde_json` text with sorted keys under the prefix
//! `idempotent-fingerprint-v1\0`; it wrote `None`, `()`, NaN and ±∞ all as `null`. Records
//! stored with a `v1` fingerprint are refused with [`Error::FingerprintMismatch`] on reuse
//! (their fingerprints differ from every `v2` one), so a retry spanning an upgrade is refused
//! rather than replayed; records expire after their `ttl`.

use serde::Serialize;
use serde::ser;
use sha2::{Digest, Sha256};

use crate::Error;

/// The prefix of the hash input; it changes whenever the canonical form does.
const PREFIX: &[u8] = b"idempotent-fingerprint-v2\0";

/// A request fingerprint: 32 bytes of SHA-256, shown and stored as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint as 64 lowercase hex characters (the stored form).
    pub fn hex(&self) -> String {
        crate::key::lower_hex(&self.0)
    }

    /// [`hex`](Self::hex) held inline, for the store request of one call (no allocation).
    pub(crate) fn hex_inline(&self) -> crate::key::Hex<64> {
        crate::key::Hex::of(&self.0)
    }

    /// Computes the fingerprint of one serializable value under the label `""`.
    ///
    /// Errors: [`Error::Serialization`] when `value`'s `Serialize` impl fails.
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

/// Collects the fingerprinted arguments of one call; `finish` hashes them (see the
/// [module](self) for the canonical form).
#[derive(Debug)]
pub struct Fingerprinter {
    /// The canonical bytes of each argument's entry (label, value) and where each one is;
    /// `None` when disabled.
    args: Option<(Canon, Vec<(usize, usize)>)>,
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
            // Room for a typical request's canonical form, so it is written without regrowing.
            args: Some((
                Canon {
                    out: Vec::with_capacity(256),
                },
                Vec::with_capacity(4),
            )),
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

    /// Adds one argument under `label` (the argument's name or path in the source). The
    /// arguments form a map from label to value, so the order of the calls does not count; a
    /// label given twice keeps both values.
    pub fn arg<T: Serialize + ?Sized>(mut self, label: &str, value: &T) -> Self {
        if self.error.is_some() {
            return self;
        }
        if let Some((canon, entries)) = self.args.as_mut() {
            let start = canon.out.len();
            canon.str(label);
            match value.serialize(&mut *canon) {
                Ok(()) => entries.push((start, canon.out.len())),
                Err(e) => {
                    canon.out.truncate(start);
                    self.error = Some(format!("argument `{label}`: {e}"));
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
        let Some((canon, mut entries)) = self.args else {
            return Ok(None);
        };
        let out = &canon.out;
        entries.sort_by(|a, b| out[a.0..a.1].cmp(&out[b.0..b.1]));
        let mut h = Sha256::new();
        h.update(PREFIX);
        h.update(b"{");
        for (start, end) in entries {
            h.update(&out[start..end]);
        }
        h.update(b"}");
        Ok(Some(Fingerprint(h.finalize().into())))
    }
}

/// The canonical form of `value` (the bytes a fingerprint hashes, without the prefix), or why
/// its `Serialize` impl failed. The replay codec compares a response's form with its read-back
/// copy's.
pub(crate) fn canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut canon = Canon::default();
    value
        .serialize(&mut canon)
        .map_err(|e| e.to_string())
        .map(|()| canon.out)
}

/// The serializer writing the canonical form into `out`.
#[derive(Debug, Default)]
struct Canon {
    out: Vec<u8>,
}

/// 2¹²⁸ as an `f64` (exact): integral floats below it in absolute value are written as integers.
const TWO_POW_128: f64 = 340_282_366_920_938_463_463_374_607_431_768_211_456.0;

/// The one NaN written for every NaN.
const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

impl Canon {
    fn int(&mut self, negative: bool, magnitude: u128) {
        let bytes = magnitude.to_be_bytes();
        let skip = (magnitude.leading_zeros() / 8) as usize;
        self.out.push(if negative { b'-' } else { b'+' });
        self.out.push((bytes.len() - skip) as u8);
        self.out.extend_from_slice(&bytes[skip..]);
    }

    fn signed(&mut self, v: i128) {
        self.int(v < 0, v.unsigned_abs());
    }

    fn float(&mut self, f: f64) {
        if f.is_finite() && f.trunc() == f && f.abs() < TWO_POW_128 {
            // Exact: an integral float below 2^128 is an integer `u128` holds. `-0.0 < 0.0`
            // is false, so negative zero is written as 0.
            self.int(f < 0.0, f.abs() as u128);
            return;
        }
        let bits = if f.is_nan() {
            CANONICAL_NAN
        } else {
            f.to_bits()
        };
        self.out.push(b'f');
        self.out.extend_from_slice(&bits.to_be_bytes());
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'"');
        self.out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn variant(&mut self, name: &str) {
        self.out.push(b'v');
        self.str(name);
    }

    fn map(&mut self) -> Map<'_> {
        self.out.push(b'{');
        let start = self.out.len();
        Map {
            canon: self,
            start,
            entries: Vec::new(),
        }
    }
}

/// Why a value could not be written: its `Serialize` impl failed.
#[derive(Debug)]
pub(crate) struct CanonError(String);

impl std::fmt::Display for CanonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonError {}

impl ser::Error for CanonError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CanonError(msg.to_string())
    }
}

impl<'a> ser::Serializer for &'a mut Canon {
    type Ok = ();
    type Error = CanonError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Map<'a>;
    type SerializeStructVariant = Map<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), CanonError> {
        self.out.extend_from_slice(&[b'b', u8::from(v)]);
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), CanonError> {
        self.signed(v.into());
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), CanonError> {
        self.signed(v.into());
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), CanonError> {
        self.signed(v.into());
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), CanonError> {
        self.signed(v.into());
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), CanonError> {
        self.signed(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), CanonError> {
        self.int(false, v.into());
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), CanonError> {
        self.int(false, v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), CanonError> {
        self.int(false, v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), CanonError> {
        self.int(false, v.into());
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), CanonError> {
        self.int(false, v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), CanonError> {
        self.float(v.into());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), CanonError> {
        self.float(v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), CanonError> {
        self.str(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), CanonError> {
        self.str(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CanonError> {
        self.out.push(b'[');
        for b in v {
            self.int(false, (*b).into());
        }
        self.out.push(b']');
        Ok(())
    }
    fn serialize_none(self) -> Result<(), CanonError> {
        self.out.push(b'n');
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CanonError> {
        self.out.push(b's');
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CanonError> {
        self.out.push(b'u');
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), CanonError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), CanonError> {
        self.variant(variant);
        self.serialize_unit()
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), CanonError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), CanonError> {
        self.variant(variant);
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, CanonError> {
        self.out.push(b'[');
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, CanonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Self, CanonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, CanonError> {
        self.variant(variant);
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Map<'a>, CanonError> {
        Ok(self.map())
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Map<'a>, CanonError> {
        Ok(self.map())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Map<'a>, CanonError> {
        self.variant(variant);
        Ok(self.map())
    }
}

impl ser::SerializeSeq for &mut Canon {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CanonError> {
        self.out.push(b']');
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Canon {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CanonError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for &mut Canon {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CanonError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for &mut Canon {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CanonError> {
        ser::SerializeSeq::end(self)
    }
}

/// A map, struct or struct variant being written: its entries go to the output in the order
/// given, and `end` sorts them in place.
pub(crate) struct Map<'a> {
    canon: &'a mut Canon,
    /// Where the first entry starts (just after `{`).
    start: usize,
    /// Each complete entry's range in the output, in the order written.
    entries: Vec<(usize, usize)>,
}

impl Map<'_> {
    /// Where the entry being written starts: after the last complete one.
    fn entry_start(&self) -> usize {
        self.entries.last().map_or(self.start, |e| e.1)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), CanonError> {
        let start = self.canon.out.len();
        self.canon.str(key);
        value.serialize(&mut *self.canon)?;
        self.entries.push((start, self.canon.out.len()));
        Ok(())
    }

    fn finish(self) -> Result<(), CanonError> {
        let entry_start = self.entry_start();
        let out = &mut self.canon.out;
        if out.len() != entry_start {
            return Err(CanonError("a map key was written without its value".into()));
        }
        let mut entries = self.entries;
        if !entries.is_sorted_by(|a, b| out[a.0..a.1] <= out[b.0..b.1]) {
            let region = out.split_off(self.start);
            let base = self.start;
            entries.sort_by(|a, b| {
                region[a.0 - base..a.1 - base].cmp(&region[b.0 - base..b.1 - base])
            });
            for (s, e) in entries {
                out.extend_from_slice(&region[s - base..e - base]);
            }
        }
        out.push(b'}');
        Ok(())
    }
}

impl ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), CanonError> {
        if self.canon.out.len() != self.entry_start() {
            return Err(CanonError("a map key was written without its value".into()));
        }
        key.serialize(&mut *self.canon)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        let start = self.entry_start();
        if self.canon.out.len() == start {
            return Err(CanonError("a map value was written without its key".into()));
        }
        value.serialize(&mut *self.canon)?;
        self.entries.push((start, self.canon.out.len()));
        Ok(())
    }
    fn end(self) -> Result<(), CanonError> {
        self.finish()
    }
}

impl ser::SerializeStruct for Map<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CanonError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), CanonError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Map<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CanonError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), CanonError> {
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde_json::json;

    use super::*;

    fn fp<T: Serialize + ?Sized>(v: &T) -> Fingerprint {
        Fingerprint::of(v).unwrap()
    }

    /// Asserts that every two of `values` have different fingerprints.
    fn all_distinct(values: &[(&str, Fingerprint)]) {
        for (i, (a, fa)) in values.iter().enumerate() {
            for (b, fb) in &values[i + 1..] {
                assert_ne!(fa, fb, "{a} and {b} share a fingerprint");
            }
        }
    }

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize)]
    struct Payment {
        amount: Option<f64>,
        currency: &'static str,
    }

    #[derive(Serialize)]
    struct Reordered {
        currency: &'static str,
        amount: Option<f64>,
    }

    #[derive(Serialize, PartialEq, Eq, Hash)]
    enum Shape {
        Empty,
        Blank,
        Circle(u32),
        Square(u32),
        Pair(u32, u32),
        Rect { w: u32, h: u32 },
        Box { w: u32, h: u32 },
    }

    #[derive(Serialize)]
    #[serde(untagged)]
    enum Untagged {
        Count(u32),
        Index(u32),
    }

    /// Bytes through `serialize_bytes` (as `serde_bytes` does).
    struct Bytes(&'static [u8]);

    impl Serialize for Bytes {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// A value whose `Serialize` impl fails.
    struct Broken;

    impl Serialize for Broken {
        fn serialize<S: ser::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("the cache is being rebuilt"))
        }
    }

    #[test]
    fn non_finite_floats_none_and_unit_are_all_distinct() {
        all_distinct(&[
            ("None", fp(&None::<f64>)),
            ("Some(NaN)", fp(&Some(f64::NAN))),
            ("Some(+inf)", fp(&Some(f64::INFINITY))),
            ("Some(-inf)", fp(&Some(f64::NEG_INFINITY))),
            ("Some(0.0)", fp(&Some(0.0))),
            ("Some(f64::MAX)", fp(&Some(f64::MAX))),
            ("NaN", fp(&f64::NAN)),
            ("+inf", fp(&f64::INFINITY)),
            ("-inf", fp(&f64::NEG_INFINITY)),
            ("()", fp(&())),
            ("0", fp(&0)),
            ("false", fp(&false)),
            ("\"\"", fp(&"")),
            ("[]", fp(&Vec::<u8>::new())),
            ("{}", fp(&BTreeMap::<String, u8>::new())),
        ]);
        // Every NaN is the one NaN; f32 infinities are the f64 ones.
        assert_eq!(fp(&f64::NAN), fp(&-f64::NAN));
        assert_eq!(fp(&f64::NAN), fp(&f64::from_bits(0x7ff0_0000_0000_0001)));
        assert_eq!(fp(&f64::NAN), fp(&f32::NAN));
        assert_eq!(fp(&f64::INFINITY), fp(&f32::INFINITY));
        assert_eq!(fp(&f64::NEG_INFINITY), fp(&f32::NEG_INFINITY));
    }

    #[test]
    fn the_issue_payloads_differ() {
        // Issue 11 item 4: `amount = None` and `amount = +inf` shared a fingerprint.
        let payment = |amount| Payment {
            amount,
            currency: "EUR",
        };
        all_distinct(&[
            ("None", fp(&payment(None))),
            ("+inf", fp(&payment(Some(f64::INFINITY)))),
            ("-inf", fp(&payment(Some(f64::NEG_INFINITY)))),
            ("NaN", fp(&payment(Some(f64::NAN)))),
        ]);
    }

    #[test]
    fn some_none_differs_from_none_at_every_depth() {
        all_distinct(&[
            ("None", fp(&None::<Option<Option<u8>>>)),
            ("Some(None)", fp(&Some(None::<Option<u8>>))),
            ("Some(Some(None))", fp(&Some(Some(None::<u8>)))),
            ("Some(Some(Some(0)))", fp(&Some(Some(Some(0u8))))),
            ("Some(Some(Some(())))", fp(&Some(Some(Some(()))))),
        ]);
        // Inside sequences, maps and structs.
        assert_ne!(fp(&vec![None::<Option<u8>>]), fp(&vec![Some(None::<u8>)]));
        assert_ne!(
            fp(&json!({"a": null})),
            fp(&BTreeMap::from([("a", Some(None::<u8>))]))
        );
        assert_ne!(
            fp(&BTreeMap::from([("a", None::<Option<u8>>)])),
            fp(&BTreeMap::from([("a", Some(None::<u8>))]))
        );
        // A field set to `None` differs from a field left out.
        assert_ne!(
            fp(&BTreeMap::from([("a", None::<u8>)])),
            fp(&BTreeMap::<&str, Option<u8>>::new())
        );
    }

    #[test]
    fn unit_unit_struct_and_none() {
        assert_eq!(fp(&()), fp(&Unit));
        all_distinct(&[
            ("()", fp(&())),
            ("None", fp(&None::<()>)),
            ("Some(())", fp(&Some(()))),
            ("()-tuple of one", fp(&((),))),
        ]);
        assert_eq!(fp(&Some(())), fp(&Some(Unit)));
    }

    #[test]
    fn enum_variants_are_tagged() {
        all_distinct(&[
            ("Empty", fp(&Shape::Empty)),
            ("Blank", fp(&Shape::Blank)),
            ("Circle(1)", fp(&Shape::Circle(1))),
            ("Square(1)", fp(&Shape::Square(1))),
            ("Circle(2)", fp(&Shape::Circle(2))),
            ("Pair(1, 2)", fp(&Shape::Pair(1, 2))),
            ("Rect", fp(&Shape::Rect { w: 1, h: 2 })),
            ("Box", fp(&Shape::Box { w: 1, h: 2 })),
            ("\"Empty\"", fp(&"Empty")),
            ("1", fp(&1)),
            ("(1, 2)", fp(&(1, 2))),
            ("{w: 1, h: 2}", fp(&json!({"w": 1, "h": 2}))),
            ("()", fp(&())),
        ]);
    }

    #[test]
    fn untagged_variants_that_serialize_alike_cannot_be_told_apart() {
        // Documented limitation: serde gives no variant for an untagged enum.
        assert_eq!(fp(&Untagged::Count(3)), fp(&Untagged::Index(3)));
        assert_eq!(fp(&Untagged::Count(3)), fp(&3u32));
        assert_ne!(fp(&Untagged::Count(3)), fp(&Untagged::Index(4)));
    }

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        let a = fp(&json!({"a": 1, "b": [1.0, 2]}));
        let b = fp(&json!({"b": [1, 2.0], "a": 1.0}));
        assert_eq!(a, b);
        assert_ne!(a, fp(&json!({"a": 1, "b": [1, 3]})));
        assert_ne!(
            a,
            fp(&json!({"a": 1, "b": [2, 1]})),
            "sequences keep their order"
        );
    }

    #[test]
    fn struct_field_order_and_hashmap_order_do_not_matter_at_any_depth() {
        let p = Payment {
            amount: Some(2.5),
            currency: "EUR",
        };
        let r = Reordered {
            currency: "EUR",
            amount: Some(2.5),
        };
        assert_eq!(fp(&p), fp(&r));
        // A struct equals the map of its fields.
        #[derive(Serialize)]
        struct Point {
            y: i32,
            x: i32,
        }
        assert_eq!(
            fp(&Point { y: 2, x: 1 }),
            fp(&BTreeMap::from([("x", 1), ("y", 2)]))
        );
        // Nested maps built in opposite insertion orders (different iteration orders).
        let build = |rev: bool| {
            let mut keys: Vec<u32> = (0..64).collect();
            if rev {
                keys.reverse();
            }
            let mut outer: HashMap<String, HashMap<u32, Reordered>> = HashMap::new();
            for k in &keys {
                let inner = outer.entry(format!("k{}", k % 4)).or_default();
                inner.insert(
                    *k,
                    Reordered {
                        currency: "EUR",
                        amount: Some(f64::from(*k)),
                    },
                );
            }
            outer
        };
        assert_eq!(fp(&build(false)), fp(&build(true)));
        let mut changed = build(false);
        changed.get_mut("k1").unwrap().get_mut(&5).unwrap().amount = None;
        assert_ne!(fp(&build(false)), fp(&changed));
    }

    #[test]
    fn one_spelling_per_number() {
        let one = fp(&1u8);
        for (what, f) in [
            ("1i8", fp(&1i8)),
            ("1u64", fp(&1u64)),
            ("1i128", fp(&1i128)),
            ("1u128", fp(&1u128)),
            ("1.0f64", fp(&1.0f64)),
            ("1.0f32", fp(&1.0f32)),
        ] {
            assert_eq!(one, f, "{what}");
        }
        assert_eq!(fp(&0), fp(&-0.0f64), "-0.0 is 0");
        assert_eq!(fp(&-7i64), fp(&-7.0f64));
        assert_eq!(fp(&(1u128 << 64)), fp(&18_446_744_073_709_551_616.0f64));
        assert_eq!(fp(&i128::MIN), fp(&-(2f64.powi(127))));
        assert_eq!(fp(&(1u128 << 100)), fp(&2f64.powi(100)));
        all_distinct(&[
            ("0.5", fp(&0.5)),
            ("1", one),
            ("-1", fp(&-1)),
            ("0.1f32", fp(&0.1f32)),
            ("0.1f64", fp(&0.1f64)),
            ("2^128", fp(&2f64.powi(128))),
            ("u128::MAX", fp(&u128::MAX)),
            ("i128::MIN", fp(&i128::MIN)),
            ("i128::MAX", fp(&i128::MAX)),
            ("u64::MAX", fp(&u64::MAX)),
            ("i64::MIN", fp(&i64::MIN)),
            ("256", fp(&256)),
            ("\"1\"", fp(&"1")),
            ("true", fp(&true)),
        ]);
    }

    #[test]
    fn strings_are_length_prefixed_and_chars_are_strings() {
        assert_ne!(fp(&("ab", "c")), fp(&("a", "bc")));
        assert_ne!(fp(&vec!["ab", "c"]), fp(&vec!["a", "bc"]));
        assert_eq!(fp(&'é'), fp(&"é"));
    }

    #[test]
    fn bytes_equal_the_sequence_of_their_integers() {
        assert_eq!(fp(&Bytes(b"\x00\x01\xff")), fp(&vec![0u8, 1, 255]));
        assert_eq!(fp(&Bytes(b"")), fp(&Vec::<u8>::new()));
        assert_ne!(fp(&Bytes(b"ab")), fp(&"ab"));
    }

    #[test]
    fn map_keys_of_any_type() {
        let int_keys = fp(&BTreeMap::from([(1u32, "x")]));
        let str_keys = fp(&BTreeMap::from([("1", "x")]));
        assert_ne!(int_keys, str_keys, "the key 1 is not the key \"1\"");
        assert_eq!(int_keys, fp(&HashMap::from([(1i64, "x")])));
        let tuple_keys = fp(&HashMap::from([((1, "a"), 2), ((0, "b"), 3)]));
        assert_eq!(
            tuple_keys,
            fp(&BTreeMap::from([((0, "b"), 3), ((1, "a"), 2)]))
        );
        assert!(Fingerprint::of(&HashMap::from([(Shape::Empty, 1)])).is_ok());
    }

    #[test]
    fn a_failing_serialize_impl_names_the_argument() {
        let e = Fingerprinter::new()
            .arg("req", &1)
            .arg("cache", &Broken)
            .finish()
            .unwrap_err();
        assert!(
            matches!(&e, Error::Serialization(m) if m == "argument `cache`: the cache is being rebuilt"),
            "{e:?}"
        );
    }

    #[test]
    fn labels_matter_and_disabled_is_none() {
        let a = Fingerprinter::new().arg("x", &1).finish().unwrap();
        let b = Fingerprinter::new().arg("y", &1).finish().unwrap();
        assert_ne!(a, b);
        // The order of the arguments does not count (they are a map).
        assert_eq!(
            Fingerprinter::new()
                .arg("x", &1)
                .arg("y", &2)
                .finish()
                .unwrap(),
            Fingerprinter::new()
                .arg("y", &2)
                .arg("x", &1)
                .finish()
                .unwrap()
        );
        assert!(
            Fingerprinter::disabled()
                .arg("x", &1)
                .finish()
                .unwrap()
                .is_none()
        );
        assert!(
            Fingerprinter::disabled()
                .arg("x", &Broken)
                .finish()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn canonical_bytes_are_as_documented() {
        let c = |v: &dyn erased::Erased| v.canon();
        assert_eq!(c(&None::<u8>), b"n");
        assert_eq!(c(&Some(0u8)), b"s+\x00");
        assert_eq!(c(&()), b"u");
        assert_eq!(c(&true), b"b\x01");
        assert_eq!(c(&300u16), b"+\x02\x01\x2c");
        assert_eq!(c(&-1i8), b"-\x01\x01");
        assert_eq!(c(&-0.0f64), b"+\x00");
        assert_eq!(c(&0.5f64), b"f\x3f\xe0\0\0\0\0\0\0");
        assert_eq!(c(&f64::INFINITY), b"f\x7f\xf0\0\0\0\0\0\0");
        assert_eq!(c(&f64::NEG_INFINITY), b"f\xff\xf0\0\0\0\0\0\0");
        assert_eq!(c(&f64::NAN), b"f\x7f\xf8\0\0\0\0\0\0");
        assert_eq!(c(&"ab"), b"\"\0\0\0\0\0\0\0\x02ab");
        assert_eq!(c(&(1u8, ())), b"[+\x01\x01u]");
        assert_eq!(
            c(&Shape::Circle(1)),
            b"v\"\0\0\0\0\0\0\0\x06Circle+\x01\x01"
        );
        assert_eq!(c(&Shape::Empty), b"v\"\0\0\0\0\0\0\0\x05Emptyu");
        assert_eq!(
            c(&Reordered {
                currency: "E",
                amount: None
            }),
            b"{\"\0\0\0\0\0\0\0\x06amountn\"\0\0\0\0\0\0\0\x08currency\"\0\0\0\0\0\0\0\x01E}"
        );
    }

    /// `canonical` behind a trait object, for the table above.
    mod erased {
        pub trait Erased {
            fn canon(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Erased for T {
            fn canon(&self) -> Vec<u8> {
                super::canonical(self).unwrap()
            }
        }
    }

    /// Pinned values (checked once against an independent SHA-256 of the documented bytes): a
    /// change here is a change of the canonical form, which must come with a
    /// new version prefix.
    #[test]
    fn golden_fingerprints() {
        let payment = |amount| Payment {
            amount,
            currency: "EUR",
        };
        let golden = [
            (
                "no arguments",
                Fingerprinter::new().finish().unwrap().unwrap(),
            ),
            ("of(1)", fp(&1)),
            ("of(None)", fp(&None::<u8>)),
            ("payment None", fp(&payment(None))),
            ("payment +inf", fp(&payment(Some(f64::INFINITY)))),
            ("payment 12.5", fp(&payment(Some(12.5)))),
            (
                "req + amount",
                Fingerprinter::new()
                    .arg(
                        "req",
                        &json!({"tenant": "t1", "id": "order-1", "amount": 100}),
                    )
                    .arg("amount", &Some(Some(0u8)))
                    .finish()
                    .unwrap()
                    .unwrap(),
            ),
            ("variant", fp(&Shape::Rect { w: 3, h: 4 })),
        ];
        let pinned: [(&str, &str); 8] = [
            (
                "no arguments",
                "25917621ed1d0f750cfc17518ae4825803df9757860f8bd327f48e88c0ab9377",
            ),
            (
                "of(1)",
                "1e9513ebdcb5855212df947e59905c1b813d1f35743c5753104c07960e7bdc26",
            ),
            (
                "of(None)",
                "61d1180173eae360d6b7df235397c214b4c2817cb032a0495db7004cc17133c3",
            ),
            (
                "payment None",
                "74795a93565a10023f0db9f8905b35d45805ba15e6c05e467ff026057f9ab4d2",
            ),
            (
                "payment +inf",
                "5ec866b37360021091260b83129a44e25d9a2c7b74dc7da867c40e35aae3b044",
            ),
            (
                "payment 12.5",
                "2adbfcb58ef9330352ba9831d8569cecd9f9a8b52ffd4a7f6c223f5f4774040e",
            ),
            (
                "req + amount",
                "d785ca7176461d731d47d77e8eb75e3f5955c5e95d7433087953b694df4af639",
            ),
            (
                "variant",
                "7dc513f7e141ca05829dc230c6d545c8b561ff5699c732342255bb952ebc8ff1",
            ),
        ];
        for ((what, f), (pinned_what, hex)) in golden.iter().zip(pinned) {
            assert_eq!(*what, pinned_what);
            assert_eq!(f.hex(), hex, "{what}");
        }
    }
}
