//! The map layouts of `bpf/isthmus.h`, in Rust: typed keys and values that encode to and decode
//! from the exact bytes the programs read. The `Raw*` structs mirror the C structs field for
//! field; encoders write at their `offset_of!` offsets, and the layout test checks every size
//! and offset against what clang made of the header.
//!
//! Addresses are 16 bytes (IPv4 as `::ffff:a.b.c.d`), addresses and ports in network order,
//! everything else in host order.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv6Addr};

/// A transport protocol a VIP port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub const fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// What the programs count, per service (`enum ist_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Forward,
    Reverse,
    NewFlow,
    Reselect,
    DropNoPort,
    DropNoBackend,
    DropError,
    SockConnect,
    Fragment,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Forward,
        Reason::Reverse,
        Reason::NewFlow,
        Reason::Reselect,
        Reason::DropNoPort,
        Reason::DropNoBackend,
        Reason::DropError,
        Reason::SockConnect,
        Reason::Fragment,
    ];

    pub const fn number(self) -> u32 {
        match self {
            Reason::Forward => 0,
            Reason::Reverse => 1,
            Reason::NewFlow => 2,
            Reason::Reselect => 3,
            Reason::DropNoPort => 4,
            Reason::DropNoBackend => 5,
            Reason::DropError => 6,
            Reason::SockConnect => 7,
            Reason::Fragment => 8,
        }
    }

    pub fn from_number(n: u32) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.number() == n)
    }

    /// The metric label / JSON key.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::Forward => "forward",
            Reason::Reverse => "reverse",
            Reason::NewFlow => "new_flow",
            Reason::Reselect => "reselect",
            Reason::DropNoPort => "drop_no_port",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropError => "drop_error",
            Reason::SockConnect => "sock_connect",
            Reason::Fragment => "drop_fragment",
        }
    }

    /// Whether packets counted under this reason were dropped.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropNoPort | Reason::DropNoBackend | Reason::DropError | Reason::Fragment
        )
    }
}

/// `IST_REASONS`: how many reasons there are.
pub const REASONS: u32 = 9;

/// An address as the maps hold it: IPv6 as is, IPv4 mapped.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn addr_from_bytes(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

// The mirrors of the C structs: only their layout is used.
#[repr(C)]
pub(crate) struct RawAddr {
    w: [u32; 4],
}

#[repr(C)]
pub(crate) struct RawSvcKey {
    vip: RawAddr,
    port: u16,
    proto: u8,
    pad: u8,
}

#[repr(C)]
pub(crate) struct RawSvcValue {
    service_id: u32,
    selection: u32,
    count: u32,
    pad: u32,
}

#[repr(C)]
pub(crate) struct RawVipKey {
    vip: RawAddr,
}

#[repr(C)]
pub(crate) struct RawVipValue {
    service_id: u32,
}

#[repr(C)]
pub(crate) struct RawSlotKey {
    selection: u32,
    index: u32,
}

#[repr(C)]
pub(crate) struct RawSlotValue {
    backend_id: u32,
}

#[repr(C)]
pub(crate) struct RawBackendKey {
    backend_id: u32,
}

#[repr(C)]
pub(crate) struct RawBackendValue {
    addr: RawAddr,
    port: u16,
    pad: u16,
    service_id: u32,
}

#[repr(C)]
pub(crate) struct RawFlowKey {
    src: RawAddr,
    dst: RawAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    pad: [u8; 3],
}

#[repr(C)]
pub(crate) struct RawFlowValue {
    backend_id: u32,
    service_id: u32,
}

#[repr(C)]
pub(crate) struct RawRnatValue {
    vip: RawAddr,
    port: u16,
    pad: u16,
    service_id: u32,
}

#[repr(C)]
pub(crate) struct RawSockKey {
    cookie: u64,
    addr: RawAddr,
    port: u16,
    pad: [u8; 6],
}

#[repr(C)]
pub(crate) struct RawStatKey {
    service_id: u32,
    reason: u32,
}

#[repr(C)]
pub(crate) struct RawStatValue {
    packets: u64,
    bytes: u64,
}

#[repr(C)]
pub(crate) struct RawConfig {
    netns_cookie: u64,
}

#[repr(C)]
pub(crate) struct RawRrValue {
    next: u64,
}

/// Writes fields into a zeroed buffer (padding stays zero: the kernel hashes every key byte).
struct Put<const N: usize>([u8; N]);

impl<const N: usize> Put<N> {
    fn new() -> Self {
        Put([0; N])
    }
    fn bytes(&mut self, at: usize, b: &[u8]) -> &mut Self {
        self.0[at..at + b.len()].copy_from_slice(b);
        self
    }
    fn addr(&mut self, at: usize, ip: IpAddr) -> &mut Self {
        self.bytes(at, &addr_bytes(ip))
    }
    fn port(&mut self, at: usize, port: u16) -> &mut Self {
        self.bytes(at, &port.to_be_bytes())
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.bytes(at, &v.to_ne_bytes())
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.bytes(at, &v.to_ne_bytes())
    }
    fn done(&mut self) -> [u8; N] {
        self.0
    }
}

fn get<const M: usize>(b: &[u8], at: usize) -> [u8; M] {
    let mut out = [0; M];
    out.copy_from_slice(&b[at..at + M]);
    out
}

fn get_addr(b: &[u8], at: usize) -> IpAddr {
    addr_from_bytes(get(b, at))
}

fn get_port(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(get(b, at))
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(get(b, at))
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(get(b, at))
}

pub const SVC_KEY_SIZE: usize = size_of::<RawSvcKey>();
pub const SVC_VALUE_SIZE: usize = size_of::<RawSvcValue>();
pub const VIP_KEY_SIZE: usize = size_of::<RawVipKey>();
pub const VIP_VALUE_SIZE: usize = size_of::<RawVipValue>();
pub const SLOT_KEY_SIZE: usize = size_of::<RawSlotKey>();
pub const SLOT_VALUE_SIZE: usize = size_of::<RawSlotValue>();
pub const BACKEND_KEY_SIZE: usize = size_of::<RawBackendKey>();
pub const BACKEND_VALUE_SIZE: usize = size_of::<RawBackendValue>();
pub const FLOW_KEY_SIZE: usize = size_of::<RawFlowKey>();
pub const FLOW_VALUE_SIZE: usize = size_of::<RawFlowValue>();
pub const RNAT_VALUE_SIZE: usize = size_of::<RawRnatValue>();
pub const SOCK_KEY_SIZE: usize = size_of::<RawSockKey>();
pub const STAT_KEY_SIZE: usize = size_of::<RawStatKey>();
pub const STAT_VALUE_SIZE: usize = size_of::<RawStatValue>();
pub const CONFIG_SIZE: usize = size_of::<RawConfig>();
pub const RR_VALUE_SIZE: usize = size_of::<RawRrValue>();

/// `ist_services` key: one port of one VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl ServiceKey {
    pub fn encode(&self) -> [u8; SVC_KEY_SIZE] {
        Put::new()
            .addr(offset_of!(RawSvcKey, vip), self.vip)
            .port(offset_of!(RawSvcKey, port), self.port)
            .bytes(offset_of!(RawSvcKey, proto), &[self.proto.number()])
            .done()
    }

    /// `None` for a protocol the programs never write.
    pub fn decode(b: &[u8; SVC_KEY_SIZE]) -> Option<Self> {
        Some(ServiceKey {
            vip: get_addr(b, offset_of!(RawSvcKey, vip)),
            port: get_port(b, offset_of!(RawSvcKey, port)),
            proto: Proto::from_number(b[offset_of!(RawSvcKey, proto)])?,
        })
    }
}

/// `ist_services` value: which slot table the service uses now, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub service_id: u32,
    pub selection: u32,
    /// 0: no healthy backend (dropped and counted).
    pub count: u32,
}

impl ServiceValue {
    pub fn encode(&self) -> [u8; SVC_VALUE_SIZE] {
        Put::new()
            .u32(offset_of!(RawSvcValue, service_id), self.service_id)
            .u32(offset_of!(RawSvcValue, selection), self.selection)
            .u32(offset_of!(RawSvcValue, count), self.count)
            .done()
    }

    pub fn decode(b: &[u8; SVC_VALUE_SIZE]) -> Self {
        ServiceValue {
            service_id: get_u32(b, offset_of!(RawSvcValue, service_id)),
            selection: get_u32(b, offset_of!(RawSvcValue, selection)),
            count: get_u32(b, offset_of!(RawSvcValue, count)),
        }
    }
}

/// `ist_vips` key.
pub fn vip_key(vip: IpAddr) -> [u8; VIP_KEY_SIZE] {
    Put::new().addr(offset_of!(RawVipKey, vip), vip).done()
}

pub fn vip_key_decode(b: &[u8; VIP_KEY_SIZE]) -> IpAddr {
    get_addr(b, offset_of!(RawVipKey, vip))
}

/// `ist_vips` value.
pub fn vip_value(service_id: u32) -> [u8; VIP_VALUE_SIZE] {
    Put::new()
        .u32(offset_of!(RawVipValue, service_id), service_id)
        .done()
}

pub fn vip_value_decode(b: &[u8; VIP_VALUE_SIZE]) -> u32 {
    get_u32(b, offset_of!(RawVipValue, service_id))
}

/// `ist_slots` key: slot `index` of slot table `selection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    pub selection: u32,
    pub index: u32,
}

impl SlotKey {
    pub fn encode(&self) -> [u8; SLOT_KEY_SIZE] {
        Put::new()
            .u32(offset_of!(RawSlotKey, selection), self.selection)
            .u32(offset_of!(RawSlotKey, index), self.index)
            .done()
    }

    pub fn decode(b: &[u8; SLOT_KEY_SIZE]) -> Self {
        SlotKey {
            selection: get_u32(b, offset_of!(RawSlotKey, selection)),
            index: get_u32(b, offset_of!(RawSlotKey, index)),
        }
    }
}

/// `ist_slots` value.
pub fn slot_value(backend_id: u32) -> [u8; SLOT_VALUE_SIZE] {
    Put::new()
        .u32(offset_of!(RawSlotValue, backend_id), backend_id)
        .done()
}

pub fn slot_value_decode(b: &[u8; SLOT_VALUE_SIZE]) -> u32 {
    get_u32(b, offset_of!(RawSlotValue, backend_id))
}

/// `ist_backends` key.
pub fn backend_key(backend_id: u32) -> [u8; BACKEND_KEY_SIZE] {
    Put::new()
        .u32(offset_of!(RawBackendKey, backend_id), backend_id)
        .done()
}

pub fn backend_key_decode(b: &[u8; BACKEND_KEY_SIZE]) -> u32 {
    get_u32(b, offset_of!(RawBackendKey, backend_id))
}

/// `ist_backends` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendValue {
    pub addr: IpAddr,
    /// 0 keeps the VIP's port.
    pub port: u16,
    /// The service the backend belongs to (a flow of another service never uses it).
    pub service_id: u32,
}

impl BackendValue {
    pub fn encode(&self) -> [u8; BACKEND_VALUE_SIZE] {
        Put::new()
            .addr(offset_of!(RawBackendValue, addr), self.addr)
            .port(offset_of!(RawBackendValue, port), self.port)
            .u32(offset_of!(RawBackendValue, service_id), self.service_id)
            .done()
    }

    pub fn decode(b: &[u8; BACKEND_VALUE_SIZE]) -> Self {
        BackendValue {
            addr: get_addr(b, offset_of!(RawBackendValue, addr)),
            port: get_port(b, offset_of!(RawBackendValue, port)),
            service_id: get_u32(b, offset_of!(RawBackendValue, service_id)),
        }
    }
}

/// `ist_flows` / `ist_rnat` key: a 5-tuple in the packet's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: Proto,
}

impl FlowKey {
    pub fn encode(&self) -> [u8; FLOW_KEY_SIZE] {
        Put::new()
            .addr(offset_of!(RawFlowKey, src), self.src)
            .addr(offset_of!(RawFlowKey, dst), self.dst)
            .port(offset_of!(RawFlowKey, sport), self.sport)
            .port(offset_of!(RawFlowKey, dport), self.dport)
            .bytes(offset_of!(RawFlowKey, proto), &[self.proto.number()])
            .done()
    }

    pub fn decode(b: &[u8; FLOW_KEY_SIZE]) -> Option<Self> {
        Some(FlowKey {
            src: get_addr(b, offset_of!(RawFlowKey, src)),
            dst: get_addr(b, offset_of!(RawFlowKey, dst)),
            sport: get_port(b, offset_of!(RawFlowKey, sport)),
            dport: get_port(b, offset_of!(RawFlowKey, dport)),
            proto: Proto::from_number(b[offset_of!(RawFlowKey, proto)])?,
        })
    }
}

/// `ist_flows` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowValue {
    pub backend_id: u32,
    pub service_id: u32,
}

impl FlowValue {
    pub fn encode(&self) -> [u8; FLOW_VALUE_SIZE] {
        Put::new()
            .u32(offset_of!(RawFlowValue, backend_id), self.backend_id)
            .u32(offset_of!(RawFlowValue, service_id), self.service_id)
            .done()
    }

    pub fn decode(b: &[u8; FLOW_VALUE_SIZE]) -> Self {
        FlowValue {
            backend_id: get_u32(b, offset_of!(RawFlowValue, backend_id)),
            service_id: get_u32(b, offset_of!(RawFlowValue, service_id)),
        }
    }
}

/// `ist_rnat` / `ist_sock_rev` value: the VIP a reply's source becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RnatValue {
    pub vip: IpAddr,
    pub port: u16,
    pub service_id: u32,
}

impl RnatValue {
    pub fn encode(&self) -> [u8; RNAT_VALUE_SIZE] {
        Put::new()
            .addr(offset_of!(RawRnatValue, vip), self.vip)
            .port(offset_of!(RawRnatValue, port), self.port)
            .u32(offset_of!(RawRnatValue, service_id), self.service_id)
            .done()
    }

    pub fn decode(b: &[u8; RNAT_VALUE_SIZE]) -> Self {
        RnatValue {
            vip: get_addr(b, offset_of!(RawRnatValue, vip)),
            port: get_port(b, offset_of!(RawRnatValue, port)),
            service_id: get_u32(b, offset_of!(RawRnatValue, service_id)),
        }
    }
}

/// `ist_sock_rev` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: IpAddr,
    pub port: u16,
}

impl SockKey {
    pub fn encode(&self) -> [u8; SOCK_KEY_SIZE] {
        Put::new()
            .u64(offset_of!(RawSockKey, cookie), self.cookie)
            .addr(offset_of!(RawSockKey, addr), self.addr)
            .port(offset_of!(RawSockKey, port), self.port)
            .done()
    }
}

/// `ist_stats` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatKey {
    pub service_id: u32,
    pub reason: u32,
}

impl StatKey {
    pub fn encode(&self) -> [u8; STAT_KEY_SIZE] {
        Put::new()
            .u32(offset_of!(RawStatKey, service_id), self.service_id)
            .u32(offset_of!(RawStatKey, reason), self.reason)
            .done()
    }

    pub fn decode(b: &[u8; STAT_KEY_SIZE]) -> Self {
        StatKey {
            service_id: get_u32(b, offset_of!(RawStatKey, service_id)),
            reason: get_u32(b, offset_of!(RawStatKey, reason)),
        }
    }
}

/// `ist_stats` value (one CPU's share).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StatValue {
    pub packets: u64,
    pub bytes: u64,
}

impl StatValue {
    pub fn decode(b: &[u8; STAT_VALUE_SIZE]) -> Self {
        StatValue {
            packets: get_u64(b, offset_of!(RawStatValue, packets)),
            bytes: get_u64(b, offset_of!(RawStatValue, bytes)),
        }
    }

    pub fn encode(&self) -> [u8; STAT_VALUE_SIZE] {
        Put::new()
            .u64(offset_of!(RawStatValue, packets), self.packets)
            .u64(offset_of!(RawStatValue, bytes), self.bytes)
            .done()
    }
}

/// `ist_config[0]`.
pub fn config_value(netns_cookie: u64) -> [u8; CONFIG_SIZE] {
    Put::new()
        .u64(offset_of!(RawConfig, netns_cookie), netns_cookie)
        .done()
}

/// `ist_rr[service_id]` as the programs start it.
pub fn rr_value(next: u64) -> [u8; RR_VALUE_SIZE] {
    Put::new().u64(offset_of!(RawRrValue, next), next).done()
}

#[cfg(test)]
mod tests {
    use super::*;

    mod c {
        include!(concat!(env!("OUT_DIR"), "/c_layout.rs"));
    }

    /// The Rust mirror of every size and offset the C layout dump prints.
    fn rust_layout() -> Vec<(&'static str, usize)> {
        macro_rules! size {
            ($c:literal, $t:ty) => {
                ($c, size_of::<$t>())
            };
        }
        macro_rules! field {
            ($c:literal, $t:ty, $f:ident) => {
                ($c, offset_of!($t, $f))
            };
        }
        vec![
            size!("ist_addr", RawAddr),
            size!("ist_svc_key", RawSvcKey),
            field!("ist_svc_key.vip", RawSvcKey, vip),
            field!("ist_svc_key.port", RawSvcKey, port),
            field!("ist_svc_key.proto", RawSvcKey, proto),
            size!("ist_svc_value", RawSvcValue),
            field!("ist_svc_value.service_id", RawSvcValue, service_id),
            field!("ist_svc_value.selection", RawSvcValue, selection),
            field!("ist_svc_value.count", RawSvcValue, count),
            size!("ist_vip_key", RawVipKey),
            size!("ist_vip_value", RawVipValue),
            size!("ist_slot_key", RawSlotKey),
            field!("ist_slot_key.selection", RawSlotKey, selection),
            field!("ist_slot_key.index", RawSlotKey, index),
            size!("ist_slot_value", RawSlotValue),
            size!("ist_backend_key", RawBackendKey),
            size!("ist_backend_value", RawBackendValue),
            field!("ist_backend_value.addr", RawBackendValue, addr),
            field!("ist_backend_value.port", RawBackendValue, port),
            field!("ist_backend_value.service_id", RawBackendValue, service_id),
            size!("ist_flow_key", RawFlowKey),
            field!("ist_flow_key.src", RawFlowKey, src),
            field!("ist_flow_key.dst", RawFlowKey, dst),
            field!("ist_flow_key.sport", RawFlowKey, sport),
            field!("ist_flow_key.dport", RawFlowKey, dport),
            field!("ist_flow_key.proto", RawFlowKey, proto),
            size!("ist_flow_value", RawFlowValue),
            field!("ist_flow_value.backend_id", RawFlowValue, backend_id),
            field!("ist_flow_value.service_id", RawFlowValue, service_id),
            size!("ist_rnat_value", RawRnatValue),
            field!("ist_rnat_value.vip", RawRnatValue, vip),
            field!("ist_rnat_value.port", RawRnatValue, port),
            field!("ist_rnat_value.service_id", RawRnatValue, service_id),
            size!("ist_sock_key", RawSockKey),
            field!("ist_sock_key.cookie", RawSockKey, cookie),
            field!("ist_sock_key.addr", RawSockKey, addr),
            field!("ist_sock_key.port", RawSockKey, port),
            size!("ist_stat_key", RawStatKey),
            field!("ist_stat_key.service_id", RawStatKey, service_id),
            field!("ist_stat_key.reason", RawStatKey, reason),
            size!("ist_stat_value", RawStatValue),
            field!("ist_stat_value.packets", RawStatValue, packets),
            field!("ist_stat_value.bytes", RawStatValue, bytes),
            size!("ist_config", RawConfig),
            field!("ist_config.netns_cookie", RawConfig, netns_cookie),
            size!("ist_rr_value", RawRrValue),
        ]
    }

    #[test]
    fn every_size_and_offset_matches_the_c_header() {
        let rust = rust_layout();
        let names = |l: &[(&str, usize)]| l.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(&rust),
            names(c::C_LAYOUT),
            "the Rust mirror and the C dump list different items"
        );
        for ((name, r), (_, c)) in rust.iter().zip(c::C_LAYOUT) {
            assert_eq!(r, c, "{name}: Rust says {r}, C says {c}");
        }
    }

    #[test]
    fn reasons_match_the_c_enum() {
        let by_name: std::collections::BTreeMap<&str, u32> = c::C_REASONS.iter().copied().collect();
        let c_name = |r: Reason| match r {
            Reason::Forward => "IST_FORWARD",
            Reason::Reverse => "IST_REVERSE",
            Reason::NewFlow => "IST_NEW_FLOW",
            Reason::Reselect => "IST_RESELECT",
            Reason::DropNoPort => "IST_DROP_NO_PORT",
            Reason::DropNoBackend => "IST_DROP_NO_BACKEND",
            Reason::DropError => "IST_DROP_ERROR",
            Reason::SockConnect => "IST_SOCK_CONNECT",
            Reason::Fragment => "IST_FRAGMENT",
        };
        for r in Reason::ALL {
            assert_eq!(by_name[c_name(r)], r.number(), "{r:?}");
            assert_eq!(Reason::from_number(r.number()), Some(r));
        }
        assert_eq!(by_name["IST_REASONS"], REASONS);
        assert_eq!(Reason::ALL.len() as u32, REASONS);
    }

    #[test]
    fn keys_round_trip_with_network_order_ports_and_mapped_v4() {
        let k = ServiceKey {
            vip: "241.0.0.7".parse().unwrap(),
            port: 7000,
            proto: Proto::Udp,
        };
        let b = k.encode();
        assert_eq!(&b[..16], &addr_bytes(k.vip));
        assert_eq!(&b[10..12], &[0xff, 0xff], "IPv4 is mapped");
        assert_eq!(&b[16..18], &7000u16.to_be_bytes());
        assert_eq!(b[18], 17);
        assert_eq!(b[19], 0, "padding is zero");
        assert_eq!(ServiceKey::decode(&b), Some(k));

        let f = FlowKey {
            src: "fd00::1".parse().unwrap(),
            dst: "fd01::2".parse().unwrap(),
            sport: 40000,
            dport: 443,
            proto: Proto::Tcp,
        };
        assert_eq!(FlowKey::decode(&f.encode()), Some(f));
        let v = BackendValue {
            addr: "10.2.1.3".parse().unwrap(),
            port: 0,
            service_id: 9,
        };
        assert_eq!(BackendValue::decode(&v.encode()), v);
        let s = ServiceValue {
            service_id: 1,
            selection: 2,
            count: 3,
        };
        assert_eq!(ServiceValue::decode(&s.encode()), s);
        assert_eq!(
            SlotKey::decode(
                &SlotKey {
                    selection: 5,
                    index: 6
                }
                .encode()
            ),
            SlotKey {
                selection: 5,
                index: 6
            }
        );
        assert_eq!(
            addr_from_bytes(addr_bytes("::ffff:1.2.3.4".parse().unwrap())),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }
}
