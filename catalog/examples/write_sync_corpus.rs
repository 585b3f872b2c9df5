//! Writes the seed corpus of the `sync_decode` fuzz target (`fuzz/corpus/sync_decode/`): one
//! valid frame of each message kind, a stream of several frames, and a few near misses.
//!
//! ```sh
//! cargo run -p isthmus-catalog --example write_sync_corpus
//! ```

use std::path::Path;

use isthmus_catalog::{
    encode, Change, ClusterName, Delta, Endpoint, Hello, OpaqueMember, OriginState, Policy,
    Protocol, ServiceExport, ServicePort, SyncMessage, Watermark, PROTOCOL_VERSION,
};

fn export(name: &str, headless: bool) -> ServiceExport {
    let mut e = ServiceExport::new(name.parse().expect("constant name"));
    e.ports = vec![
        ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
        },
        ServicePort {
            name: None,
            port: 53,
            protocol: Protocol::Udp,
        },
    ];
    e.headless = headless;
    e.policy = Policy::Weighted;
    e.weight = 3;
    e.endpoints = vec![
        Endpoint {
            address: "10.1.0.1".parse().expect("constant address"),
            port: 8080,
            ready: true,
            zone: Some("zone-a".into()),
        },
        Endpoint {
            address: "fd00::1".parse().expect("constant address"),
            port: 8080,
            ready: false,
            zone: None,
        },
    ];
    e
}

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sync_decode");
    std::fs::create_dir_all(&dir)?;
    let east = ClusterName::new("east").expect("constant name");
    let mut snapshot = OriginState::new(east.clone(), 7);
    snapshot.version = 3;
    for e in [export("shop/api", false), export("db/pg", true)] {
        snapshot.services.insert(e.name.clone(), e);
    }
    let messages = [
        (
            "hello",
            SyncMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                cluster: east.clone(),
                generation: 7,
                version: 3,
                have: Some(Watermark {
                    generation: 2,
                    version: 9,
                }),
            }),
        ),
        ("snapshot", SyncMessage::Snapshot(snapshot.clone())),
        (
            "delta",
            SyncMessage::Delta(Delta {
                cluster: east.clone(),
                generation: 7,
                from_version: 3,
                to_version: 4,
                changes: vec![
                    Change::Remove("db/pg".parse().expect("constant name")),
                    Change::Upsert(export("shop/web", false)),
                ],
            }),
        ),
        (
            "heartbeat",
            SyncMessage::Heartbeat(Watermark {
                generation: 7,
                version: 4,
            }),
        ),
        ("snapshot_request", SyncMessage::SnapshotRequest),
        (
            "members",
            SyncMessage::Members(vec![OpaqueMember {
                record: b"record".to_vec(),
                chain: vec![vec![0x30, 0x82, 0x01, 0x00], vec![0x30, 0x00]],
                signature: vec![0xaa; 64],
            }]),
        ),
        ("bye", SyncMessage::Bye),
    ];
    let mut stream = Vec::new();
    for (name, msg) in &messages {
        let frame = encode(msg).expect("small messages fit a frame");
        std::fs::write(dir.join(name), &frame)?;
        stream.extend_from_slice(&frame);
    }
    std::fs::write(dir.join("stream_of_all"), &stream)?;

    // Near misses: a future version, a cut frame, trailing bytes, an oversized prefix.
    let mut future = encode(&SyncMessage::Bye).expect("fits");
    future[4..6].copy_from_slice(&2u16.to_be_bytes());
    std::fs::write(dir.join("version_2"), &future)?;
    let snap = encode(&SyncMessage::Snapshot(snapshot)).expect("fits");
    std::fs::write(dir.join("snapshot_cut"), &snap[..snap.len() / 2])?;
    let mut trailing = encode(&SyncMessage::SnapshotRequest).expect("fits");
    trailing[3] += 1;
    trailing.push(0);
    std::fs::write(dir.join("trailing_byte"), &trailing)?;
    std::fs::write(dir.join("oversized_prefix"), u32::MAX.to_be_bytes())?;
    println!("wrote {}", dir.display());
    Ok(())
}
