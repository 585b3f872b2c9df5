//! serde helpers that refuse an announced length over a limit before allocating anything for it.
//! serde's own `Vec` impl would pre-allocate up to 1 MiB per sequence on a hostile length prefix.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;

use crate::limits::{MAX_CERT_LEN, MAX_CHAIN_CERTS, MAX_SERVICES};
use crate::model::ServiceExport;
use crate::names::ServiceName;

/// Capacity reserved up front whatever the announced length; the rest grows with real elements.
const PREALLOC: usize = 64;

struct BoundedSeq<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for BoundedSeq<T, MAX> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {MAX} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let hint = seq.size_hint().unwrap_or(0);
        if hint > MAX {
            return Err(de::Error::invalid_length(hint, &self));
        }
        let mut out = Vec::with_capacity(hint.min(PREALLOC));
        while let Some(x) = seq.next_element()? {
            if out.len() == MAX {
                return Err(de::Error::invalid_length(MAX + 1, &self));
            }
            out.push(x);
        }
        Ok(out)
    }
}

/// A `Vec<T>` of at most `MAX` elements.
pub(crate) fn vec<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(BoundedSeq::<T, MAX>(PhantomData))
}

struct BoundedBytes<const MAX: usize>;

impl<'de, const MAX: usize> Visitor<'de> for BoundedBytes<MAX> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {MAX} bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        if v.len() > MAX {
            return Err(E::invalid_length(v.len(), &self));
        }
        Ok(v.to_vec())
    }

    // Self-describing formats (JSON) write `Vec<u8>` as an array of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<u8>, A::Error> {
        BoundedSeq::<u8, MAX>(PhantomData).visit_seq(seq)
    }
}

/// A byte string of at most `MAX` bytes. Postcard writes `Vec<u8>` as length + raw bytes, which
/// is exactly what `deserialize_byte_buf` reads, so the default `Serialize` stays compatible.
pub(crate) fn bytes<'de, D, const MAX: usize>(d: D) -> Result<Vec<u8>, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_byte_buf(BoundedBytes::<MAX>)
}

struct Cert(Vec<u8>);

impl<'de> Deserialize<'de> for Cert {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bytes::<D, MAX_CERT_LEN>(d).map(Cert)
    }
}

/// A member's certificate chain: at most [`MAX_CHAIN_CERTS`] of at most [`MAX_CERT_LEN`] bytes.
pub(crate) fn chain<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    let certs = vec::<D, Cert, MAX_CHAIN_CERTS>(d)?;
    Ok(certs.into_iter().map(|c| c.0).collect())
}

/// An origin's services travel as a sequence of exports (each carries its own name, so the map
/// key is not sent twice); a name that appears twice is refused.
pub(crate) mod export_map {
    use super::*;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<ServiceName, ServiceExport>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.values())
    }

    struct ExportMap;

    impl<'de> Visitor<'de> for ExportMap {
        type Value = BTreeMap<ServiceName, ServiceExport>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {MAX_SERVICES} exports with distinct names")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            if seq.size_hint().unwrap_or(0) > MAX_SERVICES {
                return Err(de::Error::invalid_length(
                    seq.size_hint().unwrap_or(0),
                    &self,
                ));
            }
            let mut map = BTreeMap::new();
            while let Some(export) = seq.next_element::<ServiceExport>()? {
                if map.len() == MAX_SERVICES {
                    return Err(de::Error::invalid_length(MAX_SERVICES + 1, &self));
                }
                if map.contains_key(&export.name) {
                    return Err(de::Error::custom("service exported twice"));
                }
                map.insert(export.name.clone(), export);
            }
            Ok(map)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<ServiceName, ServiceExport>, D::Error> {
        d.deserialize_seq(ExportMap)
    }
}
