//! A member's self-description and its binary encoding.
//!
//! ```text
//! record   = version:u16 | flags:u8 | generation:u64 | wg_public_key:[u8; 32]
//!            | id_len:u16 | spiffe_id:[u8; id_len]
//!            | endpoint:sockaddr        (if flags & 0x02)
//!            | join_endpoint:sockaddr   (if flags & 0x04)
//!            | mesh_addr:ip
//!            | prefix_count:u8 | (ip | prefix_len:u8) * prefix_count
//! flags    = 0x01 leaving | 0x02 endpoint present | 0x04 join endpoint present
//! ip       = 4:u8 | [u8; 4]   or   6:u8 | [u8; 16]
//! sockaddr = ip | port:u16
//! ```
//!
//! Integers are big-endian; `version` is [`RECORD_VERSION`]. The encoding is canonical: the
//! decoder refuses unknown flags, trailing bytes, prefixes with host bits set and anything
//! else the encoder would never write, so a record decodes only from the one byte string its
//! encoding is, and two records are the same exactly when their bytes are. That is what lets
//! [`super::MemberTable`] compare records by bytes. Hand-written rather than postcard: every
//! length is checked against its limit before anything is read or allocated, and the
//! byte-for-byte canonical form does not depend on a serializer's choices.

use ipnet::IpNet;
use isthmus_pki::{IdError, SpiffeId, MAX_ID_LEN};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const RECORD_VERSION: u16 = 1;
/// Prefixes one member may serve.
pub const MAX_PREFIXES: usize = 64;
/// The longest encoding: header, the longest ID, two IPv6 endpoints, an IPv6 mesh address and
/// the most IPv6 prefixes.
pub const MAX_RECORD_LEN: usize =
    2 + 1 + 8 + 32 + 2 + MAX_ID_LEN + 2 * 19 + 17 + 1 + 18 * MAX_PREFIXES;

const _: () = assert!(MAX_RECORD_LEN <= isthmus_catalog::limits::MAX_MEMBER_RECORD_LEN);

const LEAVING: u8 = 0x01;
const HAS_ENDPOINT: u8 = 0x02;
const HAS_JOIN_ENDPOINT: u8 = 0x04;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// What a gateway says about itself, signed with its SVID key ([`super::sign_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub spiffe_id: SpiffeId,
    /// Must be the key the SVID binds; a record naming another key is refused.
    pub wg_public_key: [u8; 32],
    /// The WireGuard UDP endpoint peers send to; `None` when it can only be reached by its
    /// own handshakes (behind NAT).
    pub endpoint: Option<SocketAddr>,
    /// The Noise join TCP endpoint.
    pub join_endpoint: Option<SocketAddr>,
    /// The address on the gateway's TUN that control traffic goes to.
    pub mesh_addr: IpAddr,
    /// The cluster CIDRs this gateway serves; the consumer adds the mesh address's /32 or
    /// /128 to the peer's allowed IPs itself.
    pub prefixes: Vec<IpNet>,
    /// When the owner signed this record, in milliseconds since the Unix epoch, and strictly
    /// greater than every generation it signed before ([`super::MemberTable::next_generation`]).
    /// A higher generation replaces a lower one; the age of a record is measured from it.
    pub generation: u64,
    /// The member is leaving the mesh: peers remove it, and keep this record as a tombstone.
    pub leaving: bool,
}

/// Why bytes are not a record, or a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("truncated")]
    Truncated,
    #[error("{0} bytes after the record")]
    TrailingBytes(usize),
    #[error("record version {0}, this gateway reads {RECORD_VERSION}")]
    Version(u16),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("SPIFFE ID of {0} bytes, 1 to {MAX_ID_LEN} are allowed")]
    IdLength(usize),
    #[error("invalid SPIFFE ID")]
    Id(#[source] IdError),
    #[error("SPIFFE ID is not UTF-8")]
    IdNotUtf8,
    #[error("address family {0}, expected 4 or 6")]
    Family(u8),
    #[error("{0} prefixes, at most {MAX_PREFIXES} are allowed")]
    TooManyPrefixes(usize),
    #[error("prefix length {0} is too long for its address family")]
    PrefixLength(u8),
    #[error("prefix {0} has host bits set")]
    HostBits(IpNet),
    #[error("endpoint {0} has no address or no port")]
    Endpoint(SocketAddr),
}

impl MemberRecord {
    /// The canonical encoding; refuses what the decoder would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.check()?;
        let id = self.spiffe_id.as_str().as_bytes();
        let mut out = Vec::with_capacity(64 + id.len() + 18 * self.prefixes.len());
        out.extend_from_slice(&RECORD_VERSION.to_be_bytes());
        let mut flags = 0;
        if self.leaving {
            flags |= LEAVING;
        }
        if self.endpoint.is_some() {
            flags |= HAS_ENDPOINT;
        }
        if self.join_endpoint.is_some() {
            flags |= HAS_JOIN_ENDPOINT;
        }
        out.push(flags);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.wg_public_key);
        // SpiffeId guarantees 1..=MAX_ID_LEN bytes, which fits a u16.
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(id);
        for addr in [self.endpoint, self.join_endpoint].into_iter().flatten() {
            put_ip(&mut out, addr.ip());
            out.extend_from_slice(&addr.port().to_be_bytes());
        }
        put_ip(&mut out, self.mesh_addr);
        out.push(self.prefixes.len() as u8);
        for net in &self.prefixes {
            put_ip(&mut out, net.addr());
            out.push(net.prefix_len());
        }
        Ok(out)
    }

    fn check(&self) -> Result<(), RecordError> {
        if self.prefixes.len() > MAX_PREFIXES {
            return Err(RecordError::TooManyPrefixes(self.prefixes.len()));
        }
        for addr in [self.endpoint, self.join_endpoint].into_iter().flatten() {
            check_endpoint(addr)?;
        }
        for net in &self.prefixes {
            if net.trunc() != *net {
                return Err(RecordError::HostBits(*net));
            }
        }
        Ok(())
    }

    /// Decodes a record from untrusted bytes; never panics, allocates at most `bytes.len()`.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader(bytes);
        let version = u16::from_be_bytes(r.array()?);
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let [flags] = r.array()?;
        if flags & !(LEAVING | HAS_ENDPOINT | HAS_JOIN_ENDPOINT) != 0 {
            return Err(RecordError::Flags(flags));
        }
        let generation = u64::from_be_bytes(r.array()?);
        let wg_public_key = r.array()?;
        let id_len = usize::from(u16::from_be_bytes(r.array()?));
        if id_len == 0 || id_len > MAX_ID_LEN {
            return Err(RecordError::IdLength(id_len));
        }
        let id = std::str::from_utf8(r.take(id_len)?).map_err(|_| RecordError::IdNotUtf8)?;
        let spiffe_id = SpiffeId::new(id).map_err(RecordError::Id)?;
        let endpoint = (flags & HAS_ENDPOINT != 0)
            .then(|| r.endpoint())
            .transpose()?;
        let join_endpoint = (flags & HAS_JOIN_ENDPOINT != 0)
            .then(|| r.endpoint())
            .transpose()?;
        let mesh_addr = r.ip()?;
        let [count] = r.array()?;
        let count = usize::from(count);
        if count > MAX_PREFIXES {
            return Err(RecordError::TooManyPrefixes(count));
        }
        let mut prefixes = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = r.ip()?;
            let [len] = r.array()?;
            let net = IpNet::new(addr, len).map_err(|_| RecordError::PrefixLength(len))?;
            if net.trunc() != net {
                return Err(RecordError::HostBits(net));
            }
            prefixes.push(net);
        }
        if !r.0.is_empty() {
            return Err(RecordError::TrailingBytes(r.0.len()));
        }
        Ok(Self {
            spiffe_id,
            wg_public_key,
            endpoint,
            join_endpoint,
            mesh_addr,
            prefixes,
            generation,
            leaving: flags & LEAVING != 0,
        })
    }
}

/// The instant a generation names; `None` beyond what `SystemTime` holds.
pub fn generation_time(generation: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(generation))
}

/// Milliseconds since the Unix epoch; 0 before it.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn check_endpoint(addr: SocketAddr) -> Result<(), RecordError> {
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(RecordError::Endpoint(addr));
    }
    Ok(())
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(FAMILY_V4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(FAMILY_V6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn ip(&mut self) -> Result<IpAddr, RecordError> {
        match self.array::<1>()? {
            [FAMILY_V4] => Ok(Ipv4Addr::from(self.array::<4>()?).into()),
            [FAMILY_V6] => Ok(Ipv6Addr::from(self.array::<16>()?).into()),
            [other] => Err(RecordError::Family(other)),
        }
    }

    fn endpoint(&mut self) -> Result<SocketAddr, RecordError> {
        let ip = self.ip()?;
        let port = u16::from_be_bytes(self.array()?);
        let addr = SocketAddr::new(ip, port);
        check_endpoint(addr)?;
        Ok(addr)
    }
}
