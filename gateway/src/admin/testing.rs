//! A fixed [`AdminSource`] for the operator-interface tests.

use super::proto::{InterfaceStatus, PeerInfo, PeerState};
use super::AdminSource;
use crate::keys::{PrivateKey, PublicKey};
use std::collections::BTreeMap;

/// `wg pubkey` of this is `GoKOHKmMnVDs1HlV8C09+3O8llMmkEQGWeuCgowTf0g=`.
pub(crate) const PRIVATE_KEY: &str = "YAnm5P3Lzzi3kZ5xmJ+0y2ibs8dNvk7UfXCeptvBbVk=";
/// Unix ms of the connected peer's last handshake.
pub(crate) const HANDSHAKE_MS: u64 = 1_700_000_000_250;

pub(crate) fn peer_key(n: u8) -> String {
    PublicKey::from_bytes([n; 32]).to_base64()
}

pub(crate) struct FakeSource {
    peers: Vec<PeerInfo>,
    status: InterfaceStatus,
}

impl FakeSource {
    pub(crate) fn new() -> Self {
        let connected = PeerInfo {
            public_key: peer_key(1),
            name: Some("cluster-b".into()),
            endpoint: Some("192.0.2.10:51820".into()),
            status: PeerState::Connected,
            status_reason: None,
            last_handshake_unix_ms: Some(HANDSHAKE_MS),
            rx_bytes: 1_258_291,
            tx_bytes: 4_096,
            rx_wire_bytes: 1_300_000,
            tx_wire_bytes: 5_000,
            rx_packets: 1_000,
            tx_packets: 40,
            handshakes: 3,
            allowed_ips: vec!["10.1.0.0/16".into(), "fd00:1::/64".into()],
            persistent_keepalive: Some(25),
            dropped: BTreeMap::from([("bad_source".into(), 2), ("decrypt".into(), 1)]),
            spiffe_id: None,
            svid_expires_unix_ms: None,
            verified: false,
        };
        let connecting = PeerInfo {
            public_key: peer_key(2),
            name: None,
            endpoint: Some("[2001:db8::2]:51820".into()),
            status: PeerState::Connecting,
            status_reason: None,
            last_handshake_unix_ms: None,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_wire_bytes: 0,
            tx_wire_bytes: 148,
            rx_packets: 0,
            tx_packets: 0,
            handshakes: 0,
            allowed_ips: vec!["10.2.0.0/16".into()],
            persistent_keepalive: None,
            dropped: BTreeMap::new(),
            spiffe_id: None,
            svid_expires_unix_ms: None,
            verified: false,
        };
        let broken = PeerInfo {
            public_key: peer_key(3),
            name: Some("edge-7".into()),
            endpoint: None,
            status: PeerState::Error,
            status_reason: Some("endpoint unresolvable".into()),
            last_handshake_unix_ms: None,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_wire_bytes: 0,
            tx_wire_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            handshakes: 0,
            allowed_ips: vec![],
            persistent_keepalive: None,
            dropped: BTreeMap::from([("no_endpoint".into(), 7)]),
            spiffe_id: None,
            svid_expires_unix_ms: None,
            verified: false,
        };
        let key = PrivateKey::try_from_base64(PRIVATE_KEY).expect("valid test key");
        let status = InterfaceStatus {
            name: "isthmus0".into(),
            public_key: key.public_key().to_base64(),
            listen_port: 51820,
            addresses: vec!["10.99.0.1/32".into(), "fd99::1/128".into()],
            mtu: 1420,
            peers: 3,
            connected_peers: 1,
            uptime_secs: 93_784,
            pid: 4242,
            daemon_version: "0.1.0".into(),
            config_file: "/etc/isthmus/gateway.toml".into(),
            offloads: BTreeMap::from([("gro".into(), true), ("gso".into(), false)]),
            dropped: BTreeMap::from([
                ("bad_source".into(), 2),
                ("decrypt".into(), 1),
                ("no_route".into(), 5),
            ]),
        };
        Self {
            peers: vec![connected, connecting, broken],
            status,
        }
    }
}

impl AdminSource for FakeSource {
    fn peers(&self) -> Vec<PeerInfo> {
        self.peers.clone()
    }
    fn status(&self) -> InterfaceStatus {
        self.status.clone()
    }
    fn private_key_hex(&self) -> String {
        PrivateKey::try_from_base64(PRIVATE_KEY)
            .expect("valid test key")
            .to_hex()
    }
}
