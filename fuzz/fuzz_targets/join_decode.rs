//! Arbitrary bytes into the join payload decoders and a responder's `handle_frame`. The body is
//! `isthmus_gateway::identity::fuzzing::join_decode`, which a gateway test also runs over every
//! file in `corpus/join_decode/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    isthmus_gateway::identity::fuzzing::join_decode(data);
});
