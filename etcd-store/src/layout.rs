//! Mapping between keys relative to a prefix and full etcd keys.

use crate::error::{Error, Result};

/// The reserved subtree under every prefix; publishers keep their owner key here and watchers
/// never report it.
pub(crate) const META_DIR: &str = "_meta";

/// A validated prefix. Every key lives under `root`, which always ends in exactly one `/`, so
/// `/isthmus/a/services` never matches `/isthmus/a/services2/…`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let trimmed = prefix.trim_end_matches('/');
        let invalid = |reason| Error::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        };
        if trimmed.is_empty() {
            // Publishing under "" or "/" would delete every other key in the cluster's etcd.
            return Err(invalid("must name a directory below the root"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(invalid("contains a control character"));
        }
        Ok(Layout {
            root: format!("{trimmed}/"),
        })
    }

    /// The prefix as a range-get / watch key (with its trailing `/`).
    pub(crate) fn root(&self) -> &str {
        &self.root
    }

    pub(crate) fn full_key(&self, relative: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.root.len() + relative.len());
        key.extend_from_slice(self.root.as_bytes());
        key.extend_from_slice(relative.as_bytes());
        key
    }

    /// The key relative to the prefix, or `None` for keys outside it.
    pub(crate) fn relative<'k>(&self, full: &'k [u8]) -> Option<&'k [u8]> {
        full.strip_prefix(self.root.as_bytes())
    }

    pub(crate) fn owner_key(&self) -> Vec<u8> {
        self.full_key(&format!("{META_DIR}/owner"))
    }

    /// Whether a full key is in the reserved `_meta/` subtree.
    pub(crate) fn is_reserved(&self, full: &[u8]) -> bool {
        self.relative(full).is_some_and(is_reserved_relative)
    }

    /// Checks a relative key a caller wants to publish.
    pub(crate) fn validate(&self, relative: &str) -> Result<()> {
        let invalid = |reason| Error::InvalidKey {
            key: relative.to_owned(),
            reason,
        };
        if relative.is_empty() {
            return Err(invalid("empty"));
        }
        if is_reserved_relative(relative.as_bytes()) {
            return Err(invalid("the _meta/ subtree is reserved"));
        }
        Ok(())
    }
}

fn is_reserved_relative(relative: &[u8]) -> bool {
    relative
        .strip_prefix(META_DIR.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_exactly_one_trailing_slash() {
        assert_eq!(Layout::new("/isthmus/cs").unwrap().root(), "/isthmus/cs/");
        assert_eq!(Layout::new("/isthmus/cs//").unwrap().root(), "/isthmus/cs/");
    }

    #[test]
    fn whole_keyspace_prefixes_are_refused() {
        for prefix in ["", "/", "///"] {
            let err = Layout::new(prefix).unwrap_err();
            assert!(matches!(err, Error::InvalidPrefix { .. }), "{prefix:?}");
        }
        assert!(Layout::new("/a\nb").is_err());
    }

    #[test]
    fn sibling_prefix_is_outside() {
        let layout = Layout::new("/i/services").unwrap();
        assert_eq!(layout.relative(b"/i/services/ns/a"), Some(&b"ns/a"[..]));
        assert_eq!(layout.relative(b"/i/services2/ns/a"), None);
        assert_eq!(layout.relative(b"/i/services"), None);
    }

    #[test]
    fn meta_subtree_is_reserved_but_lookalikes_are_not() {
        let layout = Layout::new("/p").unwrap();
        assert!(layout.is_reserved(&layout.owner_key()));
        assert!(layout.is_reserved(b"/p/_meta"));
        assert!(!layout.is_reserved(b"/p/_metadata/x"));
        assert!(!layout.is_reserved(b"/q/_meta/owner"));
        assert!(layout.validate("_meta/x").is_err());
        assert!(layout.validate("_meta").is_err());
        assert!(layout.validate("").is_err());
        layout.validate("_metadata").unwrap();
        layout.validate("ns/name").unwrap();
    }
}
