//! Per-origin versioned state, and the local exporter that turns the full desired export set into
//! the next version and a delta.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Bad, Error, Value};
use crate::limits::{MAX_SERVICES, MAX_SNAPSHOT_LEN};
use crate::message::{Change, Delta};
use crate::model::ServiceExport;
use crate::names::{ClusterName, ServiceName};

/// Position in an origin's history. `generation` changes when a gateway restarts without its
/// state (its versions start over), so (generation, version) orders every state an origin ever
/// published, and names exactly one set of records.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Watermark {
    pub generation: u64,
    pub version: u64,
}

impl std::fmt::Display for Watermark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.generation, self.version)
    }
}

/// Everything one cluster exports, at one version. Only `cluster` itself may publish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginState {
    pub cluster: ClusterName,
    pub generation: u64,
    pub version: u64,
    #[serde(with = "crate::bounded::export_map")]
    pub services: BTreeMap<ServiceName, ServiceExport>,
}

impl OriginState {
    /// Version 0 of a generation: nothing exported yet.
    pub fn new(cluster: ClusterName, generation: u64) -> Self {
        Self {
            cluster,
            generation,
            version: 0,
            services: BTreeMap::new(),
        }
    }

    pub fn watermark(&self) -> Watermark {
        Watermark {
            generation: self.generation,
            version: self.version,
        }
    }

    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(|(context, bad)| match context {
            Some(name) => bad.into_error(&name.to_string()),
            None => bad.into_error(self.cluster.as_str()),
        })
    }

    /// The failing service (if the failure is inside one) and what is wrong.
    pub(crate) fn check(&self) -> Result<(), (Option<&ServiceName>, Bad<'_>)> {
        if self.services.len() > MAX_SERVICES {
            let n = Value::Number(self.services.len() as u64);
            return Err((None, Bad::new("services", n, "more than 10000 services")));
        }
        for (key, export) in &self.services {
            if *key != export.name {
                let value = Value::Text(key.name());
                let bad = Bad::new("services[].name", value, "differs from its key");
                return Err((Some(key), bad));
            }
            export.check().map_err(|bad| (Some(key), bad))?;
        }
        Ok(())
    }

    /// Applies a checked delta's changes. Cannot fail, so a delta is never half-applied.
    pub(crate) fn apply_changes(&mut self, delta: &Delta) {
        for change in &delta.changes {
            match change {
                Change::Upsert(export) => {
                    self.services.insert(export.name.clone(), export.clone());
                }
                Change::Remove(name) => {
                    self.services.remove(name);
                }
            }
        }
        self.version = delta.to_version;
    }
}

/// Counts bytes instead of keeping them.
#[derive(Default)]
struct Counter(usize);

impl Extend<u8> for Counter {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0 += iter.into_iter().count();
    }
}

pub(crate) fn encoded_len<T: Serialize>(value: &T) -> usize {
    // Encoding into a counter only fails for types postcard cannot encode, none of which we have.
    postcard::to_extend(value, Counter::default()).map_or(usize::MAX, |c| c.0)
}

/// The local cluster's exports. Sources hand it the full desired set; it keeps the version and
/// says what changed.
#[derive(Debug, Clone)]
pub struct LocalCatalog {
    state: OriginState,
}

impl LocalCatalog {
    /// A fresh catalog at version 0 of `generation`. The caller picks a generation greater than
    /// any this cluster used before (e.g. the persisted one + 1, or wall-clock milliseconds when
    /// nothing was persisted), since replicas ignore anything older.
    pub fn new(cluster: ClusterName, generation: u64) -> Self {
        Self {
            state: OriginState::new(cluster, generation),
        }
    }

    /// Continues a persisted state (same generation, same version).
    pub fn restore(state: OriginState) -> Result<Self, Error> {
        state.validate()?;
        Ok(Self { state })
    }

    pub fn state(&self) -> &OriginState {
        &self.state
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.state.cluster
    }

    pub fn watermark(&self) -> Watermark {
        self.state.watermark()
    }

    /// Replaces the export set. Returns the delta to the next version, or `None` if nothing
    /// changed (order of ports and endpoints does not count). All or nothing: on error the state
    /// is unchanged, and the error names the export, field and value.
    pub fn set_exports(&mut self, exports: Vec<ServiceExport>) -> Result<Option<Delta>, Error> {
        if exports.len() > MAX_SERVICES {
            let n = Value::Number(exports.len() as u64);
            return Err(Bad::new("exports", n, "more than 10000 services").into_error(""));
        }
        let mut next = BTreeMap::new();
        for (i, mut export) in exports.into_iter().enumerate() {
            export.normalize();
            export
                .check()
                .map_err(|bad| bad.into_error(&format!("exports[{i}] {}", export.name)))?;
            if next.contains_key(&export.name) {
                return Err(Error::Invalid {
                    field: format!("exports[{i}].name"),
                    value: format!("{:?}", export.name.to_string()),
                    reason: "exported twice",
                });
            }
            next.insert(export.name.clone(), export);
        }

        let mut changes = Vec::new();
        for name in self.state.services.keys() {
            if !next.contains_key(name) {
                changes.push(Change::Remove(name.clone()));
            }
        }
        for (name, export) in &next {
            if self.state.services.get(name) != Some(export) {
                changes.push(Change::Upsert(export.clone()));
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        changes.sort_by(|a, b| a.name().cmp(b.name()));

        let candidate = OriginState {
            cluster: self.state.cluster.clone(),
            generation: self.state.generation,
            version: self.state.version + 1,
            services: next,
        };
        let len = encoded_len(&candidate);
        if len > MAX_SNAPSHOT_LEN {
            return Err(Error::TooLarge {
                what: "snapshot",
                len,
                max: MAX_SNAPSHOT_LEN,
            });
        }
        let delta = Delta {
            cluster: self.state.cluster.clone(),
            generation: self.state.generation,
            from_version: self.state.version,
            to_version: candidate.version,
            changes,
        };
        self.state = candidate;
        Ok(Some(delta))
    }
}
