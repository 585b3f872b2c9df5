//! The crate's error enum, the `Copy` refusal and decode errors built from untrusted input, and
//! the borrowed description of a validation failure they are made from.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// Errors of the local side: bad exports or configuration from our own sources, a VIP range
/// that is full, a VIP file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value failed validation; `field` names where it is (`shop/api: endpoints[3].zone`).
    #[error("{field} = {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: &'static str,
    },
    /// An encoded message or state would not fit its limit.
    #[error("{what} of {len} bytes, at most {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// Every address of the VIP range is taken by an active service.
    #[error("VIP range {0} is full")]
    VipRangeFull(IpNet),
    #[error("VIP file {path}")]
    VipFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VIP file {path}")]
    VipFileFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Which rule a value broke, without the value: `Copy`, so decode and refusal errors built from
/// hostile input never allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Violation {
    /// Field path with `[]` for the index, e.g. `endpoints[].zone`.
    pub field: &'static str,
    pub reason: &'static str,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The offending value, borrowed from the input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Text(&'a str),
    Number(u64),
    Addr(IpAddr),
    Endpoint(IpAddr, u16),
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Number(n) => write!(f, "{n}"),
            Value::Addr(a) => write!(f, "{a}"),
            Value::Endpoint(a, p) => write!(f, "{}", std::net::SocketAddr::new(*a, *p)),
        }
    }
}

/// A validation failure found by the checks in this crate: cheap to build on the decode path,
/// turned into an [`Error::Invalid`] (with the value) or a [`Violation`] (without) by the caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bad<'a> {
    pub field: &'static str,
    pub index: Option<usize>,
    pub value: Value<'a>,
    pub reason: &'static str,
}

impl<'a> Bad<'a> {
    pub fn new(field: &'static str, value: Value<'a>, reason: &'static str) -> Self {
        Self {
            field,
            index: None,
            value,
            reason,
        }
    }

    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    pub fn violation(&self) -> Violation {
        Violation {
            field: self.field,
            reason: self.reason,
        }
    }

    /// `context` prefixes the path (a service name, `exports[4]`), empty for none.
    pub fn into_error(self, context: &str) -> Error {
        let path = match self.index {
            Some(i) => self.field.replacen("[]", &format!("[{i}]"), 1),
            None => self.field.to_owned(),
        };
        let field = if context.is_empty() {
            path
        } else {
            format!("{context}: {path}")
        };
        Error::Invalid {
            field,
            value: self.value.to_string(),
            reason: self.reason,
        }
    }
}
