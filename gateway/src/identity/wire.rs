//! The join protocol's bytes: the stream framing and the payloads carried inside Noise
//! messages. Every integer is big-endian; every length and count is checked against a hard
//! limit before anything is allocated, and a decoder refuses trailing bytes.
//!
//! ```text
//! frame          = len:u16 | bytes[len]                  len ≤ MAX_FRAME_LEN
//! request  (m1)  = version:u16 | id_len:u16 | id[id_len]  expected SPIFFE ID, UTF-8, ≤ 2048
//! answer (m2,m3) = version:u16 | 0x01 | hello
//!                | version:u16 | 0x02 | reason
//! verdict        = version:u16 | 0x01                      accept
//!                | version:u16 | 0x02 | reason             refuse
//! hello          = count:u16 (1..=4) | { der_len:u16 (1..=4096) | der[der_len] }*count
//!                  | endpoint | mesh
//! endpoint       = 0x00                                    none
//!                | 0x04 | ipv4[4]  | port:u16
//!                | 0x06 | ipv6[16] | port:u16
//! mesh           = 0x00 | 0x04 | ipv4[4] | 0x06 | ipv6[16]   the sender's mesh address
//! reason         = len:u16 | utf8[len]                     ≤ 1024 (longer reasons are cut)
//! ```
//!
//! Every payload starts with the protocol version, so a peer can read the version of a payload
//! whose layout it does not know and answer with a refusal that names both versions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The join protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// At most this many certificates in a presented chain (leaf, intermediate, and room to spare).
pub const MAX_CERTS: usize = 4;
/// Largest DER certificate accepted.
pub const MAX_CERT_LEN: usize = 4096;
/// Largest encoded payload (before Noise encryption).
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;
/// SPIFFE ID spec §2.3 lets implementations cap URIs at 2048 bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest refusal reason carried; longer ones are cut at a character boundary.
pub const MAX_REASON_LEN: usize = 1024;
/// Noise overhead of the largest handshake message (XX message 2: `e` 32, encrypted `s` 48,
/// payload tag 16).
pub const NOISE_OVERHEAD: usize = 32 + 48 + 16;
/// Largest frame either side accepts; anything bigger ends the join before its body is read.
pub const MAX_FRAME_LEN: usize = MAX_PAYLOAD_LEN + NOISE_OVERHEAD;

const TAG_HELLO: u8 = 1;
const TAG_REFUSE: u8 = 2;
const TAG_ACCEPT: u8 = 1;
const ADDR_NONE: u8 = 0;
const ADDR_V4: u8 = 4;
const ADDR_V6: u8 = 6;

/// Why bytes were refused. `Copy` and allocation-free: built from untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("message ends early")]
    Truncated,
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("protocol version {0}")]
    UnsupportedVersion(u16),
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("unknown address family {0}")]
    UnknownAddressFamily(u8),
    #[error("empty certificate chain")]
    EmptyChain,
    #[error("{0} certificates, at most {MAX_CERTS}")]
    TooManyCerts(usize),
    #[error("certificate of {0} bytes, allowed 1 to {MAX_CERT_LEN}")]
    CertLength(usize),
    #[error("SPIFFE ID of {0} bytes, allowed 1 to {MAX_SPIFFE_ID_LEN}")]
    IdLength(usize),
    #[error("reason of {0} bytes, at most {MAX_REASON_LEN}")]
    ReasonLength(usize),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("{0} bytes, at most {MAX_PAYLOAD_LEN}")]
    TooLarge(usize),
}

/// Message 1 payload: what the initiator expects to reach. Sent before any key is agreed, so a
/// passive observer sees it (as TLS SNI); it holds nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub expected: String,
}

/// What each side presents about itself (messages 2 and 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinHello {
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// Where the sender would like WireGuard traffic sent, if it knows better than the address
    /// the join came from (a NAT'd or multi-homed gateway).
    pub endpoint_hint: Option<SocketAddr>,
    /// The sender's mesh address (on its TUN): where the peer reaches it through the tunnel,
    /// e.g. to re-join with a rotated key while the old session still carries traffic.
    pub mesh_addr: Option<IpAddr>,
}

impl JoinHello {
    /// A hello carrying only a chain.
    pub fn new(chain: Vec<Vec<u8>>) -> Self {
        Self {
            chain,
            endpoint_hint: None,
            mesh_addr: None,
        }
    }
}

/// Messages 2 and 3: the sender's hello, or its refusal to go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Hello(JoinHello),
    Refuse { reason: String },
}

/// The final encrypted frame each side sends after message 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Refuse { reason: String },
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn text(&mut self, max: usize, too_long: fn(usize) -> WireError) -> Result<String, WireError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(too_long(len));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::NotUtf8)
    }
    /// Every payload starts with the version; anything else is unreadable to us.
    fn version(&mut self) -> Result<(), WireError> {
        match self.u16()? {
            PROTOCOL_VERSION => Ok(()),
            other => Err(WireError::UnsupportedVersion(other)),
        }
    }
    fn finish(self) -> Result<(), WireError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

fn start(bytes: &[u8]) -> Result<Reader<'_>, WireError> {
    if bytes.len() > MAX_PAYLOAD_LEN {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let mut r = Reader::new(bytes);
    r.version()?;
    Ok(r)
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes `len:u16 | bytes`; `bytes` must already be checked to fit.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("length checked against a limit below 64 KiB");
    put_u16(out, len);
    out.extend_from_slice(bytes);
}

/// Cuts `reason` to [`MAX_REASON_LEN`] bytes at a character boundary.
fn clip(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn put_reason(out: &mut Vec<u8>, reason: &str) {
    put_bytes(out, clip(reason).as_bytes());
}

fn read_reason(r: &mut Reader<'_>) -> Result<String, WireError> {
    r.text(MAX_REASON_LEN, WireError::ReasonLength)
}

impl JoinRequest {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let id = self.expected.as_bytes();
        if id.is_empty() || id.len() > MAX_SPIFFE_ID_LEN {
            return Err(WireError::IdLength(id.len()));
        }
        let mut out = Vec::with_capacity(4 + id.len());
        put_u16(&mut out, PROTOCOL_VERSION);
        put_bytes(&mut out, id);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = start(bytes)?;
        let expected = r.text(MAX_SPIFFE_ID_LEN, WireError::IdLength)?;
        if expected.is_empty() {
            return Err(WireError::IdLength(0));
        }
        r.finish()?;
        Ok(Self { expected })
    }
}

impl JoinHello {
    /// Checks the chain against the limits, and the whole encoded answer against
    /// [`MAX_PAYLOAD_LEN`], so a bad local chain fails when the join is set up rather than
    /// half-way through.
    pub fn check(&self) -> Result<(), WireError> {
        if self.chain.is_empty() {
            return Err(WireError::EmptyChain);
        }
        if self.chain.len() > MAX_CERTS {
            return Err(WireError::TooManyCerts(self.chain.len()));
        }
        if let Some(cert) = self
            .chain
            .iter()
            .find(|c| c.is_empty() || c.len() > MAX_CERT_LEN)
        {
            return Err(WireError::CertLength(cert.len()));
        }
        let endpoint = match self.endpoint_hint {
            None => 1,
            Some(SocketAddr::V4(_)) => 1 + 4 + 2,
            Some(SocketAddr::V6(_)) => 1 + 16 + 2,
        };
        let mesh = match self.mesh_addr {
            None => 1,
            Some(IpAddr::V4(_)) => 1 + 4,
            Some(IpAddr::V6(_)) => 1 + 16,
        };
        let total =
            2 + 1 + 2 + self.chain.iter().map(|c| 2 + c.len()).sum::<usize>() + endpoint + mesh;
        if total > MAX_PAYLOAD_LEN {
            return Err(WireError::TooLarge(total));
        }
        Ok(())
    }

    fn put(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.check()?;
        put_u16(
            out,
            u16::try_from(self.chain.len()).expect("at most MAX_CERTS"),
        );
        for cert in &self.chain {
            put_bytes(out, cert);
        }
        match self.endpoint_hint {
            None => out.push(ADDR_NONE),
            Some(SocketAddr::V4(a)) => {
                out.push(ADDR_V4);
                out.extend_from_slice(&a.ip().octets());
                put_u16(out, a.port());
            }
            Some(SocketAddr::V6(a)) => {
                out.push(ADDR_V6);
                out.extend_from_slice(&a.ip().octets());
                put_u16(out, a.port());
            }
        }
        match self.mesh_addr {
            None => out.push(ADDR_NONE),
            Some(IpAddr::V4(a)) => {
                out.push(ADDR_V4);
                out.extend_from_slice(&a.octets());
            }
            Some(IpAddr::V6(a)) => {
                out.push(ADDR_V6);
                out.extend_from_slice(&a.octets());
            }
        }
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = usize::from(r.u16()?);
        if count == 0 {
            return Err(WireError::EmptyChain);
        }
        if count > MAX_CERTS {
            return Err(WireError::TooManyCerts(count));
        }
        let mut chain = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u16()?);
            if len == 0 || len > MAX_CERT_LEN {
                return Err(WireError::CertLength(len));
            }
            chain.push(r.take(len)?.to_vec());
        }
        let endpoint_hint = match r.u8()? {
            ADDR_NONE => None,
            ADDR_V4 => {
                let ip = Ipv4Addr::from(r.array::<4>()?);
                Some(SocketAddr::new(IpAddr::V4(ip), r.u16()?))
            }
            ADDR_V6 => {
                let ip = Ipv6Addr::from(r.array::<16>()?);
                Some(SocketAddr::new(IpAddr::V6(ip), r.u16()?))
            }
            other => return Err(WireError::UnknownAddressFamily(other)),
        };
        let mesh_addr = match r.u8()? {
            ADDR_NONE => None,
            ADDR_V4 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            ADDR_V6 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            other => return Err(WireError::UnknownAddressFamily(other)),
        };
        Ok(Self {
            chain,
            endpoint_hint,
            mesh_addr,
        })
    }
}

fn finish_encoded(out: Vec<u8>) -> Result<Vec<u8>, WireError> {
    if out.len() > MAX_PAYLOAD_LEN {
        return Err(WireError::TooLarge(out.len()));
    }
    Ok(out)
}

impl Answer {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        put_u16(&mut out, PROTOCOL_VERSION);
        match self {
            Answer::Hello(hello) => {
                out.push(TAG_HELLO);
                hello.put(&mut out)?;
            }
            Answer::Refuse { reason } => {
                out.push(TAG_REFUSE);
                put_reason(&mut out, reason);
            }
        }
        finish_encoded(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = start(bytes)?;
        let answer = match r.u8()? {
            TAG_HELLO => Answer::Hello(JoinHello::read(&mut r)?),
            TAG_REFUSE => Answer::Refuse {
                reason: read_reason(&mut r)?,
            },
            other => return Err(WireError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(answer)
    }
}

impl Verdict {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u16(&mut out, PROTOCOL_VERSION);
        match self {
            Verdict::Accept => out.push(TAG_ACCEPT),
            Verdict::Refuse { reason } => {
                out.push(TAG_REFUSE);
                put_reason(&mut out, reason);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = start(bytes)?;
        let verdict = match r.u8()? {
            TAG_ACCEPT => Verdict::Accept,
            TAG_REFUSE => Verdict::Refuse {
                reason: read_reason(&mut r)?,
            },
            other => return Err(WireError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(verdict)
    }
}

/// A frame's length prefix declared more than [`MAX_FRAME_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {0} bytes, at most {MAX_FRAME_LEN}")]
pub struct FrameTooLarge(pub usize);

/// Prefixes a Noise message with its length for the join stream.
pub fn encode_frame(message: &[u8]) -> Result<Vec<u8>, FrameTooLarge> {
    if message.len() > MAX_FRAME_LEN {
        return Err(FrameTooLarge(message.len()));
    }
    let mut out = Vec::with_capacity(2 + message.len());
    put_bytes(&mut out, message);
    Ok(out)
}

/// Splits a byte stream into frames. Sans-IO: feed whatever the socket gave, take whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or an error as soon as a
    /// length prefix is over the limit (the stream cannot be trusted after that).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameTooLarge> {
        let Some(prefix) = self.buf.first_chunk::<2>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        if len > MAX_FRAME_LEN {
            return Err(FrameTooLarge(len));
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let frame = self.buf[2..2 + len].to_vec();
        self.buf.drain(..2 + len);
        Ok(Some(frame))
    }

    /// Bytes held that do not yet form a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
