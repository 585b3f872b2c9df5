//! `tunctl peers` rows, built in one place: the engine's row for every key it runs, with the
//! identity the mesh knows for that key, plus a row for every peer by identity with no key.

use crate::admin::proto::{PeerInfo, PeerState};
use crate::mesh::joined::{IdentityRow, PendingReason};
use crate::mesh::records::unix_ms;
use std::collections::HashMap;
use std::time::SystemTime;

/// `engine_rows` (one per key) completed with `identities` (first identity of a key wins:
/// peers by identity come before members learned from records).
pub(super) fn peer_rows(
    mut engine_rows: Vec<PeerInfo>,
    identities: Vec<IdentityRow>,
    now: SystemTime,
) -> Vec<PeerInfo> {
    let by_key: HashMap<String, usize> = engine_rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.public_key.clone(), i))
        .collect();
    let mut pending = Vec::new();
    for identity in identities {
        match identity {
            IdentityRow::Keyed {
                key,
                spiffe_id,
                not_after,
                retiring_until,
            } => {
                let Some(row) = by_key.get(&key.to_base64()).map(|i| &mut engine_rows[*i]) else {
                    continue;
                };
                row.verified = true;
                if let Some((until, name)) = retiring_until {
                    let left = until.duration_since(now).unwrap_or_default().as_secs();
                    row.name = Some(format!("{name} (old key)"));
                    row.status_reason =
                        Some(format!("rotated: old key accepted for {left} s more"));
                    continue;
                }
                if row.spiffe_id.is_some() {
                    continue;
                }
                row.spiffe_id = Some(spiffe_id.as_str().to_string());
                row.svid_expires_unix_ms = Some(unix_ms(not_after));
                if not_after <= now {
                    row.status = PeerState::Error;
                    row.status_reason = Some("peer SVID expired".into());
                }
            }
            IdentityRow::Pending {
                name,
                endpoint,
                reason,
                allowed_ips,
                persistent_keepalive,
                spiffe_id,
            } => pending.push(PeerInfo {
                public_key: String::new(),
                name: Some(name),
                endpoint: endpoint.map(|e| e.to_string()),
                status: match reason {
                    PendingReason::Refused(_) => PeerState::Error,
                    PendingReason::Joining | PendingReason::WaitingForPeer => PeerState::Connecting,
                },
                status_reason: Some(match reason {
                    PendingReason::Refused(e) => format!("join refused: {e}"),
                    PendingReason::Joining => "joining".to_string(),
                    PendingReason::WaitingForPeer => "waiting for the peer to join".to_string(),
                }),
                last_handshake_unix_ms: None,
                rx_bytes: 0,
                tx_bytes: 0,
                rx_wire_bytes: 0,
                tx_wire_bytes: 0,
                rx_packets: 0,
                tx_packets: 0,
                handshakes: 0,
                allowed_ips: allowed_ips.iter().map(|n| n.to_string()).collect(),
                persistent_keepalive,
                dropped: Default::default(),
                spiffe_id: spiffe_id.map(|id| id.as_str().to_string()),
                svid_expires_unix_ms: None,
                verified: false,
            }),
        }
    }
    engine_rows.extend(pending);
    engine_rows
}
