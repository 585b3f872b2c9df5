//! Arbitrary bytes into the catalog sync decoders and, frame by frame through the stream
//! decoder, into a merged catalog. The body is `isthmus_catalog::fuzzing::sync_decode`, which a
//! catalog test also runs over every file in `corpus/sync_decode/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    isthmus_catalog::fuzzing::sync_decode(data);
});
