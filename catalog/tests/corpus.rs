//! Replays the `sync_decode` fuzz corpus (`fuzz/corpus/sync_decode/`, seeds written by
//! `examples/write_sync_corpus.rs`) through the fuzz target's body, and checks that the seeds
//! still mean what their names say, so a wire format change cannot leave them stale.

use std::path::{Path, PathBuf};

use isthmus_catalog::{decode_frame, fuzzing, DecodeError, FrameDecoder};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sync_decode");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_corpus_replays_without_panicking() {
    let files = corpus();
    assert!(files.len() >= 10, "{} inputs", files.len());
    for (_, data) in &files {
        fuzzing::sync_decode(data);
    }
}

#[test]
fn seeds_decode_as_named() {
    let files = corpus();
    let get = |name: &str| &files.iter().find(|(n, _)| n == name).unwrap().1;
    for kind in [
        "hello",
        "snapshot",
        "delta",
        "heartbeat",
        "snapshot_request",
        "members",
        "bye",
    ] {
        assert_eq!(decode_frame(get(kind)).map(|m| m.kind()), Ok(kind));
    }
    let mut stream = FrameDecoder::new();
    stream.push(get("stream_of_all")).unwrap();
    let mut kinds = Vec::new();
    while let Some(m) = stream.pop().unwrap() {
        kinds.push(m.kind());
    }
    assert_eq!(kinds.len(), 7);
    assert_eq!(
        decode_frame(get("version_2")),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(
        decode_frame(get("snapshot_cut")),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        decode_frame(get("trailing_byte")),
        Err(DecodeError::TrailingBytes(1))
    );
    assert!(matches!(
        decode_frame(get("oversized_prefix")),
        Err(DecodeError::FrameTooLarge(_))
    ));
}
