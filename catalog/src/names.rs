//! Validated names: clusters and services. Built only through checks, so the rest of the crate
//! (and the wire decoder, through serde `try_from`) never sees a name that is not a DNS label.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Bad, Error, Value};

/// RFC 1035 §2.3.4: a label is at most 63 octets.
pub const MAX_LABEL_LEN: usize = 63;

/// Why `s` is not a DNS-1123 label (Kubernetes' rule for namespaces and most names: 1 to 63 of
/// `a-z 0-9 -`, starting and ending with a letter or digit), or `None` if it is one.
pub(crate) fn label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("must not be empty");
    }
    if s.len() > MAX_LABEL_LEN {
        return Some("longer than 63 bytes");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("only lowercase letters, digits and '-' are allowed");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must start and end with a letter or digit");
    }
    None
}

fn label(field: &'static str, s: &str) -> Result<(), Error> {
    match label_problem(s) {
        Some(reason) => Err(Bad::new(field, Value::Text(s), reason).into_error("")),
        None => Ok(()),
    }
}

/// A cluster's name: a DNS-1123 label, as it appears in SPIFFE IDs
/// (`spiffe://<td>/cluster/<cluster>/…`) and in metric labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        label("cluster name", &name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl From<ClusterName> for String {
    fn from(c: ClusterName) -> String {
        c.0
    }
}

impl FromStr for ClusterName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A service's identity across the clusterset (MCS API: namespace sameness, so `shop/api` in
/// every cluster is the same service). Ordered by namespace, then name. Displayed and parsed as
/// `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawServiceName")]
pub struct ServiceName {
    namespace: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename = "ServiceName")]
struct RawServiceName {
    namespace: String,
    name: String,
}

impl TryFrom<RawServiceName> for ServiceName {
    type Error = Error;
    fn try_from(raw: RawServiceName) -> Result<Self, Error> {
        Self::new(raw.namespace, raw.name)
    }
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Result<Self, Error> {
        let (namespace, name) = (namespace.into(), name.into());
        label("namespace", &namespace)?;
        label("service name", &name)?;
        Ok(Self { namespace, name })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MCS DNS name without the zone: `<name>.<namespace>.svc`.
    pub fn dns_prefix(&self) -> String {
        format!("{}.{}.svc", self.name, self.namespace)
    }
}

impl FromStr for ServiceName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.split_once('/') {
            Some((namespace, name)) => Self::new(namespace, name),
            None => {
                Err(Bad::new("service", Value::Text(s), "expected namespace/name").into_error(""))
            }
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "a-b", "0", "abc123", &"x".repeat(63)] {
            assert_eq!(label_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "must not be empty"),
            (&"x".repeat(64), "longer than 63 bytes"),
            ("Ab", "only lowercase letters, digits and '-' are allowed"),
            ("a_b", "only lowercase letters, digits and '-' are allowed"),
            ("a.b", "only lowercase letters, digits and '-' are allowed"),
            ("-a", "must start and end with a letter or digit"),
            ("a-", "must start and end with a letter or digit"),
        ] {
            assert_eq!(label_problem(bad), Some(why), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let e = ClusterName::new("East").unwrap_err().to_string();
        assert_eq!(
            e,
            "cluster name = \"East\": only lowercase letters, digits and '-' are allowed"
        );
        let e = ServiceName::new("shop", "").unwrap_err().to_string();
        assert_eq!(e, "service name = \"\": must not be empty");
        let e = "shop".parse::<ServiceName>().unwrap_err().to_string();
        assert_eq!(e, "service = \"shop\": expected namespace/name");
    }

    #[test]
    fn service_names_parse_display_and_order() {
        let a: ServiceName = "shop/api".parse().unwrap();
        assert_eq!((a.namespace(), a.name()), ("shop", "api"));
        assert_eq!(a.to_string(), "shop/api");
        assert_eq!(a.dns_prefix(), "api.shop.svc");
        let b: ServiceName = "shop/web".parse().unwrap();
        let c: ServiceName = "auth/zz".parse().unwrap();
        let mut v = vec![b.clone(), a.clone(), c.clone()];
        v.sort();
        assert_eq!(v, vec![c, a, b]);
    }

    #[test]
    fn serde_refuses_invalid_names() {
        assert!(serde_json::from_str::<ClusterName>("\"east\"").is_ok());
        assert!(serde_json::from_str::<ClusterName>("\"EAST\"").is_err());
        let ok = r#"{"namespace":"shop","name":"api"}"#;
        assert_eq!(
            serde_json::from_str::<ServiceName>(ok).unwrap().to_string(),
            "shop/api"
        );
        let bad = r#"{"namespace":"shop","name":"a b"}"#;
        assert!(serde_json::from_str::<ServiceName>(bad).is_err());
    }
}
