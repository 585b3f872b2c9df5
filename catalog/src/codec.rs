//! Framing and encoding of [`SyncMessage`]s on the session's TCP stream.
//!
//! ```text
//! frame = len:u32 (big-endian) | body[len]        2 ≤ len ≤ MAX_FRAME_LEN (4 MiB)
//! body  = version:u16 (big-endian) | postcard(SyncMessage)
//! ```
//!
//! The body is [postcard](https://docs.rs/postcard) 1.x: a documented, stable, non
//! self-describing serde format with varint integers, so a 10,000-endpoint snapshot is about
//! 9 bytes per IPv4 endpoint. The version comes first so a peer can refuse a body whose layout
//! it does not know and name both versions.
//!
//! Decoding never panics and never allocates from a length it has not checked: the frame length
//! is checked against [`MAX_FRAME_LEN`] before the body is buffered; every sequence length is
//! checked against its limit (see [`crate::limits`]) before anything is reserved; every string
//! length is checked against the bytes that remain. After decoding, the message is validated
//! (names, ports, addresses, duplicates), so a decoded message is always a valid one.

use crate::error::{Error, Violation};
use crate::limits::MAX_FRAME_LEN;
use crate::message::SyncMessage;

/// The sync protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Length prefix of a frame.
pub const FRAME_HEADER_LEN: usize = 4;
const VERSION_LEN: usize = 2;

/// Why received bytes were refused. `Copy` and allocation-free: built from untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("frame of {0} bytes, at most {MAX_FRAME_LEN}")]
    FrameTooLarge(usize),
    #[error("frame of {0} bytes has no room for a version")]
    FrameTooShort(usize),
    #[error("sync protocol version {0}, this build speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u16),
    #[error("message ends early")]
    Truncated,
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("invalid {0}")]
    Invalid(Violation),
}

fn malformed(e: postcard::Error) -> DecodeError {
    use postcard::Error as P;
    match e {
        P::DeserializeUnexpectedEnd => DecodeError::Truncated,
        P::DeserializeBadVarint => DecodeError::Malformed("integer too long"),
        P::DeserializeBadBool => DecodeError::Malformed("bool not 0 or 1"),
        P::DeserializeBadChar => DecodeError::Malformed("invalid char"),
        P::DeserializeBadUtf8 => DecodeError::Malformed("text is not UTF-8"),
        P::DeserializeBadOption => DecodeError::Malformed("option tag not 0 or 1"),
        P::DeserializeBadEnum => DecodeError::Malformed("enum tag too large"),
        // Every check of ours inside deserialization reports through serde's custom error.
        P::SerdeDeCustom => DecodeError::Malformed(
            "unknown variant, invalid name, duplicate service or too many elements",
        ),
        _ => DecodeError::Malformed("undecodable body"),
    }
}

/// Encodes one frame (header included). Fails only if the body would exceed
/// [`MAX_FRAME_LEN`]. Does not validate: the peer's decoder does, and refuses.
pub fn encode(msg: &SyncMessage) -> Result<Vec<u8>, Error> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    // postcard fails only on types it cannot represent (unsized sequences, i128 on some
    // targets); the message types have none.
    let mut frame = postcard::to_extend(msg, frame).expect("sync messages always encode");
    let len = frame.len() - FRAME_HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(Error::TooLarge {
            what: "frame body",
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let prefix = u32::try_from(len).expect("MAX_FRAME_LEN fits u32");
    frame[..FRAME_HEADER_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(frame)
}

/// Decodes and validates one frame body (version + message).
pub fn decode(body: &[u8]) -> Result<SyncMessage, DecodeError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLarge(body.len()));
    }
    let Some((version, rest)) = body.split_first_chunk::<VERSION_LEN>() else {
        return Err(DecodeError::FrameTooShort(body.len()));
    };
    match u16::from_be_bytes(*version) {
        PROTOCOL_VERSION => {}
        other => return Err(DecodeError::UnsupportedVersion(other)),
    }
    let (msg, trailing) = postcard::take_from_bytes::<SyncMessage>(rest).map_err(malformed)?;
    if !trailing.is_empty() {
        return Err(DecodeError::TrailingBytes(trailing.len()));
    }
    msg.check()
        .map_err(|bad| DecodeError::Invalid(bad.violation()))?;
    Ok(msg)
}

/// Reads a frame's length prefix: `Ok(None)` if fewer than 4 bytes are there.
fn frame_len(bytes: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = bytes.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLarge(len));
    }
    Ok(Some(len))
}

/// Decodes exactly one whole frame, header included.
pub fn decode_frame(frame: &[u8]) -> Result<SyncMessage, DecodeError> {
    let len = frame_len(frame)?.ok_or(DecodeError::Truncated)?;
    let body = &frame[FRAME_HEADER_LEN..];
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(DecodeError::Truncated),
        std::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes(body.len() - len)),
        std::cmp::Ordering::Equal => decode(body),
    }
}

/// Splits a byte stream into messages: [`push`](Self::push) what was read, then
/// [`pop`](Self::pop) until `Ok(None)`. The first error is final (the stream cannot be trusted
/// to be in step any more): every later call returns it, and the caller closes the session.
/// Holds at most one partial frame plus what was pushed and not yet popped.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    failed: Option<DecodeError>,
}

/// Consumed bytes are dropped from the front once there are this many of them (and they are
/// more than half the buffer), so popping stays linear.
const COMPACT_AFTER: usize = 64 * 1024;

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers `bytes`. Refuses an oversized length prefix as soon as its 4 bytes are here,
    /// before any of the body is kept.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.buf.extend_from_slice(bytes);
        match frame_len(&self.buf[self.start..]) {
            Err(e) => Err(self.fail(e)),
            Ok(_) => Ok(()),
        }
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn pop(&mut self) -> Result<Option<SyncMessage>, DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let pending = &self.buf[self.start..];
        let len = match frame_len(pending) {
            Err(e) => return Err(self.fail(e)),
            Ok(None) => return Ok(None),
            Ok(Some(len)) => len,
        };
        let Some(body) = pending.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Ok(None);
        };
        let result = decode(body);
        self.start += FRAME_HEADER_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= COMPACT_AFTER && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        match result {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Bytes received and not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.failed = Some(e);
        self.buf = Vec::new();
        self.start = 0;
        e
    }
}
