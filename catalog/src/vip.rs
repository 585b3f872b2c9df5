//! Clusterset VIPs: one per service from a configured IPv4 range (and one from an optional IPv6
//! range), kept across restarts in a JSON file.
//!
//! A service's first candidate address is `FNV-1a("namespace/name") mod range size`, probing
//! upwards, so gateways with the same range and history tend to agree on a service's VIP; nothing
//! depends on that (each gateway answers DNS and programs its own route agents from its own
//! map). A service gone for good keeps its address *reserved*: it gets it back if it returns,
//! and the address is handed to another service only once no never-used address is left, oldest
//! release first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::names::ServiceName;

mod file;

/// A service's VIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vips {
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

impl Vips {
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut out = vec![IpAddr::V4(self.v4)];
        out.extend(self.v6.map(IpAddr::V6));
        out
    }
}

/// A usable address range as offsets from `base`.
#[derive(Debug, Clone)]
struct Pool {
    net: IpNet,
    base: u128,
    size: u128,
    used: BTreeSet<u128>,
}

/// IPv6 ranges wider than this many addresses use only the first 2^64.
const MAX_POOL: u128 = 1 << 64;

impl Pool {
    fn new(net: IpNet) -> Self {
        let (bits, host_bits) = match net {
            IpNet::V4(n) => (
                u128::from(u32::from(n.network())),
                32 - u32::from(n.prefix_len()),
            ),
            IpNet::V6(n) => (u128::from(n.network()), 128 - u32::from(n.prefix_len())),
        };
        let span = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
        // IPv4: no network or broadcast address below /31 (RFC 3021 allows both in a /31).
        // IPv6: no Subnet-Router anycast address (RFC 4291 §2.6.1) below /127.
        let (skip_first, skip_last) = match net {
            IpNet::V4(_) => (host_bits >= 2, host_bits >= 2),
            IpNet::V6(_) => (host_bits >= 2, false),
        };
        let base = bits + u128::from(skip_first);
        let size = (span - u128::from(skip_first) - u128::from(skip_last)).min(MAX_POOL);
        Self {
            net,
            base,
            size,
            used: BTreeSet::new(),
        }
    }

    fn offset(&self, addr: IpAddr) -> Option<u128> {
        let bits = match (addr, self.net) {
            (IpAddr::V4(a), IpNet::V4(_)) => u128::from(u32::from(a)),
            (IpAddr::V6(a), IpNet::V6(_)) => u128::from(a),
            _ => return None,
        };
        let off = bits.checked_sub(self.base)?;
        (off < self.size).then_some(off)
    }

    fn addr(&self, offset: u128) -> IpAddr {
        let bits = self.base + offset;
        match self.net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(
                u32::try_from(bits).expect("offset inside an IPv4 range"),
            )),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
        }
    }

    /// The first never-used offset at or after `start`, wrapping around.
    fn free_from(&self, start: u128) -> Option<u128> {
        let scan = |from: u128, to: u128| {
            let mut candidate = from;
            for &o in self.used.range(from..to) {
                if o != candidate {
                    break;
                }
                candidate += 1;
            }
            (candidate < to).then_some(candidate)
        };
        scan(start, self.size).or_else(|| scan(0, start))
    }
}

/// FNV-1a (64-bit): stable across builds and platforms, unlike std's `DefaultHasher`.
fn fnv1a(name: &ServiceName) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name
        .namespace()
        .bytes()
        .chain([b'/'])
        .chain(name.name().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    /// Release order while the service is gone; `None` while active.
    released: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct VipAllocator {
    v4: Pool,
    v6: Option<Pool>,
    entries: BTreeMap<ServiceName, Entry>,
    /// Released services by release order, oldest first.
    released: BTreeMap<u64, ServiceName>,
    next_release: u64,
    dirty: bool,
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl VipAllocator {
    /// An empty allocator. Host bits of the ranges are ignored; even a /32 or /128 holds one
    /// address.
    pub fn new(v4: Ipv4Net, v6: Option<Ipv6Net>) -> Self {
        Self {
            v4: Pool::new(IpNet::V4(v4.trunc())),
            v6: v6.map(|n| Pool::new(IpNet::V6(n.trunc()))),
            entries: BTreeMap::new(),
            released: BTreeMap::new(),
            next_release: 0,
            dirty: false,
        }
    }

    /// The active VIPs of `name`, if it has them.
    pub fn vips(&self, name: &ServiceName) -> Option<Vips> {
        let e = self.entries.get(name)?;
        if e.released.is_some() {
            return None;
        }
        Some(Vips {
            v4: e.v4?,
            v6: e.v6,
        })
    }

    /// Every active service and its VIPs, by name.
    pub fn active(&self) -> impl Iterator<Item = (&ServiceName, Vips)> {
        self.entries
            .keys()
            .filter_map(|name| Some((name, self.vips(name)?)))
    }

    /// Addresses held by services that are gone (reserved for their return).
    pub fn reserved(&self) -> usize {
        self.released.len()
    }

    /// Whether the map changed since it was loaded or last saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The service's VIPs, allocating (or reactivating its reserved ones) if needed. On error
    /// (a range is full) the service keeps whatever addresses it already held.
    pub fn allocate(&mut self, name: &ServiceName) -> Result<Vips, Error> {
        if let Some(vips) = self.vips(name) {
            if vips.v6.is_some() == self.v6.is_some() {
                return Ok(vips);
            }
        }
        let existing = self.entries.remove(name);
        let was_active = existing.as_ref().is_some_and(|e| e.released.is_none());
        let mut entry = existing.unwrap_or_default();
        if let Some(seq) = entry.released.take() {
            self.released.remove(&seq);
        }
        let result = self.fill(name, &mut entry);
        if result.is_err() {
            if entry.v4.is_none() && entry.v6.is_none() {
                return result;
            }
            if !was_active {
                entry.released = Some(self.next_release);
                self.released.insert(self.next_release, name.clone());
                self.next_release += 1;
            }
        }
        self.entries.insert(name.clone(), entry);
        self.dirty = true;
        result
    }

    fn fill(&mut self, name: &ServiceName, entry: &mut Entry) -> Result<Vips, Error> {
        if entry.v4.is_none() {
            match self.take(name, Family::V4)? {
                IpAddr::V4(a) => entry.v4 = Some(a),
                IpAddr::V6(_) => unreachable!("the IPv4 pool yields IPv4 addresses"),
            }
        }
        if self.v6.is_some() && entry.v6.is_none() {
            match self.take(name, Family::V6)? {
                IpAddr::V6(a) => entry.v6 = Some(a),
                IpAddr::V4(_) => unreachable!("the IPv6 pool yields IPv6 addresses"),
            }
        }
        Ok(Vips {
            v4: entry.v4.expect("filled above"),
            v6: entry.v6,
        })
    }

    fn pool(&mut self, family: Family) -> &mut Pool {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => self.v6.as_mut().expect("asked only when configured"),
        }
    }

    /// A never-used address if any is left, else the one released longest ago.
    fn take(&mut self, name: &ServiceName, family: Family) -> Result<IpAddr, Error> {
        let hash = u128::from(fnv1a(name));
        let pool = self.pool(family);
        if let Some(off) = pool.free_from(hash % pool.size) {
            pool.used.insert(off);
            return Ok(pool.addr(off));
        }
        let victim = self.released.iter().find_map(|(seq, owner)| {
            let e = &self.entries[owner];
            let has = match family {
                Family::V4 => e.v4.is_some(),
                Family::V6 => e.v6.is_some(),
            };
            has.then(|| (*seq, owner.clone()))
        });
        let Some((seq, owner)) = victim else {
            return Err(Error::VipRangeFull(self.pool(family).net));
        };
        let e = self
            .entries
            .get_mut(&owner)
            .expect("released names have entries");
        let addr = match family {
            Family::V4 => e.v4.take().map(IpAddr::V4),
            Family::V6 => e.v6.take().map(IpAddr::V6),
        }
        .expect("chosen for holding one");
        if e.v4.is_none() && e.v6.is_none() {
            self.entries.remove(&owner);
            self.released.remove(&seq);
        }
        // The address stays in `used`: it moves from one service to another.
        Ok(addr)
    }

    /// Releases every active service `keep` says no to: at start-up, services that no origin
    /// exports (yet) keep their addresses only as reservations.
    pub(crate) fn release_unless(&mut self, keep: impl Fn(&ServiceName) -> bool) {
        let gone: Vec<ServiceName> = self
            .entries
            .iter()
            .filter(|(name, e)| e.released.is_none() && !keep(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.release(&name);
        }
    }

    /// `name` is gone for good: its VIPs stay reserved for it until the range runs out.
    pub fn release(&mut self, name: &ServiceName) {
        if let Some(e) = self.entries.get_mut(name) {
            if e.released.is_none() {
                e.released = Some(self.next_release);
                self.released.insert(self.next_release, name.clone());
                self.next_release += 1;
                self.dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests;
