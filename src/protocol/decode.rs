//! Decoding request frames so that a frame never costs much more memory than
//! its own bytes.
//!
//! serde's internally tagged enums read a whole request into a tree of
//! buffered values before they look at its `type`; a frame of tiny values
//! (`[[],[],…]`, two million one-letter arguments) then costs ten to thirty
//! times its size. So a frame is decoded in two passes:
//!
//! 1. [`probe`] reads it without keeping anything: it checks that it is JSON,
//!    finds its `type`, and counts its values.
//! 2. The channel decodes it as the request its `type` names
//!    ([`Request::decode`](super::Request::decode)): by default through serde
//!    (the count is bounded by `Request::MAX_VALUES` first), or straight into
//!    the variant's own fields, each collection bounded as it is read, as the
//!    queue channel does.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What pass one found at the top of a frame.
#[derive(Debug, PartialEq)]
pub(crate) enum Kind<'a> {
    /// The frame is JSON, but not an object.
    NotAnObject,
    /// An object without a `type`.
    Missing,
    /// An object whose `type` is not a string.
    NotAString,
    /// An object with more than one `type`.
    Duplicate,
    /// An object with this `type`.
    Type(Cow<'a, str>),
}

/// Pass one's findings.
#[derive(Debug)]
pub(crate) struct Probe<'a> {
    pub(crate) kind: Kind<'a>,
    /// Values in the whole frame: every scalar, array, object and key.
    pub(crate) values: usize,
}

/// Pass one: reads `frame` as JSON, keeping nothing but its `type`.
pub(crate) fn probe(frame: &[u8]) -> serde_json::Result<Probe<'_>> {
    let mut values = 0;
    let kind = {
        let mut de = serde_json::Deserializer::from_slice(frame);
        let kind = de.deserialize_any(TopVisitor { values: &mut values })?;
        de.end()?;
        kind
    };
    Ok(Probe { kind, values })
}

/// Counts the values of a JSON text (for a value kept raw until it is known
/// to be small enough to decode).
pub(crate) fn count_values(json: &str) -> serde_json::Result<usize> {
    let mut values = 0;
    let mut de = serde_json::Deserializer::from_str(json);
    Count(&mut values).deserialize(&mut de)?;
    de.end()?;
    Ok(values)
}

struct TopVisitor<'v> {
    values: &'v mut usize,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = Kind<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind<'de>, A::Error> {
        *self.values += 1;
        let mut kind = Kind::Missing;
        while let Some(key) = map.next_key_seed(Key)? {
            *self.values += 1;
            if key == "type" {
                let found = map.next_value_seed(TypeSeed { values: &mut *self.values })?;
                kind = if kind == Kind::Missing { found } else { Kind::Duplicate };
            } else {
                map.next_value_seed(Count(&mut *self.values))?;
            }
        }
        Ok(kind)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Kind<'de>, A::Error> {
        CountVisitor(self.values).visit_seq(seq)?;
        Ok(Kind::NotAnObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind<'de>, E> {
        Ok(Kind::NotAnObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind<'de>, E> {
        Ok(Kind::NotAnObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind<'de>, E> {
        Ok(Kind::NotAnObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind<'de>, E> {
        Ok(Kind::NotAnObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind<'de>, E> {
        Ok(Kind::NotAnObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Kind<'de>, E> {
        Ok(Kind::NotAnObject)
    }
}

/// A key, borrowed from the frame unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(StrVisitor)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// The value of `type`: a string, or anything else (counted, not kept).
struct TypeSeed<'v> {
    values: &'v mut usize,
}

impl<'de> DeserializeSeed<'de> for TypeSeed<'_> {
    type Value = Kind<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TypeSeed<'_> {
    type Value = Kind<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        *self.values += 1;
        Ok(Kind::Type(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        *self.values += 1;
        Ok(Kind::Type(Cow::Owned(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        CountVisitor(self.values).visit_seq(seq)?;
        Ok(Kind::NotAString)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        CountVisitor(self.values).visit_map(map)?;
        Ok(Kind::NotAString)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        *self.values += 1;
        Ok(Kind::NotAString)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        *self.values += 1;
        Ok(Kind::NotAString)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        *self.values += 1;
        Ok(Kind::NotAString)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        *self.values += 1;
        Ok(Kind::NotAString)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        *self.values += 1;
        Ok(Kind::NotAString)
    }
}

/// Counts a value and everything inside it, keeping nothing.
struct Count<'v>(&'v mut usize);

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(CountVisitor(self.0))
    }
}

struct CountVisitor<'v>(&'v mut usize);

impl<'de> Visitor<'de> for CountVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        *self.0 += 1;
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        *self.0 += 1;
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        *self.0 += 1;
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        *self.0 += 1;
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        *self.0 += 1;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        *self.0 += 1;
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        *self.0 += 1;
        while seq.next_element_seed(Count(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        *self.0 += 1;
        while map.next_key::<IgnoredAny>()?.is_some() {
            *self.0 += 1;
            map.next_value_seed(Count(&mut *self.0))?;
        }
        Ok(())
    }
}

/// A list read up to `cap` items; past that, items are only counted (and
/// not kept), so that the caller can refuse it naming its length.
#[derive(Debug, Default)]
pub(crate) struct Capped<T> {
    pub(crate) items: Vec<T>,
    /// Items in the list, kept or not.
    pub(crate) len: usize,
}

impl<T> Capped<T> {
    /// The items, or the list's length when it has more than `cap`.
    pub(crate) fn within(self, cap: usize) -> Result<Vec<T>, usize> {
        if self.len > cap { Err(self.len) } else { Ok(self.items) }
    }
}

/// A map read up to `cap` entries, as [`Capped`].
#[derive(Debug, Default)]
pub(crate) struct CappedMap<V> {
    pub(crate) entries: std::collections::BTreeMap<String, V>,
    pub(crate) len: usize,
}

impl<V> CappedMap<V> {
    /// The entries, or the map's length when it has more than `cap`.
    pub(crate) fn within(self, cap: usize) -> Result<std::collections::BTreeMap<String, V>, usize> {
        if self.len > cap { Err(self.len) } else { Ok(self.entries) }
    }
}

/// Deserializes a [`Capped`] list of at most `CAP` kept items.
pub(crate) fn capped<'de, D: Deserializer<'de>, T: de::Deserialize<'de>, const CAP: usize>(
    d: D,
) -> Result<Capped<T>, D::Error> {
    struct V<T, const CAP: usize>(std::marker::PhantomData<T>);
    impl<'de, T: de::Deserialize<'de>, const CAP: usize> Visitor<'de> for V<T, CAP> {
        type Value = Capped<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Capped<T>, A::Error> {
            let mut out = Capped { items: Vec::new(), len: 0 };
            loop {
                if out.len < CAP {
                    match seq.next_element::<T>()? {
                        Some(item) => out.items.push(item),
                        None => break,
                    }
                } else if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                out.len += 1;
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V::<T, CAP>(std::marker::PhantomData))
}

/// Deserializes a [`CappedMap`] of at most `CAP` kept entries.
pub(crate) fn capped_map<'de, D: Deserializer<'de>, V: de::Deserialize<'de>, const CAP: usize>(
    d: D,
) -> Result<CappedMap<V>, D::Error> {
    struct M<V, const CAP: usize>(std::marker::PhantomData<V>);
    impl<'de, V: de::Deserialize<'de>, const CAP: usize> Visitor<'de> for M<V, CAP> {
        type Value = CappedMap<V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CappedMap<V>, A::Error> {
            let mut out = CappedMap { entries: std::collections::BTreeMap::new(), len: 0 };
            loop {
                if out.len < CAP {
                    match map.next_entry::<String, V>()? {
                        Some((k, v)) => {
                            out.entries.insert(k, v);
                        }
                        None => break,
                    }
                } else if map.next_entry::<IgnoredAny, IgnoredAny>()?.is_none() {
                    break;
                }
                out.len += 1;
            }
            Ok(out)
        }
    }
    d.deserialize_map(M::<V, CAP>(std::marker::PhantomData))
}

/// Deserializes a list of at most `CAP` items, refusing a longer one as
/// soon as it shows.
pub(crate) fn at_most<'de, D: Deserializer<'de>, T: de::Deserialize<'de>, const CAP: usize>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    let capped = capped::<D, T, CAP>(d)?;
    let len = capped.len;
    capped.within(CAP).map_err(|_| de::Error::custom(format_args!("at most {CAP} items, not {len}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_finds_the_type_and_counts_without_keeping() {
        let p = probe(br#"{"a":[1,[2,{}]],"type":"get","id":7}"#).unwrap();
        assert_eq!(p.kind, Kind::Type(Cow::Borrowed("get")));
        // The object, 3 keys, the array, 1, the inner array, 2, {}, "get", 7.
        assert_eq!(p.values, 11);
        assert!(matches!(probe(br#"{"type":"g\u0065t"}"#).unwrap().kind, Kind::Type(Cow::Owned(t)) if t == "get"));
        assert_eq!(probe(b"[]").unwrap().kind, Kind::NotAnObject);
        assert_eq!(probe(br#""x""#).unwrap().kind, Kind::NotAnObject);
        assert_eq!(probe(b"{}").unwrap().kind, Kind::Missing);
        assert_eq!(probe(br#"{"type":[1]}"#).unwrap().kind, Kind::NotAString);
        assert_eq!(probe(br#"{"type":"a","type":"b"}"#).unwrap().kind, Kind::Duplicate);
        assert!(probe(br#"{"type":"get"} x"#).unwrap_err().is_syntax());
        assert!(probe(b"{\"type\":\"\xff\"}").is_err());
        assert_eq!(count_values("[1, {\"a\": null}]").unwrap(), 5, "the array, 1, the object, its key, null");
    }

    #[test]
    fn capped_lists_keep_at_most_their_cap_and_count_the_rest() {
        #[derive(serde::Deserialize)]
        struct S {
            #[serde(deserialize_with = "capped::<_, String, 2>")]
            list: Capped<String>,
            #[serde(deserialize_with = "capped_map::<_, String, 1>")]
            map: CappedMap<String>,
        }
        let s: S = serde_json::from_str(r#"{"list":["a","b","c","d"],"map":{"k":"v","l":"w"}}"#).unwrap();
        assert_eq!(s.list.items, ["a", "b"]);
        assert_eq!(s.list.within(2), Err(4));
        assert_eq!(s.map.entries.len(), 1);
        assert_eq!(s.map.within(1), Err(2));
    }
}
