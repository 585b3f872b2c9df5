//! `TrustDomain` and `SpiffeId`, validated once at the edge (SPIFFE-ID spec,
//! <https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>), plus the Isthmus
//! naming scheme on top of them: gateways at `/cluster/<c>/gateway/<node>`, edge nodes at
//! `/edge/<name>`, and a cluster's signing scope at `/cluster/<c>`.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
/// SPIFFE-ID §2.3: a SPIFFE ID is at most 2048 bytes long.
pub const MAX_ID_LEN: usize = 2048;
/// SPIFFE-ID §2.1: a trust domain name is at most 255 bytes long.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Which rule of the SPIFFE ID spec a string broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("empty")]
    Empty,
    #[error("scheme must be `spiffe://`")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain must not carry userinfo (`@`)")]
    TrustDomainUserinfo,
    #[error("trust domain must not carry a port (`:`)")]
    TrustDomainPort,
    #[error("trust domain must be lowercase")]
    TrustDomainUppercase,
    #[error("trust domain may hold only a-z, 0-9, `.`, `-` and `_`, not {0:?}")]
    TrustDomainChar(char),
    #[error("trust domain is {0} bytes long, at most 255 are allowed")]
    TrustDomainTooLong(usize),
    #[error("a SPIFFE ID has no query (`?`)")]
    Query,
    #[error("a SPIFFE ID has no fragment (`#`)")]
    Fragment,
    #[error("path has an empty segment (`//`)")]
    EmptySegment,
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    #[error("path ends with `/`")]
    TrailingSlash,
    #[error("path segments may hold only a-z, A-Z, 0-9, `.`, `-` and `_`, not {0:?}")]
    PathChar(char),
    #[error("is {0} bytes long, at most 2048 are allowed")]
    TooLong(usize),
}

/// A trust domain name: lowercase `[a-z0-9._-]`, 1 to 255 bytes (SPIFFE-ID §2.1).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Accepts a bare name (`isthmus.local`) or a trust domain ID (`spiffe://isthmus.local`).
    pub fn new(name: &str) -> Result<Self, IdError> {
        if name.contains("://") {
            let id = SpiffeId::new(name)?;
            return Ok(id.trust_domain());
        }
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<trust domain>`, the ID that names the trust domain itself.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME}{}", self.0),
            path_start: SCHEME.len() + self.0.len(),
        }
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

/// A valid SPIFFE ID, `spiffe://<trust domain>[/<segment>…]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset of the path (its leading `/`, or the end of `uri` when there is none).
    path_start: usize,
}

/// What an ID names in the Isthmus naming scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdKind<'a> {
    /// `spiffe://<td>`: the trust domain itself (a root CA's URI SAN).
    TrustDomain,
    /// `spiffe://<td>/cluster/<cluster>`: a cluster's signing scope (an intermediate's URI SAN).
    ClusterScope { cluster: &'a str },
    /// `spiffe://<td>/cluster/<cluster>/gateway/<node>`.
    Gateway { cluster: &'a str, node: &'a str },
    /// `spiffe://<td>/edge/<name>`.
    Edge { name: &'a str },
    /// Any other valid SPIFFE ID.
    Other,
}

impl SpiffeId {
    /// Parses and validates `uri` (SPIFFE-ID §2).
    pub fn new(uri: &str) -> Result<Self, IdError> {
        if uri.is_empty() {
            return Err(IdError::Empty);
        }
        if uri.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(uri.len()));
        }
        // §2: the scheme is exactly `spiffe`, lowercase; `SPIFFE://` is refused as go-spiffe does.
        let rest = uri.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        // §2.3 allows no query or fragment anywhere.
        if rest.contains('?') {
            return Err(IdError::Query);
        }
        if rest.contains('#') {
            return Err(IdError::Fragment);
        }
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        check_trust_domain(td)?;
        check_path(path)?;
        Ok(Self {
            uri: uri.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    /// `spiffe://<td>/<segments[0]>/<segments[1]>…`; each element is one segment.
    pub fn from_segments(td: &TrustDomain, segments: &[&str]) -> Result<Self, IdError> {
        let mut uri = td.id().uri;
        let path_start = uri.len();
        for segment in segments {
            check_segment(segment)?;
            uri.push('/');
            uri.push_str(segment);
        }
        if uri.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(uri.len()));
        }
        Ok(Self { uri, path_start })
    }

    /// `spiffe://<td>/cluster/<cluster>/gateway/<node>`.
    pub fn gateway(td: &TrustDomain, cluster: &str, node: &str) -> Result<Self, IdError> {
        Self::from_segments(td, &["cluster", cluster, "gateway", node])
    }

    /// `spiffe://<td>/edge/<name>`.
    pub fn edge(td: &TrustDomain, name: &str) -> Result<Self, IdError> {
        Self::from_segments(td, &["edge", name])
    }

    /// `spiffe://<td>/cluster/<cluster>`: the scope a cluster's intermediate CA may sign under.
    pub fn cluster_scope(td: &TrustDomain, cluster: &str) -> Result<Self, IdError> {
        Self::from_segments(td, &["cluster", cluster])
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.as_str()
    }

    /// The path with its leading `/`, or `""` for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        self.path().split('/').skip(1)
    }

    pub fn kind(&self) -> IdKind<'_> {
        let segments: Vec<&str> = self.segments().collect();
        match segments.as_slice() {
            [] => IdKind::TrustDomain,
            ["cluster", cluster] => IdKind::ClusterScope { cluster },
            ["cluster", cluster, "gateway", node] => IdKind::Gateway { cluster, node },
            ["edge", name] => IdKind::Edge { name },
            _ => IdKind::Other,
        }
    }

    /// The cluster an ID lives in: `<c>` for any ID under `spiffe://<td>/cluster/<c>`,
    /// including the cluster scope itself.
    pub fn cluster(&self) -> Option<&str> {
        let mut segments = self.segments();
        match (segments.next(), segments.next()) {
            (Some("cluster"), Some(cluster)) => Some(cluster),
            _ => None,
        }
    }

    /// True when `self` lies strictly below `scope`: same trust domain, and `scope`'s path
    /// segments are a proper prefix of `self`'s (segment-wise, so `/cluster/a` does not
    /// contain `/cluster/ab/…`).
    pub fn is_under(&self, scope: &SpiffeId) -> bool {
        self.trust_domain_name() == scope.trust_domain_name()
            && self
                .path()
                .strip_prefix(scope.path())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

/// SPIFFE-ID §2.1. The userinfo and port checks come before the character check so the
/// error names the rule rather than the first odd character.
fn check_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if td.contains('@') {
        return Err(IdError::TrustDomainUserinfo);
    }
    if td.contains(':') {
        return Err(IdError::TrustDomainPort);
    }
    if td.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(IdError::TrustDomainUppercase);
    }
    if let Some(c) = td
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IdError::TrustDomainChar(c));
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong(td.len()));
    }
    Ok(())
}

/// SPIFFE-ID §2.2: `""` or `/seg(/seg)*`, no empty, `.` or `..` segment, no trailing `/`.
fn check_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match check_segment(segment) {
            Err(IdError::EmptySegment) if i == last => return Err(IdError::TrailingSlash),
            other => other?,
        }
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), IdError> {
    match segment {
        "" => Err(IdError::EmptySegment),
        "." | ".." => Err(IdError::DotSegment),
        _ => match segment
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            Some(c) => Err(IdError::PathChar(c)),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors() {
        let td = TrustDomain::new("isthmus.local").unwrap();
        let id = SpiffeId::gateway(&td, "east", "gw-1").unwrap();
        assert_eq!(
            id.as_str(),
            "spiffe://isthmus.local/cluster/east/gateway/gw-1"
        );
        assert_eq!(id.trust_domain(), td);
        assert_eq!(id.path(), "/cluster/east/gateway/gw-1");
        assert_eq!(id.cluster(), Some("east"));
        assert_eq!(
            id.kind(),
            IdKind::Gateway {
                cluster: "east",
                node: "gw-1"
            }
        );
        let scope = SpiffeId::cluster_scope(&td, "east").unwrap();
        assert!(id.is_under(&scope));
        assert!(!scope.is_under(&scope));
        assert!(id.is_under(&td.id()));
        let other = SpiffeId::cluster_scope(&td, "eas").unwrap();
        assert!(!id.is_under(&other), "prefixes are segment-wise");
        let edge = SpiffeId::edge(&td, "pi-7").unwrap();
        assert_eq!(edge.kind(), IdKind::Edge { name: "pi-7" });
        assert_eq!(edge.cluster(), None);
        assert_eq!(td.id().kind(), IdKind::TrustDomain);
        assert_eq!(TrustDomain::new("spiffe://isthmus.local").unwrap(), td);
        assert_eq!(SpiffeId::new(id.as_str()).unwrap(), id);
    }

    #[test]
    fn helpers_validate_each_argument_as_one_segment() {
        let td = TrustDomain::new("td").unwrap();
        assert_eq!(
            SpiffeId::gateway(&td, "a/b", "n"),
            Err(IdError::PathChar('/'))
        );
        assert_eq!(SpiffeId::edge(&td, ""), Err(IdError::EmptySegment));
        assert_eq!(SpiffeId::edge(&td, ".."), Err(IdError::DotSegment));
    }
}
