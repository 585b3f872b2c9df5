//! The sync protocol's messages, run between two gateways over TCP inside the tunnel.
//!
//! Each side of a session, once connected:
//! 1. sends [`Hello`] with its own watermark and `have`, the watermark it holds of the peer;
//! 2. answers the peer's Hello with a [`SyncMessage::Snapshot`] of its own origin, or with a
//!    [`SyncMessage::Heartbeat`] when the peer's `have` is already current
//!    ([`crate::MergedCatalog::apply`] builds that reply);
//! 3. sends a [`SyncMessage::Delta`] for every local change, and a [`SyncMessage::Heartbeat`]
//!    when it has sent nothing for a while (a third of `down_after` where heartbeats are the
//!    only sign of life; much rarer where something else tells liveness);
//! 4. answers [`SyncMessage::SnapshotRequest`] (sent by the peer on a gap) with a snapshot;
//! 5. sends [`SyncMessage::Bye`] before closing on purpose, so the peer fails over at once.
//!
//! A gateway only ever publishes its own origin: records are never relayed, so the receiver can
//! check every record's origin against the sender's verified identity.

use serde::{Deserialize, Serialize};

use crate::error::{Bad, Error, Value};
use crate::limits::{
    MAX_CERT_LEN, MAX_CHAIN_CERTS, MAX_CHANGES, MAX_DIGEST_ID_LEN, MAX_MEMBERS,
    MAX_MEMBER_RECORD_LEN, MAX_SIGNATURE_LEN,
};
use crate::model::ServiceExport;
use crate::names::{ClusterName, ServiceName};
use crate::origin::{OriginState, Watermark};

/// Variants are encoded by index: new ones go at the end, with a protocol version bump if an old
/// peer must not receive them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    Hello(Hello),
    /// The sender's whole origin state; replaces what the receiver holds if newer.
    Snapshot(OriginState),
    Delta(Delta),
    /// The sender's current watermark; a receiver that holds less asks for a snapshot.
    Heartbeat(Watermark),
    /// "Send me your snapshot": the receiver of a delta found a gap.
    SnapshotRequest,
    /// Signed membership records, carried for the gateway, not interpreted here.
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, { MAX_MEMBERS }>")]
    Members(Vec<OpaqueMember>),
    /// The sender is going away on purpose.
    Bye,
    /// Which membership records the sender holds (see [`MembersDigest`]).
    MembersDigest(MembersDigest),
}

/// Which membership records the sender holds: per identity, the highest generation. The
/// receiver answers with a `Members` message of the records the sender lacks or holds older
/// and, when `reply` is set and the sender holds something newer, with its own digest (with
/// `reply` unset, so two digests never answer each other forever). Sent when a session opens
/// and now and then to one peer (anti-entropy), so records cross a session once, not on every
/// change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersDigest {
    pub reply: bool,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, { MAX_MEMBERS }>")]
    pub entries: Vec<DigestEntry>,
}

/// One identity's record in a [`MembersDigest`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DigestEntry {
    /// The SPIFFE ID, as UTF-8 bytes.
    #[serde(deserialize_with = "crate::bounded::bytes::<_, { MAX_DIGEST_ID_LEN }>")]
    pub id: Vec<u8>,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Highest sync protocol version the sender speaks.
    pub protocol_version: u16,
    pub cluster: ClusterName,
    pub generation: u64,
    pub version: u64,
    /// The watermark the sender holds of the receiver's origin, if any.
    pub have: Option<Watermark>,
}

impl Hello {
    pub fn watermark(&self) -> Watermark {
        Watermark {
            generation: self.generation,
            version: self.version,
        }
    }
}

/// The changes taking `cluster`'s state from `from_version` to `to_version` within one
/// generation. Upserts carry the whole export, so applying one twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub cluster: ClusterName,
    pub generation: u64,
    pub from_version: u64,
    pub to_version: u64,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, { MAX_CHANGES }>")]
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Upsert(ServiceExport),
    Remove(ServiceName),
}

impl Change {
    pub fn name(&self) -> &ServiceName {
        match self {
            Change::Upsert(e) => &e.name,
            Change::Remove(n) => n,
        }
    }
}

/// A membership record signed by its subject; the gateway verifies it, this crate only carries
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpaqueMember {
    #[serde(deserialize_with = "crate::bounded::bytes::<_, { MAX_MEMBER_RECORD_LEN }>")]
    pub record: Vec<u8>,
    /// DER certificates, leaf first.
    #[serde(deserialize_with = "crate::bounded::chain")]
    pub chain: Vec<Vec<u8>>,
    #[serde(deserialize_with = "crate::bounded::bytes::<_, { MAX_SIGNATURE_LEN }>")]
    pub signature: Vec<u8>,
}

fn len(n: usize) -> Value<'static> {
    Value::Number(n as u64)
}

impl Delta {
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(|(i, bad)| match i {
            Some(i) => bad.into_error(&format!("changes[{i}] {}", self.changes[i].name())),
            None => bad.into_error(self.cluster.as_str()),
        })
    }

    /// The failing change's index (if the failure is inside one) and what is wrong.
    pub(crate) fn check(&self) -> Result<(), (Option<usize>, Bad<'_>)> {
        if self.to_version <= self.from_version {
            let bad = Bad::new(
                "to_version",
                Value::Number(self.to_version),
                "must be greater than from_version",
            );
            return Err((None, bad));
        }
        if self.changes.len() > MAX_CHANGES {
            let reason = "more than 20000 changes";
            return Err((None, Bad::new("changes", len(self.changes.len()), reason)));
        }
        for (i, change) in self.changes.iter().enumerate() {
            if let Change::Upsert(export) = change {
                export.check().map_err(|bad| (Some(i), bad))?;
            }
        }
        // One change per service, or the result would depend on the order of application.
        let mut names: Vec<(&ServiceName, usize)> = self
            .changes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name(), i))
            .collect();
        names.sort_unstable();
        for w in names.windows(2) {
            if w[0].0 == w[1].0 {
                let i = w[1].1;
                let bad = Bad::new("name", Value::Text(w[1].0.name()), "changed twice");
                return Err((Some(i), bad));
            }
        }
        Ok(())
    }
}

impl OpaqueMember {
    fn check(&self) -> Result<(), Bad<'_>> {
        if self.record.len() > MAX_MEMBER_RECORD_LEN {
            let reason = "record longer than 4096 bytes";
            return Err(Bad::new("members[].record", len(self.record.len()), reason));
        }
        if self.chain.len() > MAX_CHAIN_CERTS {
            let reason = "more than 4 certificates";
            return Err(Bad::new("members[].chain", len(self.chain.len()), reason));
        }
        if let Some(cert) = self.chain.iter().find(|c| c.len() > MAX_CERT_LEN) {
            let reason = "certificate longer than 4096 bytes";
            return Err(Bad::new("members[].chain", len(cert.len()), reason));
        }
        if self.signature.len() > MAX_SIGNATURE_LEN {
            let reason = "signature longer than 512 bytes";
            return Err(Bad::new(
                "members[].signature",
                len(self.signature.len()),
                reason,
            ));
        }
        Ok(())
    }
}

impl SyncMessage {
    /// Short name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncMessage::Hello(_) => "hello",
            SyncMessage::Snapshot(_) => "snapshot",
            SyncMessage::Delta(_) => "delta",
            SyncMessage::Heartbeat(_) => "heartbeat",
            SyncMessage::SnapshotRequest => "snapshot_request",
            SyncMessage::Members(_) => "members",
            SyncMessage::Bye => "bye",
            SyncMessage::MembersDigest(_) => "members_digest",
        }
    }

    /// The cluster the message speaks for, where it names one.
    pub fn origin(&self) -> Option<&ClusterName> {
        match self {
            SyncMessage::Hello(h) => Some(&h.cluster),
            SyncMessage::Snapshot(s) => Some(&s.cluster),
            SyncMessage::Delta(d) => Some(&d.cluster),
            _ => None,
        }
    }

    /// Checks every limit and rule; the error names the field and value.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            SyncMessage::Snapshot(s) => s.validate(),
            SyncMessage::Delta(d) => d.validate(),
            _ => self.check().map_err(|bad| bad.into_error(self.kind())),
        }
    }

    pub(crate) fn check(&self) -> Result<(), Bad<'_>> {
        match self {
            SyncMessage::Hello(h) if h.protocol_version == 0 => {
                let bad = Bad::new("protocol_version", Value::Number(0), "must be at least 1");
                Err(bad)
            }
            SyncMessage::Snapshot(s) => s.check().map_err(|(_, bad)| bad),
            SyncMessage::Delta(d) => d.check().map_err(|(_, bad)| bad),
            SyncMessage::Members(members) => {
                if members.len() > MAX_MEMBERS {
                    let reason = "more than 1024 members";
                    return Err(Bad::new("members", len(members.len()), reason));
                }
                for (i, m) in members.iter().enumerate() {
                    m.check().map_err(|bad| bad.at(i))?;
                }
                Ok(())
            }
            SyncMessage::MembersDigest(d) => {
                if d.entries.len() > MAX_MEMBERS {
                    let reason = "more than 1024 members";
                    return Err(Bad::new("entries", len(d.entries.len()), reason));
                }
                if let Some(e) = d.entries.iter().find(|e| e.id.len() > MAX_DIGEST_ID_LEN) {
                    let reason = "identity longer than 2048 bytes";
                    return Err(Bad::new("entries[].id", len(e.id.len()), reason));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
