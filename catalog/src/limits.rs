//! Hard limits on what one origin may publish and one message may carry. The decoder refuses a
//! longer announced count before allocating for it; `validate` names the limit for values built
//! in-process.

/// Largest frame body (version + encoded message) either side sends or accepts.
pub const MAX_FRAME_LEN: usize = 4 << 20;
/// Largest encoded snapshot a local catalog publishes: half a frame, so that a delta between two
/// publishable states (upserts no larger than the new snapshot, plus at most
/// [`MAX_SERVICES`] removed names of at most 130 bytes each) always fits one frame.
pub const MAX_SNAPSHOT_LEN: usize = MAX_FRAME_LEN / 2;
/// Services one cluster may export.
pub const MAX_SERVICES: usize = 10_000;
/// Ports of one service.
pub const MAX_PORTS: usize = 128;
/// Endpoints of one service in one cluster.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Changes in one delta: every service of one state removed and every one of the next added.
pub const MAX_CHANGES: usize = 2 * MAX_SERVICES;
/// Longest topology zone name (a Kubernetes label value).
pub const MAX_ZONE_LEN: usize = 63;
/// Membership records in one `Members` message.
pub const MAX_MEMBERS: usize = 1024;
/// Longest identity in a members digest (the SPIFFE limit on a URI).
pub const MAX_DIGEST_ID_LEN: usize = 2048;
/// Longest opaque membership record.
pub const MAX_MEMBER_RECORD_LEN: usize = 4096;
/// Certificates in a member's chain.
pub const MAX_CHAIN_CERTS: usize = 4;
/// Longest DER certificate in a member's chain.
pub const MAX_CERT_LEN: usize = 4096;
/// Longest member signature.
pub const MAX_SIGNATURE_LEN: usize = 512;
