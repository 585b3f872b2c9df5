//! The Noise join: how two gateways that know only an address and the SPIFFE ID they expect
//! prove their identities to each other before either installs the other as a WireGuard peer.
//!
//! # Protocol
//!
//! The join is `Noise_XX_25519_ChaChaPoly_BLAKE2s` (prologue `isthmus-join`) over TCP on the
//! join port ([`DEFAULT_JOIN_PORT`]). The Noise static key **is** the gateway's WireGuard
//! static X25519 key, so finishing the handshake proves possession of the WireGuard private key;
//! the [`PeerVerifier`] then checks that the peer's Noise static key is the WireGuard key bound
//! into the SVID it presented.
//!
//! ```text
//! initiator                                          responder
//!   m1  -> e                 JoinRequest{version, expected SPIFFE ID}   (cleartext)
//!   m2  <- e, ee, s, es      Answer::Hello{chain, endpoint hint} | Answer::Refuse{reason}
//!   m3  -> s, se             Answer::Hello{...} | Answer::Refuse{reason}
//!   v   -> Verdict::Accept                      (the initiator has already verified)
//!   v   <- Verdict::Accept | Verdict::Refuse{reason}
//! ```
//!
//! The responder may refuse in m2 (unknown version, or it is not the identity the initiator
//! expects, when it knows its own ID); the initiator refuses in m3 when the responder's chain
//! does not verify for the expected ID; the responder refuses in its verdict when the
//! initiator's chain does not verify. A refusal is encrypted and authenticated by the refusing
//! side's static key, except one in m2 caused by a message 1 it could not use. Each side ends
//! with [`Joined`] or a [`JoinError`] saying why, and the refusing side's reason reaches the
//! other as [`JoinError::RefusedByPeer`].
//!
//! The two verdicts cross on the wire, so, as with any final message, a side whose verdict is
//! lost or damaged in flight may be left failed while its peer has joined; the failed side
//! retries, and the joined side's WireGuard handshake shows whether the peer installed it.
//!
//! Each Noise message and verdict travels as one frame: `u16` big-endian length, then the bytes
//! (see [`wire`] for the payload layouts and limits). A join not finished within [`JOIN_TIMEOUT`]
//! of its start is abandoned.
//!
//! # Contract
//!
//! [`Initiator`] and [`Responder`] do no I/O and read no clock. The caller feeds each received
//! frame (without its length prefix) to `handle_frame`, sends every frame `poll_frame` yields —
//! **also after `handle_frame` returned an error**, because that is how a refusal reaches the
//! peer — and calls `handle_timeout` at `poll_timeout`. Time is `SystemTime` throughout, as
//! the verifier needs wall-clock time for certificate validity; the shell adds its own
//! monotonic per-connection timeout. [`server`] is the tokio shell that does
//! this over TCP with per-connection timeouts and a [`JoinRateLimiter`].

pub mod fuzzing;
pub mod join;
pub mod rate_limit;
pub mod server;
pub mod wire;

#[cfg(test)]
mod tests;

use isthmus_pki::SpiffeId;
use std::time::{Duration, SystemTime};

pub use join::{Initiator, Joined, Responder, Step};
pub use rate_limit::{JoinRateLimiter, RateLimitConfig};
pub use server::{join_connect, join_listen, JoinServerHandle, JoinedPeer, Presenting};
pub use wire::{JoinHello, WireError, PROTOCOL_VERSION};

/// The TCP port the join listens on, beside WireGuard's 51820.
pub const DEFAULT_JOIN_PORT: u16 = 51821;

/// Whether a SPIFFE ID matches what a join request expects: the ID itself, or a pattern in
/// which a path segment `*` stands for any one segment (`spiffe://td/cluster/c2/gateway/*`:
/// any gateway of cluster c2, sent when the peer is configured by `cluster`).
pub fn id_matches(expected: &str, id: &str) -> bool {
    if !expected.contains('*') {
        return expected == id;
    }
    let (mut e, mut i) = (expected.split('/'), id.split('/'));
    loop {
        match (e.next(), i.next()) {
            (None, None) => return true,
            (Some("*"), Some(seg)) if !seg.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}
/// A join must finish within this long of its start.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Decides whether a peer's presented chain is acceptable. Implemented by the pki verifier; a
/// test double elsewhere.
pub trait PeerVerifier: Send + Sync {
    /// Verifies `chain` (DER, leaf first) at `now`, checks that `remote_static` (the key the
    /// peer proved in the Noise handshake) is the WireGuard key bound into its SVID, and when
    /// `expected` is given, that the SVID names that SPIFFE ID. Returns the peer's SPIFFE ID and
    /// SVID expiry, or the rule the chain broke (its text is sent to the peer as the refusal
    /// reason).
    fn verify(
        &self,
        chain: &[Vec<u8>],
        remote_static: &[u8; 32],
        expected: Option<&str>,
        now: SystemTime,
    ) -> Result<VerifiedPeer, VerifyError>;
}

/// Why a verifier refused a chain. The text names the rule in brackets where it has a stable
/// name, as the peer and the operator see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The chain broke a rule of SVID verification.
    #[error("{0} [{rule}]", rule = .0.rule())]
    Chain(#[source] isthmus_pki::VerifyError),
    /// The identity a peer was expected to have is not a SPIFFE ID.
    #[error("expected identity {expected:?}: {source}")]
    Expected {
        expected: String,
        source: isthmus_pki::IdError,
    },
    /// The SVID is valid but names someone the pattern does not cover.
    #[error("the SVID names {id}, not {pattern} [wrong-identity]")]
    WrongIdentity { id: SpiffeId, pattern: String },
    /// The SVID is valid but no configured peer expects its identity.
    #[error("{id} is not a configured peer of this gateway [not-a-peer]")]
    NotAPeer { id: SpiffeId },
    /// A refusal of a verifier other than the PKI's (tests, fuzzing), as it said it.
    #[error("{0}")]
    Other(String),
}

/// What a verifier learned from a chain it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The SPIFFE ID of the SVID.
    pub id: SpiffeId,
    /// The end of the SVID's validity (the chain's earliest `notAfter`).
    pub not_after: SystemTime,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    #[error("noise handshake failed")]
    Noise(#[source] snow::Error),
    #[error("malformed join message")]
    Malformed(#[source] WireError),
    #[error("peer speaks join protocol version {peer}, this gateway speaks {PROTOCOL_VERSION}")]
    VersionMismatch { peer: u16 },
    #[error("initiator expects {expected}, this gateway is {local}")]
    NotExpectedIdentity { expected: String, local: String },
    #[error("refused by peer: {reason}")]
    RefusedByPeer { reason: String },
    #[error("peer failed verification: {rule}")]
    VerificationFailed { rule: String },
    #[error("join not finished within {JOIN_TIMEOUT:?}")]
    Timeout,
    #[error("join rate limit reached")]
    RateLimited,
    #[error("frame of {len} bytes, at most {max}", max = wire::MAX_FRAME_LEN)]
    FrameTooLarge { len: usize },
    #[error("frame arrived when none was expected")]
    UnexpectedFrame,
    #[error("the join has already ended")]
    Ended,
    #[error("local certificate chain cannot be sent")]
    LocalChain(#[source] WireError),
    #[error("peer closed the connection mid-join")]
    ConnectionClosed,
    #[error("join connection failed")]
    Io(#[source] std::io::Error),
}

impl From<WireError> for JoinError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::UnsupportedVersion(peer) => JoinError::VersionMismatch { peer },
            other => JoinError::Malformed(other),
        }
    }
}
